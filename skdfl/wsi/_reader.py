"""Whole-slide readers: one open handle per slide, thread and process; pyramid levels; resolution.

Backends
--------
``"tiffslide"`` (default)
    `tiffslide <https://github.com/Bayer-Group/tiffslide>`_ on tifffile + imagecodecs: pure PyPI wheels,
    reads SVS (JPEG and JPEG 2000), generic pyramidal TIFF, OME-TIFF, NDPI, ...
``"openslide"`` (optional)
    OpenSlide through ``openslide-python`` + ``openslide-bin`` (``pip install skdfl[openslide]``); adds
    MRXS, VMS, SCN, ... .

Resolution
----------
A resolution is asked for either as an objective *magnification* or as *mpp* (micrometres per pixel);
the two are tied by the usual scanner convention ``mpp = 10 / magnification`` (x40 = 0.25 um/px, x20 =
0.5 um/px, x5 = 2 um/px). A magnification request is located with the slide's recorded objective power
(falling back to ``10 / mpp``), an mpp request with its recorded pixel size (falling back to
``10 / objective``), so neither pays a rounding detour when the slide records what was asked. A slide
that records neither needs ``base_magnification=`` (or ``base_mpp=``), given by the caller.
"""

from __future__ import annotations

import math
import os
import threading
from collections import OrderedDict
from numbers import Real
from pathlib import Path

import numpy as np
from PIL import Image

from ..io import ImageReadError

BACKENDS = ("tiffslide", "openslide")

#: Colour of every pixel of a region that lies outside the slide: white, the glass of a bright-field
#: slide (and the padding colour of :mod:`skdfl.transforms`), so edge patches look like edge tissue.
PAD_COLOR = (255, 255, 255)

#: ``mpp * magnification`` of the usual scanner convention (x20 = 0.5 um/px).
MPP_TIMES_MAGNIFICATION = 10.0

#: A pyramid level counts as "not coarser than requested" when its downsample is at most this much
#: (relative) above the requested one: scanners record levels as 4.0003x or 2.0005x for 4x or 2x.
LEVEL_TOLERANCE = 0.01

INTERPOLATIONS = {
    "area": Image.Resampling.BOX,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "lanczos": Image.Resampling.LANCZOS,
}

# Handles cached per thread (tiffslide/OpenSlide handles are not safe to share between threads) and per
# process (a forked DataLoader worker must not reuse its parent's file offsets).
_MAX_OPEN_PER_THREAD = 32
_local = threading.local()


class SlideReadError(ImageReadError):
    """A slide could not be opened or read; the message names the file and the backend."""


class MissingResolutionError(ValueError):
    """The slide records neither magnification nor pixel size; the message names the slide and the fix."""


# ---------------------------------------------------------------------------------------------- backends
def _number(value) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) and number > 0 else None


def _as_rgb(arr: np.ndarray, pad_color) -> np.ndarray:
    if arr.dtype != np.uint8:
        raise ValueError(f"pixels are {arr.dtype}; only 8-bit bright-field slides are supported")
    if arr.ndim == 2:
        arr = arr[..., None]
    if arr.shape[-1] == 1:
        return np.repeat(arr, 3, axis=-1)
    if arr.shape[-1] == 4:  # OpenSlide: transparent where nothing was scanned -> the pad colour
        alpha = arr[..., 3:4].astype(np.float32) / 255.0
        background = np.asarray(pad_color, dtype=np.float32)
        return np.rint(arr[..., :3] * alpha + background * (1.0 - alpha)).astype(np.uint8)
    return arr[..., :3]


class _TiffSlideBackend:
    def __init__(self, path: str):
        import tiffslide

        self._slide = tiffslide.TiffSlide(path)
        props = self._slide.properties
        self.level_dimensions = tuple(tuple(map(int, d)) for d in self._slide.level_dimensions)
        self.level_downsamples = tuple(float(d) for d in self._slide.level_downsamples)
        self.mpp = _number(props.get("tiffslide.mpp-x"))
        self.objective_power = _number(props.get("tiffslide.objective-power"))

    def read(self, level: int, left: int, top: int, width: int, height: int) -> np.ndarray:
        # tiffslide takes level-0 coordinates and truncates them by the level's downsample: find the level-0
        # coordinate that lands exactly on the wanted level pixel.
        downsample = self.level_downsamples[level]
        x0, y0 = _level0_coordinate(left, downsample), _level0_coordinate(top, downsample)
        return np.asarray(self._slide.read_region((x0, y0), level, (width, height), as_array=True))

    def close(self) -> None:
        self._slide.close()


class _OpenSlideBackend:
    def __init__(self, path: str):
        try:
            import openslide
        except ImportError as exc:
            raise ImportError(
                "backend='openslide' needs OpenSlide: pip install openslide-python openslide-bin "
                "(or skdfl[openslide])"
            ) from exc
        self._slide = openslide.OpenSlide(path)
        props = self._slide.properties
        self.level_dimensions = tuple(tuple(map(int, d)) for d in self._slide.level_dimensions)
        self.level_downsamples = tuple(float(d) for d in self._slide.level_downsamples)
        self.mpp = _number(props.get("openslide.mpp-x"))
        self.objective_power = _number(props.get("openslide.objective-power"))

    def read(self, level: int, left: int, top: int, width: int, height: int) -> np.ndarray:
        downsample = self.level_downsamples[level]
        location = (round(left * downsample), round(top * downsample))
        return np.asarray(self._slide.read_region(location, level, (width, height)))

    def close(self) -> None:
        self._slide.close()


_BACKEND_CLASSES = {"tiffslide": _TiffSlideBackend, "openslide": _OpenSlideBackend}


def _level0_coordinate(level_coordinate: int, downsample: float) -> int:
    x = math.ceil(level_coordinate * downsample)
    while int(x / downsample) > level_coordinate:
        x -= 1
    while int(x / downsample) < level_coordinate:
        x += 1
    return x


def check_backend(backend: str) -> str:
    """Return ``backend`` if it names a known reader, else raise a ``ValueError`` listing them."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown slide backend {backend!r}; choose from {list(BACKENDS)}")
    return backend


def check_resolution(magnification=None, mpp=None, *, name: str = "") -> None:
    """Check that exactly one of ``magnification`` / ``mpp`` is a positive number."""
    prefix = f"{name}_" if name else ""
    given = {f"{prefix}magnification": magnification, f"{prefix}mpp": mpp}
    set_ = {k: v for k, v in given.items() if v is not None}
    if not name and len(set_) != 1:
        raise ValueError(f"give exactly one of magnification= or mpp=, got {set_ or 'neither'}")
    if name and len(set_) > 1:
        raise ValueError(f"give at most one of base_magnification= or base_mpp=, got {set_}")
    for key, value in set_.items():
        if isinstance(value, bool) or not isinstance(value, Real) or not math.isfinite(value) or value <= 0:
            raise ValueError(f"{key} must be a positive number, got {value!r}")


# ------------------------------------------------------------------------------------------------ slide
class Slide:
    """An open whole-slide image: pyramid levels, resolution, and windows read around a centre.

    Most code never builds one: :func:`open_slide` returns the handle cached for this thread and
    process, and :class:`~skdfl.wsi.Region` objects open slides that way on first read.

    Parameters
    ----------
    path : str or path-like
        The slide file (SVS, pyramidal TIFF, OME-TIFF, NDPI, ...; MRXS and others with OpenSlide).
    backend : {"tiffslide", "openslide"}, default="tiffslide"
        Reader library, see :mod:`skdfl.wsi`.

    Attributes
    ----------
    path : str
        The path as given.
    identity : str
        Absolute path, size and modification time of the file: what the embedding cache keys regions on.
    level_dimensions : tuple of (int, int)
        ``(width, height)`` of every pyramid level, level 0 (full resolution) first.
    level_downsamples : tuple of float
        Level-0 pixels per pixel of every level.
    mpp : float or None
        Recorded micrometres per level-0 pixel.
    objective_power : float or None
        Recorded objective magnification of level 0.
    """

    def __init__(self, path, *, backend: str = "tiffslide"):
        check_backend(backend)
        self.path = os.fspath(path)
        self.backend = backend
        absolute = os.path.abspath(self.path)
        try:
            stat = os.stat(absolute)
        except FileNotFoundError:
            raise SlideReadError(f"slide file not found: {self.path}") from None
        self.signature = (stat.st_size, stat.st_mtime_ns)
        self.identity = f"{absolute}|{stat.st_size}|{stat.st_mtime_ns}"
        try:
            self._reader = _BACKEND_CLASSES[backend](absolute)
        except ImportError:
            raise
        except Exception as exc:
            raise SlideReadError(f"cannot open slide {self.path} with {backend}: {exc}") from exc
        self.level_dimensions = self._reader.level_dimensions
        self.level_downsamples = self._reader.level_downsamples
        self.mpp = self._reader.mpp
        self.objective_power = self._reader.objective_power

    def __repr__(self) -> str:
        return f"Slide({self.path!r}, backend={self.backend!r})"

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        """Release the file handle."""
        self._reader.close()

    @property
    def dimensions(self) -> tuple[int, int]:
        """``(width, height)`` of level 0."""
        return self.level_dimensions[0]

    @property
    def level_count(self) -> int:
        return len(self.level_dimensions)

    # -------------------------------------------------------------------------------------- resolution
    def downsample_for(self, *, magnification=None, mpp=None, base_magnification=None, base_mpp=None) -> float:
        """Level-0 pixels per output pixel for a request at ``magnification`` or ``mpp``.

        ``base_magnification`` / ``base_mpp`` state the resolution of level 0 when the slide does not
        record it (or records it wrongly); they override the recorded values. See :mod:`skdfl.wsi`.

        Raises
        ------
        MissingResolutionError
            When neither the slide nor the caller says what resolution level 0 has.
        """
        check_resolution(magnification, mpp)
        check_resolution(base_magnification, base_mpp, name="base")
        if base_magnification is not None:
            base_mag, base_um = float(base_magnification), MPP_TIMES_MAGNIFICATION / base_magnification
        elif base_mpp is not None:
            base_mag, base_um = MPP_TIMES_MAGNIFICATION / base_mpp, float(base_mpp)
        else:
            base_mag, base_um = self.objective_power, self.mpp
            if base_mag is None and base_um is None:
                asked = f"magnification={magnification:g}" if magnification is not None else f"mpp={mpp:g}"
                raise MissingResolutionError(
                    f"slide {self.path} records neither its objective magnification nor its pixel size (MPP), "
                    f"so {asked} cannot be located on it; pass base_magnification= (the objective level 0 "
                    "was scanned at, e.g. base_magnification=40) or base_mpp= (micrometres per level-0 pixel, "
                    "e.g. base_mpp=0.25)"
                )
            if base_mag is None:
                base_mag = MPP_TIMES_MAGNIFICATION / base_um
            if base_um is None:
                base_um = MPP_TIMES_MAGNIFICATION / base_mag
        if magnification is not None:
            return base_mag / float(magnification)
        return float(mpp) / base_um

    def best_level(self, downsample: float) -> int:
        """The coarsest pyramid level that is not coarser than ``downsample`` (level 0 if none is finer).

        A level within :data:`LEVEL_TOLERANCE` of ``downsample`` counts as exact.
        """
        limit = downsample * (1.0 + LEVEL_TOLERANCE)
        candidates = [lv for lv, d in enumerate(self.level_downsamples) if d <= limit]
        return max(candidates, key=lambda lv: self.level_downsamples[lv]) if candidates else 0

    # ------------------------------------------------------------------------------------------ pixels
    def read_window(self, level: int, left: int, top: int, width: int, height: int, *, pad_color=PAD_COLOR):
        """``(height, width, 3)`` uint8 pixels of ``level`` from ``(left, top)`` in that level's pixels.

        The part outside the level is ``pad_color``; a window wholly outside is all ``pad_color``.
        """
        level_w, level_h = self.level_dimensions[level]
        x0, y0 = max(left, 0), max(top, 0)
        x1, y1 = min(left + width, level_w), min(top + height, level_h)
        inside = x1 > x0 and y1 > y0
        if inside and (x0, y0, x1, y1) == (left, top, left + width, top + height):
            return self._read(level, left, top, width, height, pad_color)
        out = np.empty((height, width, 3), dtype=np.uint8)
        out[...] = np.asarray(pad_color, dtype=np.uint8)
        if inside:
            out[y0 - top : y1 - top, x0 - left : x1 - left] = self._read(level, x0, y0, x1 - x0, y1 - y0, pad_color)
        return out

    def _read(self, level, left, top, width, height, pad_color) -> np.ndarray:
        try:
            arr = self._reader.read(level, left, top, width, height)
            return _as_rgb(arr, pad_color)
        except Exception as exc:
            raise SlideReadError(
                f"cannot read level {level} window ({left}, {top}, {width}x{height}) of slide {self.path} "
                f"with {self.backend}: {exc}"
            ) from exc

    def read_region(
        self, x, y, *, size, downsample: float, interpolation: str = "area", pad_color=PAD_COLOR
    ) -> np.ndarray:
        """``(height, width, 3)`` uint8 pixels centred on level-0 ``(x, y)``, ``downsample`` level-0 px each.

        Reads the window of the best level (:meth:`best_level`) that covers ``size * downsample`` level-0
        pixels and resamples it to ``size = (width, height)`` with ``interpolation`` (antialiased) when the
        level is not exactly at the requested resolution. Outside the slide: ``pad_color``.
        """
        width, height = size
        level = self.best_level(downsample)
        level_downsample = self.level_downsamples[level]
        read_w = max(1, round(width * downsample / level_downsample))
        read_h = max(1, round(height * downsample / level_downsample))
        left = math.floor(x / level_downsample - read_w / 2 + 0.5)
        top = math.floor(y / level_downsample - read_h / 2 + 0.5)
        window = self.read_window(level, left, top, read_w, read_h, pad_color=pad_color)
        if (read_w, read_h) == (width, height):
            return window
        return resample(window, (width, height), interpolation)

    def thumbnail(self, max_size: int = 1024) -> tuple[np.ndarray, float]:
        """A low-resolution RGB image of the whole slide and its level-0 pixels per thumbnail pixel.

        Read from the coarsest level at least ``max_size`` px on its longer side, then downsized
        (antialiased) so the longer side is ``max_size``.
        """
        width, height = self.dimensions
        downsample = max(1.0, max(width, height) / max_size)
        level = self.best_level(downsample)
        level_w, level_h = self.level_dimensions[level]
        image = self.read_window(level, 0, 0, level_w, level_h)
        target = (max(1, round(width / downsample)), max(1, round(height / downsample)))
        if target != (level_w, level_h):
            image = resample(image, target, "area")
        return image, width / image.shape[1]


def resample(image: np.ndarray, size: tuple[int, int], interpolation: str = "area") -> np.ndarray:
    """Resize an ``(h, w, 3)`` uint8 image to ``size = (width, height)``, antialiased when shrinking.

    ``"area"`` averages the source pixels each output pixel covers (an exact box filter; what pyramid
    levels are made with); ``"bilinear"``, ``"bicubic"``, ``"lanczos"`` are Pillow's filters.
    """
    if interpolation not in INTERPOLATIONS:
        raise ValueError(f"unknown interpolation {interpolation!r}; choose from {list(INTERPOLATIONS)}")
    h, w = image.shape[:2]
    pil = Image.fromarray(image)
    factor_x, factor_y = w / size[0], h / size[1]
    if interpolation == "area" and factor_x == factor_y and factor_x.is_integer() and factor_x > 1:
        return np.asarray(pil.reduce(int(factor_x)))  # the same box average, 2-3x faster
    return np.asarray(pil.resize(size, INTERPOLATIONS[interpolation]))


def open_slide(path, *, backend: str = "tiffslide") -> Slide:
    """The :class:`Slide` for ``path``, opened once per thread and process and reused.

    A forked process (DataLoader worker, Dask worker) opens its own handles; a file replaced on disk
    (new size or modification time) is reopened. At most 32 slides stay open per thread.
    """
    check_backend(backend)
    absolute = os.path.abspath(os.fspath(path))
    try:
        stat = os.stat(absolute)
    except FileNotFoundError:
        raise SlideReadError(f"slide file not found: {os.fspath(path)}") from None
    except OSError as exc:
        raise SlideReadError(f"cannot open slide {os.fspath(path)}: {exc}") from exc
    cache: OrderedDict | None = getattr(_local, "cache", None)
    if cache is None or getattr(_local, "pid", None) != os.getpid():
        cache = _local.cache = OrderedDict()  # a fork's inherited handles belong to the parent: leave them
        _local.pid = os.getpid()
    key = (absolute, backend)
    slide = cache.get(key)
    if slide is not None and slide.signature == (stat.st_size, stat.st_mtime_ns):
        cache.move_to_end(key)
        return slide
    if slide is not None:
        del cache[key]
        slide.close()
    slide = Slide(path, backend=backend)
    cache[key] = slide
    while len(cache) > _MAX_OPEN_PER_THREAD:
        _, oldest = cache.popitem(last=False)
        oldest.close()
    return slide


def slide_path(path) -> str:
    """``path`` as the ``str`` stored in ``slide`` columns; rejects what cannot name a file."""
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"a slide is named by a file path, got {type(path).__name__}: {path!r}")
    return os.fspath(Path(path)) if isinstance(path, os.PathLike) else path


__all__ = [
    "BACKENDS",
    "INTERPOLATIONS",
    "LEVEL_TOLERANCE",
    "MPP_TIMES_MAGNIFICATION",
    "PAD_COLOR",
    "MissingResolutionError",
    "Slide",
    "SlideReadError",
    "check_backend",
    "check_resolution",
    "open_slide",
    "resample",
    "slide_path",
]
