"""SimCLR for histopathology (Ciga, Xu & Martel, 2022): two augmentations of one patch are a positive pair."""

from __future__ import annotations

import numpy as np

from ..io import as_sources
from ._base import COMMON_PARAMETERS_DOC, FITTED_ATTRIBUTES_DOC, ContrastivePretrainer, TrainingSet

__all__ = ["SimCLRPretrainer"]


class SimCLRPretrainer(ContrastivePretrainer):
    _method = "SimCLR"

    __doc__ = (
        """Self-supervised SimCLR pretraining of a backbone on unlabelled image patches.

    Every step takes ``batch_size`` patches, augments each twice (random resized crop, flips, 90-degree
    rotations, colour jitter, grayscale, blur: Ciga et al.'s histopathology policy, on the device with
    kornia), encodes both views, projects them with an MLP head and minimises NT-Xent: each view must pick
    its sibling out of the ``2 * batch_size - 1`` others. The encoder is then a feature extractor for
    :class:`~skdfl.BackboneEmbedder` (:meth:`save_backbone`). Ciga et al. found linear probes improve with
    more, and more diverse, unlabelled images.

    Parameters
    ----------"""
        + COMMON_PARAMETERS_DOC.format(
            resize="crop", temperature=0.5, batch_size=64, max_epochs=100, optimizer="adam",
            crop_scale=(0.2, 1.0), color_jitter=0.5, gray_probability=0.2, blur_probability=0.5,
        )  # fmt: skip
        + "\n"
        + FITTED_ATTRIBUTES_DOC
        + """

    See Also
    --------
    MPCSPretrainer : positives are one sample at two magnifications.
    skdfl.BackboneEmbedder : embeds images with the pretrained encoder.

    Examples
    --------
    >>> from skdfl.pretrain import SimCLRPretrainer
    >>> pre = SimCLRPretrainer("resnet18", image_size=64, max_epochs=20, checkpoint_dir="runs/simclr")
    >>> pre.fit(paths)  # doctest: +SKIP
    >>> pre.save_backbone("simclr_resnet18.safetensors")  # doctest: +SKIP
    >>> emb = BackboneEmbedder("resnet18", checkpoint_path="simclr_resnet18.safetensors")  # doctest: +SKIP
    """
    )

    def __init__(
        self,
        backbone="resnet18",
        *,
        pretrained=False,
        checkpoint_path=None,
        image_size=224,
        resize="crop",
        temperature=0.5,
        projection_dim=128,
        batch_size=64,
        max_epochs=100,
        lr=1e-3,
        weight_decay=1e-6,
        optimizer="adam",
        lr_schedule="cosine",
        crop_scale=(0.2, 1.0),
        flip_rotate=True,
        color_jitter=0.5,
        gray_probability=0.2,
        blur_probability=0.5,
        num_workers=0,
        random_state=0,
        device="auto",
        precision="auto",
        checkpoint_dir=None,
        verbose=1,
    ):
        self.backbone = backbone
        self.pretrained = pretrained
        self.checkpoint_path = checkpoint_path
        self.image_size = image_size
        self.resize = resize
        self.temperature = temperature
        self.projection_dim = projection_dim
        self.batch_size = batch_size
        self.max_epochs = max_epochs
        self.lr = lr
        self.weight_decay = weight_decay
        self.optimizer = optimizer
        self.lr_schedule = lr_schedule
        self.crop_scale = crop_scale
        self.flip_rotate = flip_rotate
        self.color_jitter = color_jitter
        self.gray_probability = gray_probability
        self.blur_probability = blur_probability
        self.num_workers = num_workers
        self.random_state = random_state
        self.device = device
        self.precision = precision
        self.checkpoint_dir = checkpoint_dir
        self.verbose = verbose

    def fit(self, X, y=None):
        """Pretrain on the images of ``X``; labels are not used.

        Parameters
        ----------
        X : array of shape (n, H, W, 3), sequence of paths / arrays / ImageSource objects, Series or DataFrame
            What :class:`~skdfl.BackboneEmbedder` accepts. The cells of every column of a DataFrame are
            pooled into one set of images (e.g. the x20 and x5 views of a tile set).
        y : None
            Ignored.

        Returns
        -------
        self
        """
        return super().fit(X, y)

    def _training_set(self, X) -> TrainingSet:
        sources, _ = as_sources(X)
        cells = [cell for column in sources.values() for cell in column]
        if len(cells) < 2:
            raise ValueError(f"SimCLR needs at least 2 images (the others in a batch are the negatives), got {len(cells)}")
        n = len(cells)
        return TrainingSet(
            cells=cells,
            draw=lambda rng: rng.permutation(n).astype(np.int64)[:, None],
            identity={"sources": list(sources)},
        )
