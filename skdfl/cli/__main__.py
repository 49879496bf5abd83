"""``python -m skdfl.cli``: the same as the ``skdfl`` command."""

import sys

from ._main import main

sys.exit(main())
