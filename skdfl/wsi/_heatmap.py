"""Heatmaps: a fitted pipeline's class probability on the tile grid, overlaid on the slide thumbnail."""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
import pandas as pd

from ._reader import open_slide, slide_path
from ._region import Region, check_tiles_frame


def _grid_step(values: np.ndarray) -> float | None:
    unique = np.unique(values)
    if len(unique) < 2:
        return None
    return float(np.diff(unique).min())


def _footprint(tiles: pd.DataFrame) -> float | None:
    """Level-0 width of the finest region column, the cell size when the grid has one row and column."""
    widths = []
    for column in tiles.columns:
        first = tiles[column].iloc[0]
        if isinstance(first, Region):
            widths.append(first.size[0] * first.downsample())
    return min(widths) if widths else None


def tile_grid(tiles: pd.DataFrame) -> tuple[np.ndarray, np.ndarray, float, float, float]:
    """Row and column of every tile on its regular grid, plus the grid's origin and step (level-0 px)."""
    xs, ys = tiles["x"].to_numpy(dtype=np.float64), tiles["y"].to_numpy(dtype=np.float64)
    step = _grid_step(xs) or _grid_step(ys) or _footprint(tiles) or 1.0
    x0, y0 = xs.min(), ys.min()
    cols = np.rint((xs - x0) / step).astype(np.int64)
    rows = np.rint((ys - y0) / step).astype(np.int64)
    return rows, cols, x0, y0, step


def _class_column(classes, class_) -> int:
    classes = list(classes)
    if class_ is None:
        if len(classes) == 2:
            return 1
        raise ValueError(f"the pipeline has {len(classes)} classes {classes}; choose the mapped one with class_=")
    for k, c in enumerate(classes):
        if c == class_ or str(c) == str(class_):
            return k
    raise ValueError(f"class_={class_!r} is not one of the pipeline's classes {classes}")


def _model_input(pipeline, tiles: pd.DataFrame) -> pd.DataFrame:
    names = getattr(pipeline, "feature_names_in_", None)
    if names is None:
        return tiles
    missing = [str(n) for n in names if n not in tiles.columns]
    if missing:
        raise ValueError(f"tiles lacks the column(s) {missing} the pipeline was fitted on")
    return tiles[list(names)]


def heatmap(pipeline, tiles, *, class_=None, out=None, thumbnail_size=1024, alpha=0.5, cmap="magma"):
    """Probability of one class on the tile grid of a slide; optionally a PNG overlay on its thumbnail.

    Parameters
    ----------
    pipeline : fitted classifier with ``predict_proba`` and ``classes_``
        E.g. ``make_pipeline(BackboneEmbedder(views=["x20", "x5"]), FocalHeadClassifier())``.
    tiles : DataFrame
        What the pipeline predicts on, from one slide: ``slide``, ``x``, ``y`` plus its view columns
        (e.g. the ``x20`` / ``x5`` :func:`~skdfl.wsi.regions`). When the pipeline records
        ``feature_names_in_``, only those columns are passed to it.
    class_ : label, default=None
        Class whose probability is mapped; ``None`` is the positive (second) class of a binary model.
    out : str or path-like, default=None
        Write a PNG there: the slide thumbnail with each tile's probability drawn over its grid cell
        (cells without a tile stay clear), and a colour bar. Written atomically.
    thumbnail_size : int, default=1024
        Longer side of the thumbnail in the PNG, pixels.
    alpha : float, default=0.5
        Opacity of the probability layer.
    cmap : str, default="magma"
        Matplotlib colour map of the probabilities (0 to 1).

    Returns
    -------
    ndarray of shape (n_rows, n_cols)
        Probabilities on the tile grid, ``NaN`` where there is no tile. Cell ``[r, c]`` is the tile
        centred at level-0 ``(x.min() + c * step, y.min() + r * step)``, ``step`` being the smallest
        distance between two centres.
    """
    check_tiles_frame(tiles, "tiles")
    if len(tiles) == 0:
        raise ValueError("tiles is empty: no tile to predict on")
    slides = pd.unique(tiles["slide"].map(slide_path))
    if len(slides) != 1:
        raise ValueError(f"tiles holds {len(slides)} slides; draw one heatmap per slide (tiles.groupby('slide'))")
    if not hasattr(pipeline, "predict_proba"):
        raise TypeError(f"{type(pipeline).__name__} has no predict_proba; a heatmap needs class probabilities")
    column = _class_column(getattr(pipeline, "classes_", []), class_)
    proba = np.asarray(pipeline.predict_proba(_model_input(pipeline, tiles)))[:, column]
    rows, cols, x0, y0, step = tile_grid(tiles)
    grid = np.full((rows.max() + 1, cols.max() + 1), np.nan)
    grid[rows, cols] = proba
    if out is not None:
        label = pipeline.classes_[column]
        slide = open_slide(slides[0], backend=_backend(tiles))
        _write_overlay(slide, grid, (x0, y0, step), out, label, thumbnail_size, alpha, cmap)
    return grid


def _backend(tiles: pd.DataFrame) -> str:
    for column in tiles.columns:
        first = tiles[column].iloc[0]
        if isinstance(first, Region):
            return first.backend
    return "tiffslide"


def _write_overlay(slide, grid, geometry, out, label, thumbnail_size, alpha, cmap) -> None:
    from matplotlib.figure import Figure

    from ..storage import atomic_write

    thumb, scale = slide.thumbnail(thumbnail_size)
    x0, y0, step = geometry
    width, height = slide.dimensions
    n_rows, n_cols = grid.shape
    # Grid cell (r, c) covers [x0 + (c - 1/2) step, x0 + (c + 1/2) step) in level-0 px.
    extent = (x0 - step / 2, x0 + (n_cols - 0.5) * step, y0 + (n_rows - 0.5) * step, y0 - step / 2)
    dpi = 100
    figure = Figure(figsize=(thumb.shape[1] / dpi * 1.15, thumb.shape[0] / dpi), dpi=dpi)
    axes = figure.add_axes((0.0, 0.0, 1 / 1.15, 1.0))
    axes.imshow(thumb, extent=(0, width, height, 0), interpolation="antialiased")
    layer = axes.imshow(np.ma.masked_invalid(grid), extent=extent, cmap=cmap, vmin=0.0, vmax=1.0,
                        alpha=alpha, interpolation="nearest")
    axes.set_xlim(0, width)
    axes.set_ylim(height, 0)
    axes.set_axis_off()
    bar_axes = figure.add_axes((1 / 1.15 + 0.01, 0.1, 0.03, 0.8))
    figure.colorbar(layer, cax=bar_axes, label=f"P({label})")
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=dpi)
    target = Path(os.fspath(out))
    if target.parent and not target.parent.exists():
        raise FileNotFoundError(f"folder of out={str(out)!r} does not exist")
    atomic_write(target, buffer.getvalue())


__all__ = ["heatmap", "tile_grid"]
