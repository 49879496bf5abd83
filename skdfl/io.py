"""Turning one cell of ``X`` (a file path, an in-memory array or an :class:`ImageSource`) into an RGB
``uint8`` image.

Also parses the documented input layouts of :class:`~skdfl.BackboneEmbedder` into *sources*: named
columns of cells, one cell per sample.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np
import pandas as pd
import scipy.sparse as sp
from PIL import Image, UnidentifiedImageError

DEFAULT_SOURCE = "image"


class ImageReadError(ValueError):
    """An input image could not be read or is not a valid RGB image; the message names it."""


@runtime_checkable
class ImageSource(Protocol):
    """Any object that reads one RGB image on demand: a cell of ``X`` besides paths and arrays.

    A slide region (``skdfl.wsi``), a tile of a zarr array, an image behind a database query... Anything
    with these two methods can stand in a column of ``X`` for :class:`~skdfl.BackboneEmbedder`,
    :func:`~skdfl.storage.extract_to_store` and the embedding cache; the pixels are read only when the
    sample is embedded. With ``num_workers > 0`` (or Dask) the objects must pickle.

    Methods
    -------
    read_rgb() -> ndarray
        The pixels, ``(H, W, 3)`` uint8 (float in ``[0, 1]`` is accepted and converted, as for arrays).
    content_key() -> str
        A stable identity of those pixels, the same in every process and session (e.g. slide identity +
        centre + resolution + size). The embedding cache keys the cell by it without reading the pixels,
        so two objects with one key must yield the same image.
    """

    def read_rgb(self) -> np.ndarray: ...

    def content_key(self) -> str: ...


def _check_array_image(img: np.ndarray, where: str) -> np.ndarray:
    if img.ndim != 3 or img.shape[-1] != 3:
        raise ImageReadError(
            f"{where}: expected an HxWx3 RGB image, got an array of shape {img.shape}"
        )
    if img.shape[0] == 0 or img.shape[1] == 0:
        raise ImageReadError(f"{where}: image has an empty side, shape {img.shape}")
    if img.dtype == np.uint8:
        return img
    if np.issubdtype(img.dtype, np.floating):
        if not np.isfinite(img).all():
            raise ImageReadError(f"{where}: image contains NaN or infinite values")
        if img.min() < 0.0 or img.max() > 1.0:
            raise ImageReadError(
                f"{where}: float images must hold values in [0, 1] (got range "
                f"[{img.min():.3g}, {img.max():.3g}]); pass uint8 for 0-255 data"
            )
        return np.round(img * 255.0).astype(np.uint8)
    raise ImageReadError(f"{where}: unsupported image dtype {img.dtype}; use uint8 (0-255) or float (0-1)")


def read_image(cell, where: str = "image") -> np.ndarray:
    """Return ``cell`` as an ``(H, W, 3)`` uint8 array.

    ``cell`` is a path (str or :class:`os.PathLike`) to any image Pillow reads (converted to RGB), an
    array (uint8 0-255 or float 0-1), or an :class:`ImageSource` (its ``read_rgb()`` is called and checked
    like an array). Errors are :class:`ImageReadError` naming the file, the source object or ``where``.
    """
    if isinstance(cell, (str, os.PathLike)):
        path = Path(cell)
        try:
            with Image.open(path) as im:
                return np.asarray(im.convert("RGB"))
        except FileNotFoundError:
            raise ImageReadError(f"image file not found: {path}") from None
        except (UnidentifiedImageError, OSError) as exc:
            raise ImageReadError(f"cannot read image file {path}: {exc}") from exc
    if isinstance(cell, np.ndarray):
        return _check_array_image(cell, where)
    if isinstance(cell, ImageSource):
        try:
            img = cell.read_rgb()
        except ImageReadError:
            raise
        except Exception as exc:
            raise ImageReadError(f"{where}: {cell!r}.read_rgb() failed: {exc}") from exc
        if not isinstance(img, np.ndarray):
            raise ImageReadError(
                f"{where}: {cell!r}.read_rgb() returned {type(img).__name__}, expected an HxWx3 uint8 array"
            )
        return _check_array_image(img, f"{where} ({cell!r})")
    raise ImageReadError(
        f"{where}: expected a file path, an HxWx3 array or an ImageSource (an object with read_rgb() and "
        f"content_key()), got {type(cell).__name__}"
    )


def as_sources(X) -> tuple[dict[str, Sequence], pd.Index | None]:
    """Split ``X`` into named sources of per-sample cells, without reading any image.

    The one input parser of skdfl: :meth:`BackboneEmbedder.transform <skdfl.BackboneEmbedder.transform>`,
    :func:`~skdfl.storage.extract_to_store` and Dask extraction all read ``X`` through it.

    Accepted layouts:

    * ``ndarray`` of shape ``(n, H, W, 3)`` (a memory map works) -> one source ``"image"``;
    * a 1-D sequence of cells -> one source ``"image"``: a list, tuple, string or object ``ndarray``,
      ``Series``, or any object with ``__len__`` and ``__getitem__`` (e.g. a lazy reader that builds image
      ``i`` on access);
    * a ``DataFrame`` whose columns are sources (e.g. ``x20``, ``x5``).

    A cell is an image file path, an ``(H, W, 3)`` array or an :class:`ImageSource`; cells are checked only
    when read (:func:`read_image`). Arrays and sequences are kept as they are (nothing is copied or
    iterated), so a source may be indexed lazily, one sample at a time.

    Returns
    -------
    sources : dict of str -> sequence
        Source name -> cells, all of the same length (at least 1).
    index : pandas.Index or None
        The index of a DataFrame or Series ``X``, else ``None``.
    """
    if sp.issparse(X):
        raise TypeError("sparse input is not supported: pass images (arrays or file paths), not a sparse matrix")
    if isinstance(X, np.ndarray) and np.iscomplexobj(X):
        raise ValueError("Complex data not supported: pass uint8 or float images")
    if isinstance(X, pd.DataFrame):
        if X.shape[1] == 0:
            raise ValueError("X is a DataFrame with no columns; expected one column per image source")
        if len(X) == 0:
            raise ValueError("X is empty: 0 samples")
        return {str(c): X[c].tolist() for c in X.columns}, X.index
    if isinstance(X, pd.Series):
        if len(X) == 0:
            raise ValueError("X is empty: 0 samples")
        return {DEFAULT_SOURCE: X.tolist()}, X.index
    if isinstance(X, np.ndarray) and X.dtype != object:
        if X.ndim == 4 and X.shape[-1] != 3:
            raise ValueError(f"X has shape {X.shape}: an image batch must be (n_samples, height, width, 3) RGB")
        if not (X.ndim == 4 or (X.ndim == 1 and X.dtype.kind in "US")):
            raise ValueError(
                f"X has shape {X.shape} and dtype {X.dtype}: expected an (n, H, W, 3) image batch, "
                "a 1-D sequence of image paths, or a DataFrame with one column per source"
            )
    if isinstance(X, (str, bytes, os.PathLike)):
        raise ValueError("X is a single path; pass a list of paths (one per sample)")
    if isinstance(X, ImageSource):
        raise ValueError("X is a single ImageSource; pass a list of them (one per sample)")
    if isinstance(X, Mapping) or not (hasattr(X, "__len__") and hasattr(X, "__getitem__")):
        raise ValueError(
            f"unsupported input type {type(X).__name__} for X: expected a DataFrame, an (n, H, W, 3) array, "
            "or a sequence (an object with __len__ and __getitem__) of image paths, arrays or ImageSources"
        )
    if len(X) == 0:
        raise ValueError("X is empty: 0 samples")
    return {DEFAULT_SOURCE: X}, None


__all__ = ["DEFAULT_SOURCE", "ImageReadError", "ImageSource", "as_sources", "read_image"]
