"""Self-supervised pretraining of a backbone on unlabelled patches, for when no pretrained extractor fits.

Two published methods, scikit-learn style (``fit(X)``, fitted attributes ending in ``_``), on any timm or
registry backbone; the result is a backbone for :class:`~skdfl.BackboneEmbedder` and the rest of DFL.

=============================  ==========================================================================
:class:`SimCLRPretrainer`      two augmentations of one patch are positives (Ciga et al.)
:class:`MPCSPretrainer`        one sample at two magnifications are positives (Chhipa et al.); with slide
                               regions, the same tissue centre at two magnifications
:func:`nt_xent_loss`           SimCLR's normalised temperature-scaled cross-entropy
:func:`sample_pairs`           MPCS's fixed / ordered / random pair strategies
:func:`build_augmentation`     histopathology augmentations batched on the device (kornia)
=============================  ==========================================================================

Training checkpoints every epoch (atomically) into ``checkpoint_dir`` and resumes from it after a kill;
:meth:`~SimCLRPretrainer.save_backbone` writes the encoder only, as safetensors plus a JSON config
(:func:`skdfl.backbones.save_weights`), which ``BackboneEmbedder(checkpoint_path=...)`` loads and
:func:`skdfl.backbones.spec_from_weights` turns into a registry entry.
"""

from ._augment import build_augmentation
from ._base import ContrastivePretrainer
from ._checkpoint import CHECKPOINT_NAME, RunMismatchError
from ._loss import nt_xent_loss
from ._mpcs import MPCSPretrainer
from ._pairs import DEFAULT_PAIR_TABLE, PAIR_STRATEGIES, normalize_magnification, sample_pairs
from ._simclr import SimCLRPretrainer

__all__ = [
    "CHECKPOINT_NAME",
    "DEFAULT_PAIR_TABLE",
    "PAIR_STRATEGIES",
    "ContrastivePretrainer",
    "MPCSPretrainer",
    "RunMismatchError",
    "SimCLRPretrainer",
    "build_augmentation",
    "normalize_magnification",
    "nt_xent_loss",
    "sample_pairs",
]
