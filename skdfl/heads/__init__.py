"""Trainable heads on top of frozen embeddings: focal loss, feature-space augmentation, an MLP and its estimator.

:class:`FocalHeadClassifier` is the scikit-learn classifier that sits at the end of a pipeline after
:class:`skdfl.BackboneEmbedder`. The torch building blocks are public so they can be reused in plain torch or
skorch code:

- :class:`FocalLoss`, the training criterion;
- the feature-space perturbations :class:`GaussianNoise`, :class:`FeatureDropout` and
  :func:`mixup_embeddings`;
- :class:`MLPHead`, the module (perturbations, then an MLP).
"""

from ._augment import FeatureDropout, GaussianNoise, mixup_embeddings
from ._classifier import FocalHeadClassifier
from ._loss import FocalLoss
from ._module import MLPHead

__all__ = [
    "FeatureDropout",
    "FocalHeadClassifier",
    "FocalLoss",
    "GaussianNoise",
    "MLPHead",
    "mixup_embeddings",
]
