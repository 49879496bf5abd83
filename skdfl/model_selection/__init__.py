"""Backbone selection and head tuning on a proxy task, in the manner of :mod:`sklearn.model_selection`.

- the proxy protocol: :func:`default_head`, :func:`set_head_params`, :func:`make_splits`;
- backbone comparison: :func:`compare_backbones` (embed once per backbone) and its plain
  ``GridSearchCV`` twin :func:`make_selection_search` with :func:`search_table`;
  :func:`format_selection_table` renders either table as Markdown, :func:`selection_summary` says which
  backbone is selected (never a random-init reference row) and whether the choice is within noise;
- :func:`label_efficiency_curve`: score versus fraction of labelled data;
- :class:`HeadSearchCV`: Optuna search of head hyper-parameters, with pruning and resumable storage.
"""

from ._compare import compare_backbones
from ._grid_search import make_selection_search, search_table
from ._label_efficiency import label_efficiency_curve
from ._optuna_search import (
    DEFAULT_STUDY_NAME,
    HIDDEN_UNITS_CHOICES,
    HeadSearchCV,
    head_search_space,
    mlp_head_search_space,
)
from ._proxy import PROXY_NOISE_STD, default_head, make_splits, set_head_params
from ._tables import format_selection_table, selection_summary

__all__ = [
    "DEFAULT_STUDY_NAME",
    "HIDDEN_UNITS_CHOICES",
    "PROXY_NOISE_STD",
    "HeadSearchCV",
    "compare_backbones",
    "default_head",
    "format_selection_table",
    "head_search_space",
    "label_efficiency_curve",
    "make_selection_search",
    "make_splits",
    "mlp_head_search_space",
    "search_table",
    "selection_summary",
    "set_head_params",
]
