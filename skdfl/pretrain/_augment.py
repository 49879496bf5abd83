"""Histopathology augmentations for contrastive pretraining, batched on the training device.

Built from :mod:`kornia.augmentation` because it draws *per-sample* random parameters inside one batched
call on any device. ``torchvision.transforms.v2`` applied to a batch tensor draws one set of parameters for
the whole batch, so per-sample views would need a Python loop of small kernels per image (the CPU cost of
both is measured in ``benchmarks/bench_pretrain.py``).

The default policy follows Ciga et al. (SimCLR for histopathology): random resized crop, horizontal and
vertical flips and 90-degree rotations (a slide has no orientation), colour jitter, random grayscale and
Gaussian blur.
"""

from __future__ import annotations

import kornia.augmentation as K
from torch import nn

__all__ = ["build_augmentation"]


def build_augmentation(
    image_size: int,
    *,
    crop_scale: tuple[float, float] | None = (0.2, 1.0),
    flip_rotate: bool = True,
    color_jitter: float = 0.5,
    gray_probability: float = 0.2,
    blur_probability: float = 0.5,
) -> nn.Module:
    """A random augmentation of float ``(n, 3, H, W)`` images in ``[0, 1]``; each image draws its own.

    Parameters
    ----------
    image_size : int
        Side of the square output.
    crop_scale : (float, float) or None, default=(0.2, 1.0)
        Area range of the random resized crop (aspect ratio 3/4 to 4/3), resized back to ``image_size``.
        ``None``: no crop.
    flip_rotate : bool, default=True
        Random horizontal / vertical flips and multiples of 90-degree rotations.
    color_jitter : float, default=0.5
        SimCLR's strength ``s``: brightness, contrast and saturation jitter ``0.8 s``, hue ``0.2 s``,
        applied with probability 0.8. ``0`` disables it.
    gray_probability : float, default=0.2
        Probability of turning an image to grayscale (3 equal channels).
    blur_probability : float, default=0.5
        Probability of a Gaussian blur, kernel about a tenth of ``image_size``, sigma in [0.1, 2].

    Returns
    -------
    kornia.augmentation.AugmentationSequential
        Call it on a batch; its ``forward_parameters(shape)`` / ``forward(x, params=...)`` replay one
        draw on another batch (MPCS ``same_augmentation``).
    """
    steps: list[nn.Module] = []
    if crop_scale is not None:
        steps.append(K.RandomResizedCrop((image_size, image_size), scale=tuple(crop_scale), p=1.0))
    if flip_rotate:
        steps += [
            K.RandomHorizontalFlip(p=0.5),
            K.RandomVerticalFlip(p=0.5),
            K.RandomRotation90(times=(0, 3), p=1.0),
        ]
    if color_jitter > 0:
        s = float(color_jitter)
        steps.append(K.ColorJitter(0.8 * s, 0.8 * s, 0.8 * s, min(0.5, 0.2 * s), p=0.8))
    if gray_probability > 0:
        steps.append(K.RandomGrayscale(p=gray_probability))
    if blur_probability > 0:
        kernel = max(3, int(0.1 * image_size) // 2 * 2 + 1)
        steps.append(K.RandomGaussianBlur((kernel, kernel), (0.1, 2.0), p=blur_probability))
    if not steps:
        return nn.Identity()
    return K.AugmentationSequential(*steps)
