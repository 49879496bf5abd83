"""Views: which (source, colour) images of a sample are embedded, in which order, under which names.

The concatenation order is fixed and documented: sources in the order given by ``views`` (or the
DataFrame's column order), and within each source the colours in the order given by ``colors``. A sample
with ``views=["x20", "x5"]`` and ``colors=["rgb", "gray"]`` is embedded as
``[x20_rgb | x20_gray | x5_rgb | x5_gray]``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import numpy as np

COLORS = ("rgb", "gray")

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
        raise ValueError("colors must name at least one of 'rgb', 'gray'")
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


def apply_color(img: np.ndarray, color: str) -> np.ndarray:
    return to_gray(img) if color == "gray" else img


def feature_names(views: Sequence[View], dim: int) -> np.ndarray:
    """``<source>_<color>_<k>`` for every view and embedding coordinate, in concatenation order."""
    return np.asarray([f"{v.name}_{k}" for v in views for k in range(dim)], dtype=object)
