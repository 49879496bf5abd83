"""Tiling a slide: a regular grid of centres at a resolution, kept where there is tissue.

Tissue detection
----------------
On a thumbnail of the slide (at most a few thousand pixels a side, from the coarsest fitting pyramid
level) every pixel gets its HSV saturation ``(max(R,G,B) - min(R,G,B)) / max(R,G,B)``: stained tissue is
coloured, glass, dust shadows and the black scanner border are not. After a 5x5 median filter (speckle),
pixels above the Otsu threshold of the saturation histogram are tissue (the threshold is clipped to
``[0.05, 0.2]``, so a thumbnail that is all tissue or all glass is not split in two halves). A tile is
kept when at least ``min_tissue`` of its footprint is tissue.
"""

from __future__ import annotations

import math
from numbers import Real

import numpy as np
import pandas as pd
from scipy import ndimage

from ._reader import check_resolution, open_slide, slide_path
from ._region import check_size

SATURATION_THRESHOLD_RANGE = (0.05, 0.2)


def otsu_threshold(values: np.ndarray, bins: int = 256) -> float:
    """Otsu's threshold of ``values`` in ``[0, 1]``: the cut maximising the between-class variance."""
    hist, edges = np.histogram(values, bins=bins, range=(0.0, 1.0))
    hist = hist.astype(np.float64)
    centres = (edges[:-1] + edges[1:]) / 2
    weight_low = np.cumsum(hist)
    weight_high = weight_low[-1] - weight_low
    sum_low = np.cumsum(hist * centres)
    mean_low = sum_low / np.maximum(weight_low, 1e-12)
    mean_high = (sum_low[-1] - sum_low) / np.maximum(weight_high, 1e-12)
    between = weight_low * weight_high * (mean_low - mean_high) ** 2
    return float(edges[int(np.argmax(between[:-1])) + 1])


def tissue_mask(image: np.ndarray) -> np.ndarray:
    """Boolean ``(h, w)`` tissue mask of an RGB uint8 thumbnail.

    HSV saturation ``(max - min) / max`` of every pixel (stain is coloured; glass, dust shadows and the
    black scanner border are not), 5x5 median-filtered, above its Otsu threshold clipped to
    :data:`SATURATION_THRESHOLD_RANGE` (so an all-tissue or all-glass image is not cut in two halves).
    """
    rgb = image.astype(np.float32)
    high, low = rgb.max(axis=-1), rgb.min(axis=-1)
    saturation = np.where(high > 0, (high - low) / np.maximum(high, 1.0), 0.0)
    saturation = ndimage.median_filter(saturation, size=5, mode="nearest")
    low_cut, high_cut = SATURATION_THRESHOLD_RANGE
    threshold = min(max(otsu_threshold(saturation), low_cut), high_cut)
    return saturation > threshold


def _fraction_in_boxes(mask: np.ndarray, x0, y0, x1, y1) -> np.ndarray:
    """Mean of ``mask`` over boxes ``[x0, x1) x [y0, y1)`` (thumbnail pixels, clipped), by a summed-area table."""
    h, w = mask.shape
    table = np.zeros((h + 1, w + 1), dtype=np.int64)
    table[1:, 1:] = mask.astype(np.int64).cumsum(0).cumsum(1)
    x0, x1 = np.clip(x0, 0, w), np.clip(x1, 0, w)
    y0, y1 = np.clip(y0, 0, h), np.clip(y1, 0, h)
    x1, y1 = np.maximum(x1, x0 + 1).clip(max=w), np.maximum(y1, y0 + 1).clip(max=h)
    total = table[y1, x1] - table[y0, x1] - table[y1, x0] + table[y0, x0]
    area = (x1 - x0) * (y1 - y0)
    return np.where(area > 0, total / np.maximum(area, 1), 0.0)


def grid_centres(extent: int, footprint: float, step: float) -> np.ndarray:
    """Level-0 centres of the tiles of ``footprint`` px, ``step`` px apart, lying wholly in ``[0, extent)``."""
    if footprint > extent:
        return np.zeros(0, dtype=np.int64)
    count = math.floor((extent - footprint) / step + 1e-9) + 1
    return np.floor(footprint / 2 + np.arange(count) * step + 0.5).astype(np.int64)


def tile(
    slide,
    *,
    magnification=20,
    size=224,
    stride=None,
    tissue=True,
    min_tissue=0.5,
    mpp=None,
    base_magnification=None,
    base_mpp=None,
    backend="tiffslide",
) -> pd.DataFrame:
    """Centres of a regular grid of tiles at a resolution, kept where there is tissue.

    Parameters
    ----------
    slide : str, path-like or list of them
        Slide file(s); a list tiles each and concatenates the tables.
    magnification : float, default=20
        Resolution of the grid (ignored when ``mpp`` is given).
    size : int or (int, int), default=224
        Tile size in pixels at that resolution.
    stride : int or (int, int), default=None
        Distance between neighbouring centres in pixels at that resolution; ``None`` is ``size``
        (adjacent tiles, no overlap).
    tissue : bool, default=True
        Keep only tiles whose footprint is at least ``min_tissue`` tissue (:func:`tissue_mask` on a
        thumbnail). ``False`` keeps the whole grid.
    min_tissue : float, default=0.5
        Minimum tissue fraction of a kept tile.
    mpp : float, default=None
        Resolution as micrometres per pixel instead of ``magnification``.
    base_magnification, base_mpp : float, default=None
        Resolution of level 0 for a slide that does not record it.
    backend : {"tiffslide", "openslide"}, default="tiffslide"

    Returns
    -------
    DataFrame
        Columns ``slide`` (the path as given), ``x``, ``y`` (int level-0 centres), one row per tile in
        row-major order. Tiles lie wholly inside the slide.
    """
    if isinstance(slide, (list, tuple)):
        frames = [
            tile(s, magnification=magnification, size=size, stride=stride, tissue=tissue,
                 min_tissue=min_tissue, mpp=mpp, base_magnification=base_magnification,
                 base_mpp=base_mpp, backend=backend)
            for s in slide
        ]
        return pd.concat(frames, ignore_index=True) if frames else _frame([], [], [])
    path = slide_path(slide)
    if mpp is not None:
        magnification = None
    check_resolution(magnification, mpp)
    size = check_size(size)
    stride = size if stride is None else check_size(stride)
    if isinstance(min_tissue, bool) or not isinstance(min_tissue, Real) or not 0 <= min_tissue <= 1:
        raise ValueError(f"min_tissue must be a fraction in [0, 1], got {min_tissue!r}")
    handle = open_slide(path, backend=backend)
    downsample = handle.downsample_for(
        magnification=magnification, mpp=mpp, base_magnification=base_magnification, base_mpp=base_mpp
    )
    width, height = handle.dimensions
    foot_w, foot_h = size[0] * downsample, size[1] * downsample
    xs = grid_centres(width, foot_w, stride[0] * downsample)
    ys = grid_centres(height, foot_h, stride[1] * downsample)
    grid_x, grid_y = np.meshgrid(xs, ys)
    grid_x, grid_y = grid_x.ravel(), grid_y.ravel()
    if tissue and len(grid_x):
        # A tile should span at least ~8 thumbnail pixels for its tissue fraction to mean something.
        max_size = int(min(4096, max(1024, 8 * max(width, height) / min(foot_w, foot_h))))
        thumb, scale = handle.thumbnail(max_size)
        mask = tissue_mask(thumb)
        fraction = _fraction_in_boxes(
            mask,
            np.floor((grid_x - foot_w / 2) / scale).astype(np.int64),
            np.floor((grid_y - foot_h / 2) / scale).astype(np.int64),
            np.ceil((grid_x + foot_w / 2) / scale).astype(np.int64),
            np.ceil((grid_y + foot_h / 2) / scale).astype(np.int64),
        )
        keep = fraction >= min_tissue
        grid_x, grid_y = grid_x[keep], grid_y[keep]
    return _frame([path] * len(grid_x), grid_x, grid_y)


def _frame(slides, xs, ys) -> pd.DataFrame:
    return pd.DataFrame({
        "slide": pd.Series(slides, dtype=object),
        "x": np.asarray(xs, dtype=np.int64),
        "y": np.asarray(ys, dtype=np.int64),
    })


__all__ = ["grid_centres", "otsu_threshold", "tile", "tissue_mask"]
