"""The ``skdfl`` command line: one thin module per command over the Python API.

``skdfl demo`` (:mod:`skdfl.demo`), ``skdfl backbones`` and ``skdfl fetch-weights``
(:mod:`skdfl.backbones`), ``skdfl select`` (:func:`skdfl.reports.write_selection_report`) and
``skdfl embed`` (:func:`skdfl.storage.extract_to_store`), ``skdfl tile`` (:func:`skdfl.wsi.tile`) and
``skdfl heatmap`` (:func:`skdfl.wsi.heatmap`), ``skdfl pretrain`` (:mod:`skdfl.pretrain`). Each command module only parses arguments,
calls the library and prints; :data:`COMMANDS` lists them.
"""

from ._main import COMMANDS, build_parser, main

__all__ = ["COMMANDS", "build_parser", "main"]
