"""skdfl: Deep Feature Learning for histopathology in scikit-learn.

A frozen pretrained backbone embeds image patches once (:class:`BackboneEmbedder`); small focal-loss heads
are trained on the embeddings (:class:`FocalHeadClassifier`). Both are ordinary scikit-learn estimators.
"""

from ._version import __version__
from .backbones import list_backbones, load_backbone
from .embedder import BackboneEmbedder
from .heads import FocalHeadClassifier, FocalLoss, GaussianNoise, MLPHead
from .storage import EmbeddingCache, extract_to_store, load_store
from .views import View

__all__ = [
    "BackboneEmbedder",
    "EmbeddingCache",
    "FocalHeadClassifier",
    "FocalLoss",
    "GaussianNoise",
    "MLPHead",
    "View",
    "__version__",
    "extract_to_store",
    "load_store",
    "list_backbones",
    "load_backbone",
]
