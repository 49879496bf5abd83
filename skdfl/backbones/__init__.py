"""Backbones: turn a name (or a module) into a frozen feature extractor plus its data config.

The zoo (:func:`list_backbones`) covers the paper's Table 1, histopathology self-supervised seeds and
today's pathology foundation models; any timm name works too. Weights are resolved offline first
(``checkpoint_path``, ``$SKDFL_WEIGHTS_DIR``, the Hugging Face / timm cache, installed packages) and
downloaded only when online; checkpoints are read as tensors only. :func:`load_backbone` is the single
entry point used by :class:`skdfl.BackboneEmbedder`.

Layout (registry code apart from its data, as in timm):

- ``registry`` -- :class:`BackboneSpec` and register / get / list; holds no entries.
- ``zoo/`` -- the entries, one file per family (``imagenet``, ``keras``) or histopathology provider
  (``zoo/pathology/<provider>.py``), registered when this package is imported.
- ``weights`` -- where weights are found, downloaded, and fingerprinted.
- ``_checkpoint`` -- reading checkpoint files (tensors only); writing skdfl's own (:func:`save_weights`).
- ``adapters``, ``keras`` -- published checkpoint layouts mapped onto timm modules.
- ``_builder`` -- :func:`load_backbone`: build the architecture, load the weights, freeze.
"""

from . import zoo  # noqa: F401  (registers the zoo's entries)
from ._builder import load_backbone
from ._checkpoint import (
    UnsafeCheckpointError,
    load_state_dict,
    read_weights_config,
    save_weights,
    spec_from_weights,
)
from .adapters import CheckpointMismatchError, TokenPooling
from .registry import BackboneSpec, get_spec, list_backbones, register_backbone
from .weights import (
    WeightsNotFoundError,
    fetch_weights,
    resolve_weights,
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
    "read_weights_config",
    "register_backbone",
    "resolve_weights",
    "save_weights",
    "spec_from_weights",
    "weights_dir",
    "weights_fingerprint",
]
