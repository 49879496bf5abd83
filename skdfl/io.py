"""Turning one cell of ``X`` (a file path or an in-memory array) into an RGB ``uint8`` image.

Also parses the three documented input layouts of :class:`~skdfl.BackboneEmbedder` into *sources*: named
columns of cells, one cell per sample.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.sparse as sp
from PIL import Image, UnidentifiedImageError

DEFAULT_SOURCE = "image"


class ImageReadError(ValueError):
    """An input image could not be read or is not a valid RGB image; the message names it."""


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

    ``cell`` is a path (str or :class:`os.PathLike`) to any image Pillow reads (converted to RGB), or an
    array (uint8 0-255 or float 0-1). Errors are :class:`ImageReadError` naming the file or ``where``.
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
    raise ImageReadError(
        f"{where}: expected a file path or an HxWx3 array, got {type(cell).__name__}"
    )


def as_sources(X) -> tuple[dict[str, Sequence], pd.Index | None]:
    """Split ``X`` into named sources of per-sample cells.

    Accepted layouts:

    * ``ndarray`` of shape ``(n, H, W, 3)`` -> one source ``"image"``;
    * a 1-D sequence (list, tuple, ``ndarray``, ``Series``) of paths or arrays -> one source ``"image"``;
    * a ``DataFrame`` whose columns are sources (e.g. ``x20``, ``x5``), cells holding paths or arrays.

    Returns the sources (column name -> cells) and the DataFrame/Series index (``None`` otherwise).
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
    index = X.index if isinstance(X, pd.Series) else None
    if isinstance(X, pd.Series):
        X = X.tolist()
    if isinstance(X, np.ndarray) and X.dtype != object:
        if X.ndim == 4:
            if X.shape[-1] != 3:
                raise ValueError(
                    f"X has shape {X.shape}: an image batch must be (n_samples, height, width, 3) RGB"
                )
            if X.shape[0] == 0:
                raise ValueError("X is empty: 0 samples")
            return {DEFAULT_SOURCE: list(X)}, None
        if X.ndim == 1 and X.dtype.kind in "US":
            X = X.tolist()
        else:
            raise ValueError(
                f"X has shape {X.shape} and dtype {X.dtype}: expected an (n, H, W, 3) image batch, "
                "a 1-D sequence of image paths, or a DataFrame with one column per source"
            )
    if isinstance(X, (str, os.PathLike)):
        raise ValueError("X is a single path; pass a list of paths (one per sample)")
    if not isinstance(X, (list, tuple, np.ndarray)):
        raise ValueError(f"unsupported input type {type(X).__name__} for X")
    cells = list(X)
    if len(cells) == 0:
        raise ValueError("X is empty: 0 samples")
    return {DEFAULT_SOURCE: cells}, index
