"""Turning one cell of ``X`` (a file path, an array, a PIL image, a tensor or an :class:`ImageSource`) into
an RGB ``uint8`` image.

Also parses the documented input layouts of :class:`~skdfl.BackboneEmbedder` into *sources*: named
columns of cells, one cell per sample.
"""

from __future__ import annotations

import os
import sys
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np
import pandas as pd
import scipy.sparse as sp
from PIL import Image, UnidentifiedImageError

from ._decode import decode_image_file

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


MISSING_CELL_HINT = "the cell is missing (None/NaN); every sample needs an image in every source column it embeds"

# Pillow's own limit, read when an image is opened (a user who changed PIL.Image.MAX_IMAGE_PIXELS keeps it).
PIL_LIMIT = "pil"
# Serialises the few opens that lift Pillow's process-wide pixel limit for one file (see _open_image).
_PIL_LIMIT_LOCK = threading.Lock()


def is_missing(cell) -> bool:
    """``True`` for the cells pandas uses for a missing value: ``None``, ``NaN``, ``pd.NA``, ``NaT``."""
    if cell is None:
        return True
    if isinstance(cell, (float, np.floating)) or cell is pd.NA or cell is pd.NaT:
        return bool(pd.isna(cell))
    return False


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


def _is_tensor(obj) -> bool:
    # torch is only looked up if already imported: without it, nothing can be a tensor.
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(obj, torch.Tensor)


def _tensor_to_numpy(tensor) -> np.ndarray:
    tensor = tensor.detach().cpu()
    if tensor.dtype == sys.modules["torch"].bfloat16:
        tensor = tensor.float()  # no numpy equivalent
    return tensor.numpy()


def _channels_first(shape: tuple) -> bool:
    """torchvision's layout ``(..., 3, H, W)``, told from ``(..., H, W, 3)`` by where the 3 channels are."""
    return shape[-3] == 3 and shape[-1] != 3


def tensor_image(tensor, where: str = "image") -> np.ndarray:
    """An image ``torch.Tensor`` as an ``(H, W, 3)`` uint8 array.

    Layouts follow torchvision: ``(3, H, W)`` (``torchvision.io.decode_image``, ``ToTensor``) or
    ``(H, W, 3)``; a tensor whose first and last sides are both 3 is read as ``(H, W, 3)``. Values are
    uint8 0-255 or float 0-1, as for arrays.
    """
    if tensor.ndim != 3:
        raise ImageReadError(f"{where}: expected a (3, H, W) or (H, W, 3) image tensor, got shape {tuple(tensor.shape)}")
    img = _tensor_to_numpy(tensor)
    if _channels_first(img.shape):
        img = img.transpose(1, 2, 0)
    return _check_array_image(img, where)


def _scaled_to_uint8(values: np.ndarray, top: int) -> np.ndarray:
    return np.rint(values.astype(np.float64) * (255.0 / top)).astype(np.uint8)


def pil_to_rgb(im: Image.Image, where: str = "image") -> np.ndarray:
    """A Pillow image as an ``(H, W, 3)`` uint8 array, high bit depths scaled (not clipped) to 8 bits.

    Pillow's ``convert("RGB")`` clips 16-bit grayscale (modes ``I;16*``, and ``I`` as 16-bit PNGs open)
    to 255, which turns a 16-bit image white; these are scaled by ``255 / 65535`` instead. 32-bit float
    images (mode ``F``) must hold values in ``[0, 1]``. 16-bit RGB files are reduced to 8 bits by Pillow
    itself when opened.
    """
    mode = im.mode
    if mode.startswith("I;16") or mode == "I":
        values = np.asarray(im)
        if values.size and (values.min() < 0 or values.max() > 65535):
            raise ImageReadError(
                f"{where}: a 32-bit integer image with values outside the 16-bit range "
                f"[{values.min()}, {values.max()}] cannot be read as an image; convert it to 8 or 16 bits"
            )
        gray = _scaled_to_uint8(values, 65535)
        return np.repeat(gray[..., None], 3, axis=-1)
    if mode == "F":
        return _check_array_image(np.repeat(np.asarray(im)[..., None], 3, axis=-1), where)
    return np.asarray(im.convert("RGB"))


def _open_image(path: Path, max_pixels) -> Image.Image:
    """``Image.open`` under the pixel limit ``max_pixels`` (see :func:`read_image`)."""
    if max_pixels == PIL_LIMIT:
        return Image.open(path)
    limit = Image.MAX_IMAGE_PIXELS
    if limit is not None and max_pixels is not None and max_pixels <= limit:
        im = Image.open(path)  # Pillow refuses only above 2x its limit: ours is stricter, checked below
    else:
        # Pillow checks its module-wide limit inside open(); lifting it is the only way to accept a larger
        # trusted file. Only the header is parsed while it is lifted; the lock keeps our own readers from
        # restoring each other's value.
        with _PIL_LIMIT_LOCK:
            previous, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, None
            try:
                im = Image.open(path)
            finally:
                Image.MAX_IMAGE_PIXELS = previous
    width, height = im.size
    if max_pixels is not None and width * height > max_pixels:
        im.close()
        raise Image.DecompressionBombError(f"{width}x{height} = {width * height} pixels > max_pixels={max_pixels}")
    return im


def read_image(cell, where: str = "image", *, max_pixels: int | str | None = PIL_LIMIT) -> np.ndarray:
    """Return ``cell`` as an ``(H, W, 3)`` uint8 array.

    Parameters
    ----------
    cell : path, array, PIL image, tensor or ImageSource
        * a path (str or :class:`os.PathLike`) to any image Pillow reads: converted to RGB; 16-bit and
          32-bit grayscale are scaled to 8 bits (:func:`pil_to_rgb`), never clipped;
        * an array ``(H, W, 3)``, uint8 0-255 or float 0-1;
        * a :class:`PIL.Image.Image`, converted like a file;
        * a ``torch.Tensor`` ``(3, H, W)`` (torchvision's layout) or ``(H, W, 3)``, uint8 0-255 or float 0-1
          (:func:`tensor_image`);
        * an :class:`ImageSource`: its ``read_rgb()`` is called and checked like an array.
    where : str, default="image"
        Names the cell in error messages (e.g. ``"sample 3, source 'x20'"``); files are named by path.
    max_pixels : int, "pil" or None, default="pil"
        Largest image *file* (width x height) decoded, against decompression bombs. ``"pil"`` follows
        Pillow's ``PIL.Image.MAX_IMAGE_PIXELS`` (~89 Mpx: a warning above it, an error above twice it);
        an int refuses anything larger; ``None`` lifts the limit (trusted files only).

    Raises
    ------
    ImageReadError
        Naming the file, the source object or ``where``: a missing, unreadable or too large file, a
        missing cell (``None``/``NaN``), an array of the wrong shape, dtype or range.
    """
    if isinstance(cell, (str, os.PathLike)):
        path = Path(cell)
        try:
            # PNG / JPEG / TIFF through the faster decoders of skdfl._decode (same pixels); None: Pillow below.
            fast = decode_image_file(path, max_pixels=max_pixels)
            if fast is not None:
                return fast
            with _open_image(path, max_pixels) as im:
                return pil_to_rgb(im, f"image file {path}")
        except FileNotFoundError:
            raise ImageReadError(f"image file not found: {path}") from None
        except Image.DecompressionBombError as exc:
            raise ImageReadError(
                f"image file {path} is larger than the pixel limit ({exc}); if the file is trusted, raise "
                "the limit with max_pixels= (BackboneEmbedder(max_image_pixels=...); None lifts it)"
            ) from exc
        except (UnidentifiedImageError, OSError) as exc:
            raise ImageReadError(f"cannot read image file {path}: {exc}") from exc
    if isinstance(cell, np.ndarray):
        return _check_array_image(cell, where)
    if isinstance(cell, Image.Image):
        return pil_to_rgb(cell, where)
    if _is_tensor(cell):
        return tensor_image(cell, where)
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
    if is_missing(cell):
        raise ImageReadError(f"{where}: {MISSING_CELL_HINT}")
    raise ImageReadError(
        f"{where}: expected a file path, an HxWx3 array, a PIL image, an image tensor or an ImageSource "
        f"(an object with read_rgb() and content_key()), got {type(cell).__name__}"
    )


def _tensor_batch(X) -> np.ndarray:
    """A 4-D image tensor as an ``(n, H, W, 3)`` array (a transposed view, not a copy, on CPU)."""
    if X.ndim != 4:
        raise ValueError(
            f"X is a tensor of shape {tuple(X.shape)}: an image batch must be (n, 3, H, W) or (n, H, W, 3); "
            "pass a list of tensors for images of different sizes"
        )
    batch = _tensor_to_numpy(X)
    return batch.transpose(0, 2, 3, 1) if _channels_first(batch.shape) else batch


def as_sources(X) -> tuple[dict[str, Sequence], pd.Index | None]:
    """Split ``X`` into named sources of per-sample cells, without reading any image.

    The one input parser of skdfl: :meth:`BackboneEmbedder.transform <skdfl.BackboneEmbedder.transform>`,
    :func:`~skdfl.storage.extract_to_store` and Dask extraction all read ``X`` through it.

    Accepted layouts:

    * ``ndarray`` of shape ``(n, H, W, 3)`` (a memory map works) -> one source ``"image"``;
    * ``torch.Tensor`` of shape ``(n, 3, H, W)`` (torchvision's layout) or ``(n, H, W, 3)``, uint8 0-255 or
      float 0-1 -> one source ``"image"`` (moved to the CPU; a batch with 3 in both places is read as
      ``(n, H, W, 3)``);
    * a 1-D sequence of cells -> one source ``"image"``: a list, tuple, string or object ``ndarray``,
      ``Series``, or any object with ``__len__`` and ``__getitem__`` (e.g. a lazy reader that builds image
      ``i`` on access);
    * a ``DataFrame`` whose columns are sources (e.g. ``x20``, ``x5``).

    A cell is an image file path, an ``(H, W, 3)`` array, a PIL image, an image tensor or an
    :class:`ImageSource`; cells are checked only when read (:func:`read_image`). Arrays and sequences are kept as they are (nothing is copied or
    iterated), so a source may be indexed lazily, one sample at a time.

    Returns
    -------
    sources : dict of str -> sequence
        Source name -> cells, all of the same length (at least 1).
    index : pandas.Index or None
        The index of a DataFrame or Series ``X``, else ``None``.
    """
    if _is_tensor(X):
        X = _tensor_batch(X)
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


__all__ = [
    "DEFAULT_SOURCE",
    "MISSING_CELL_HINT",
    "PIL_LIMIT",
    "ImageReadError",
    "ImageSource",
    "as_sources",
    "is_missing",
    "pil_to_rgb",
    "read_image",
    "tensor_image",
]
