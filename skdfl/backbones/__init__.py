"""Backbones: turn a name (or a module) into a frozen feature extractor plus its data config.

The zoo (:func:`list_backbones`) covers the paper's Table 1, histopathology self-supervised seeds and
today's pathology foundation models; any timm name works too. Weights are resolved offline first
(``checkpoint_path``, ``$SKDFL_WEIGHTS_DIR``, the Hugging Face / timm cache, installed packages) and
downloaded only when online; checkpoints are read as tensors only. :func:`load_backbone` is the single
entry point used by :class:`skdfl.BackboneEmbedder`.
"""

from ._load import fetch_weights, load_backbone, resolve_weights
from .adapters import CheckpointMismatchError, TokenPooling
from .registry import BackboneSpec, get_spec, list_backbones, register_backbone
from .weights import (
    UnsafeCheckpointError,
    WeightsNotFoundError,
    load_state_dict,
    weights_dir,
    weights_fingerprint,
)

__all__ = [
    "BackboneSpec",
    "CheckpointMismatchError",
    "TokenPooling",
    "UnsafeCheckpointError",
    "WeightsNotFoundError",
    "fetch_weights",
    "get_spec",
    "list_backbones",
    "load_backbone",
    "load_state_dict",
    "register_backbone",
    "resolve_weights",
    "weights_dir",
    "weights_fingerprint",
]
