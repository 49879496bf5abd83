"""Views: which (source, colour) images of a sample are embedded, in which order, under which names.

The concatenation order is fixed and documented: sources in the order given by ``views`` (or the
DataFrame's column order), and within each source the colours in the order given by ``colors``. A sample
with ``views=["x20", "x5"]`` and ``colors=["rgb", "gray"]`` is embedded as
``[x20_rgb | x20_gray | x5_rgb | x5_gray]``.

Colours: ``"rgb"`` (the image as read), ``"gray"`` (luminance replicated to 3 channels), ``"macenko"`` and
``"reinhard"`` (stain-normalised, :mod:`skdfl.stain`).

With image-space augmentations (:mod:`skdfl.augment`) the embedding is augmentation-major: one block of
every view per augmentation, block 0 the un-augmented images, and names get the augmentation as a prefix
(``identity_x20_rgb_5``, ``rot90_x20_rgb_5``...).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import NamedTuple

import numpy as np
import torch

from .stain import STAIN_COLORS, make_stain_normalizers

# Stain colours are computed by a normaliser (skdfl.stain) whose reference is part of the cache key.
COLORS = ("rgb", "gray", *STAIN_COLORS)

# ITU-R BT.601 luma, the weights Pillow's convert("L") uses.
_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)


class View(NamedTuple):
    source: str
    color: str

    @property
    def name(self) -> str:
        return f"{self.source}_{self.color}"


def resolve_views(
    available: Sequence[str], views: Sequence[str] | str | None, colors: Sequence[str] | str
) -> list[View]:
    """Expand ``views`` x ``colors`` into the ordered list of :class:`View`.

    ``available`` are the source names found in ``X``; ``views=None`` means all of them.
    """
    if isinstance(colors, str):
        colors = [colors]
    colors = list(colors)
    if not colors:
        raise ValueError(f"colors must name at least one of {list(COLORS)}")
    bad = [c for c in colors if c not in COLORS]
    if bad:
        raise ValueError(f"unknown colors {bad}; choose from {list(COLORS)}")
    if len(set(colors)) != len(colors):
        raise ValueError(f"colors has duplicates: {colors}")
    if views is None:
        sources = list(available)
    else:
        sources = [views] if isinstance(views, str) else list(views)
        if not sources:
            raise ValueError("views must name at least one source column")
        if len(set(sources)) != len(sources):
            raise ValueError(f"views has duplicates: {sources}")
        missing = [s for s in sources if s not in available]
        if missing:
            raise ValueError(
                f"views {missing} not found in X; available sources (columns): {list(available)}"
            )
    return [View(s, c) for s in sources for c in colors]


def to_gray(img: np.ndarray) -> np.ndarray:
    """Luminance of an ``(H, W, 3)`` uint8 image replicated to 3 channels (uint8)."""
    luma = np.rint(img.astype(np.float32) @ _LUMA).clip(0, 255).astype(np.uint8)
    return np.repeat(luma[..., None], 3, axis=-1)


def to_gray_tensors(images: torch.Tensor) -> torch.Tensor:
    """:func:`to_gray` for float ``(n, 3, H, W)`` tensors holding uint8 values, on any device."""
    luma = torch.as_tensor(_LUMA, device=images.device).view(1, 3, 1, 1)
    return (images * luma).sum(1, keepdim=True).round_().clamp_(0, 255).expand(-1, 3, -1, -1)


def apply_color(img: np.ndarray, color: str, normalizers: Mapping | None = None) -> np.ndarray:
    """``img`` in colour ``color``; stain colours use ``normalizers[color]`` (default: the published references)."""
    if color == "rgb":
        return img
    if color == "gray":
        return to_gray(img)
    if color in STAIN_COLORS:
        normalizer = (normalizers or {}).get(color)
        if normalizer is None:
            normalizer = make_stain_normalizers(colors=[color])[color]
        return normalizer.transform(img)
    raise ValueError(f"unknown color {color!r}; choose from {list(COLORS)}")


def feature_names(views: Sequence[View], dim: int, augmentations: Sequence[str] | None = None) -> np.ndarray:
    """Names of the embedding columns, in concatenation order.

    ``<source>_<color>_<k>`` for every view and coordinate; with ``augmentations`` (labels, see
    :func:`skdfl.augment.resolve_augmentations`), ``<augmentation>_<source>_<color>_<k>``, augmentation-major.
    """
    names = [f"{v.name}_{k}" for v in views for k in range(dim)]
    if augmentations is None:
        return np.asarray(names, dtype=object)
    return np.asarray([f"{a}_{name}" for a in augmentations for name in names], dtype=object)
