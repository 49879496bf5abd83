"""Regions: a centre on a slide and a resolution, read lazily; one cell of ``X`` like an image path."""

from __future__ import annotations

import math
from collections.abc import Mapping
from numbers import Integral, Real

import numpy as np
import pandas as pd

from ._reader import (
    INTERPOLATIONS,
    PAD_COLOR,
    check_backend,
    check_resolution,
    open_slide,
    slide_path,
)


def check_size(size) -> tuple[int, int]:
    if isinstance(size, Integral) and not isinstance(size, bool):
        size = (size, size)
    try:
        width, height = size
    except (TypeError, ValueError):
        raise ValueError(f"size must be an int or a (width, height) pair, got {size!r}") from None
    for side in (width, height):
        if isinstance(side, bool) or not isinstance(side, Integral) or side < 1:
            raise ValueError(f"size must hold positive ints, got {size!r}")
    return int(width), int(height)


def _check_pad_color(pad_color) -> tuple[int, int, int]:
    color = tuple(int(c) for c in pad_color)
    if len(color) != 3 or not all(0 <= c <= 255 for c in color):
        raise ValueError(f"pad_color must be an (R, G, B) triple of 0-255 ints, got {pad_color!r}")
    return color


def _coordinate(value, name: str):
    if isinstance(value, bool) or not isinstance(value, Real) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number (level-0 pixels), got {value!r}")
    return int(value) if float(value).is_integer() else float(value)


class Region:
    """A square (or rectangular) patch of a slide around a centre, at a resolution, read on demand.

    A :class:`skdfl.io.ImageSource`: :class:`~skdfl.BackboneEmbedder`, the embedding cache and
    :func:`~skdfl.storage.extract_to_store` take a column of regions exactly like a column of image paths.
    A region holds only its parameters: it pickles as a path and numbers (DataLoader workers, Dask), and
    the slide is opened on the first read in each process (:func:`skdfl.wsi.open_slide`).

    Parameters
    ----------
    slide : str or path-like
        The slide file.
    x, y : float
        The centre, in level-0 pixels.
    size : int or (int, int)
        Output ``(width, height)`` in pixels (an int is a square).
    magnification, mpp : float
        The resolution, exactly one of them: objective magnification (``20`` for x20) or micrometres per
        output pixel. ``magnification=20, size=224`` and ``magnification=5, size=224`` are a patch and its
        4x wider context around the same centre.
    base_magnification, base_mpp : float, default=None
        Resolution of level 0 when the slide does not record it (overrides what it records).
    backend : {"tiffslide", "openslide"}, default="tiffslide"
    interpolation : {"area", "bilinear", "bicubic", "lanczos"}, default="area"
        Resampling from the chosen pyramid level to ``size`` (antialiased).
    pad_color : (int, int, int), default=(255, 255, 255)
        Colour of the part of the region outside the slide.

    Notes
    -----
    Reading picks the coarsest pyramid level that is not coarser than the requested resolution, reads
    the window covering the region there and resamples it to ``size``; on a slide with one level (or a
    resolution finer than all levels but 0) that is a larger window of level 0, downsampled.
    """

    __slots__ = (
        "slide", "x", "y", "size", "magnification", "mpp", "base_magnification", "base_mpp",
        "backend", "interpolation", "pad_color",
    )

    def __init__(
        self,
        slide,
        x,
        y,
        *,
        size,
        magnification=None,
        mpp=None,
        base_magnification=None,
        base_mpp=None,
        backend="tiffslide",
        interpolation="area",
        pad_color=PAD_COLOR,
    ):
        check_resolution(magnification, mpp)
        check_resolution(base_magnification, base_mpp, name="base")
        if interpolation not in INTERPOLATIONS:
            raise ValueError(f"unknown interpolation {interpolation!r}; choose from {list(INTERPOLATIONS)}")
        self.slide = slide_path(slide)
        self.x = _coordinate(x, "x")
        self.y = _coordinate(y, "y")
        self.size = check_size(size)
        self.magnification = magnification
        self.mpp = mpp
        self.base_magnification = base_magnification
        self.base_mpp = base_mpp
        self.backend = check_backend(backend)
        self.interpolation = interpolation
        self.pad_color = _check_pad_color(pad_color)

    def _params(self) -> tuple:
        return tuple(getattr(self, name) for name in self.__slots__)

    def __getstate__(self):
        return self._params()

    def __setstate__(self, state) -> None:
        for name, value in zip(self.__slots__, state, strict=True):
            setattr(self, name, value)

    def __eq__(self, other) -> bool:
        return type(other) is type(self) and other._params() == self._params()

    def __hash__(self) -> int:
        return hash(self._params())

    def __repr__(self) -> str:
        res = f"magnification={self.magnification:g}" if self.magnification is not None else f"mpp={self.mpp:g}"
        size = self.size[0] if self.size[0] == self.size[1] else self.size
        return f"Region({self.slide!r}, x={self.x}, y={self.y}, {res}, size={size})"

    def downsample(self) -> float:
        """Level-0 pixels per output pixel on this region's slide."""
        return open_slide(self.slide, backend=self.backend).downsample_for(
            magnification=self.magnification,
            mpp=self.mpp,
            base_magnification=self.base_magnification,
            base_mpp=self.base_mpp,
        )

    def read_rgb(self) -> np.ndarray:
        """The pixels, ``(height, width, 3)`` uint8."""
        slide = open_slide(self.slide, backend=self.backend)
        downsample = slide.downsample_for(
            magnification=self.magnification,
            mpp=self.mpp,
            base_magnification=self.base_magnification,
            base_mpp=self.base_mpp,
        )
        return slide.read_region(
            self.x, self.y, size=self.size, downsample=downsample,
            interpolation=self.interpolation, pad_color=self.pad_color,
        )

    def content_key(self) -> str:
        """Slide identity (absolute path, size, mtime) + centre + level-0 px per output px + size + reading.

        Two requests that land on the same pixels (``magnification=20`` and ``mpp=0.5`` of a 0.5 um/px
        slide) share a key, so the embedding cache stores them once.
        """
        slide = open_slide(self.slide, backend=self.backend)
        downsample = self.downsample()
        return (
            f"wsi|{slide.identity}|{self.backend}|x={self.x!r}|y={self.y!r}|downsample={downsample!r}"
            f"|size={self.size[0]}x{self.size[1]}|{self.interpolation}|pad={self.pad_color}"
        )


def _per_slide(value, slide: str, name: str):
    if isinstance(value, Mapping):
        return value.get(slide)
    if isinstance(value, pd.Series):
        raise TypeError(f"{name} must be a number or a mapping slide -> number, not a Series")
    return value


def check_tiles_frame(df, where: str = "df") -> None:
    """Check ``df`` is a DataFrame with ``slide``, ``x``, ``y`` columns and finite numeric centres."""
    if not isinstance(df, pd.DataFrame):
        raise TypeError(f"{where} must be a DataFrame with columns slide, x, y; got {type(df).__name__}")
    missing = [c for c in ("slide", "x", "y") if c not in df.columns]
    if missing:
        raise ValueError(f"{where} lacks the column(s) {missing}; expected slide, x, y (level-0 centres)")
    for column in ("x", "y"):
        values = pd.to_numeric(df[column], errors="coerce")
        bad = ~np.isfinite(values.to_numpy(dtype=float))
        if bad.any():
            first = df.index[np.flatnonzero(bad)[0]]
            raise ValueError(
                f"{where}[{column!r}] must hold finite level-0 pixel coordinates; row {first!r} has "
                f"{df.at[first, column]!r}"
            )


def regions(
    df,
    *,
    magnification=None,
    size,
    mpp=None,
    base_magnification=None,
    base_mpp=None,
    backend="tiffslide",
    interpolation="area",
    pad_color=PAD_COLOR,
) -> pd.Series:
    """One lazy :class:`Region` per row of ``df``: a column to put next to others in ``X``.

    ::

        tiles = skdfl.wsi.tile("slide.svs", magnification=20, size=224)
        X = tiles.assign(x20=regions(tiles, magnification=20, size=224),
                         x5=regions(tiles, magnification=5, size=224))
        BackboneEmbedder(views=["x20", "x5"]).fit_transform(X)

    Parameters
    ----------
    df : DataFrame
        Columns ``slide`` (path), ``x``, ``y`` (centres in level-0 pixels), e.g. from
        :func:`~skdfl.wsi.tile` or :func:`~skdfl.wsi.read_annotations`.
    magnification, mpp : float
        The resolution, exactly one of them (see :class:`Region`).
    size : int or (int, int)
        Output size in pixels.
    base_magnification, base_mpp : float or mapping slide -> float, default=None
        Resolution of level 0 for slides that do not record it; a mapping gives it per slide path.
    backend, interpolation, pad_color
        See :class:`Region`.

    Returns
    -------
    Series of Region
        Indexed like ``df``, named ``x<magnification>`` (``x20``) or ``mpp<mpp>``.

    Raises
    ------
    MissingResolutionError
        Naming the first slide that records no resolution when neither ``base_magnification`` nor
        ``base_mpp`` supplies it. Every slide is opened once here so such errors come now, not from a
        DataLoader worker.
    """
    check_tiles_frame(df)
    check_resolution(magnification, mpp)
    size = check_size(size)
    slides = df["slide"].map(slide_path)
    out = []
    for slide in pd.unique(slides):
        base_mag = _per_slide(base_magnification, slide, "base_magnification")
        base_um = _per_slide(base_mpp, slide, "base_mpp")
        check_resolution(base_mag, base_um, name="base")
        open_slide(slide, backend=backend).downsample_for(
            magnification=magnification, mpp=mpp, base_magnification=base_mag, base_mpp=base_um
        )
    params = dict(size=size, magnification=magnification, mpp=mpp, backend=backend,
                  interpolation=interpolation, pad_color=pad_color)
    for slide, x, y in zip(slides, df["x"].tolist(), df["y"].tolist(), strict=True):
        out.append(Region(
            slide, x, y,
            base_magnification=_per_slide(base_magnification, slide, "base_magnification"),
            base_mpp=_per_slide(base_mpp, slide, "base_mpp"),
            **params,
        ))
    name = f"x{magnification:g}" if magnification is not None else f"mpp{mpp:g}"
    return pd.Series(out, index=df.index, name=name, dtype=object)


def parse_view(name: str) -> dict:
    """The resolution a view name stands for: ``"x20"`` -> ``{"magnification": 20.0}``,
    ``"mpp0.5"`` -> ``{"mpp": 0.5}``; the names :func:`regions` gives its columns."""
    text = str(name).strip()
    for prefix, key in (("mpp", "mpp"), ("x", "magnification")):
        if text.lower().startswith(prefix):
            try:
                value = float(text[len(prefix):])
            except ValueError:
                break
            if math.isfinite(value) and value > 0:
                return {key: value}
    raise ValueError(f"view name {name!r} names no resolution; use x<magnification> (x20, x5) or mpp<um/px> (mpp0.5)")


def region_views(tiles, views, *, size, base_magnification=None, base_mpp=None, **kwargs) -> pd.DataFrame:
    """``tiles`` plus one :func:`regions` column per view name, e.g. ``views=["x20", "x5"]``.

    The command line's way to build the multi-zoom ``X`` from a tiles CSV. ``kwargs`` go to
    :func:`regions` (``backend``, ``interpolation``, ``pad_color``).
    """
    if isinstance(views, str):
        views = [v for v in (s.strip() for s in views.split(",")) if v]
    if not views:
        raise ValueError("views must name at least one view, e.g. x20,x5")
    columns = {
        str(view): regions(tiles, size=size, base_magnification=base_magnification, base_mpp=base_mpp,
                           **parse_view(view), **kwargs)
        for view in views
    }
    return tiles.assign(**columns)


__all__ = ["Region", "check_size", "check_tiles_frame", "parse_view", "region_views", "regions"]
