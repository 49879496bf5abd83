"""Fast decoding of image files: the fastest well-kept decoder per format, with Pillow as the fallback.

Measured on the real images of ``../shared/data`` (``benchmarks/bench_extraction.py`` prints the table):

* **PNG**: ``imagecodecs.png_decode`` (libpng + zlib-ng) is ~2x faster than Pillow on the 700x460 BreakHis
  PNGs and ~1.5x on the 50x50 IDC patches, and gives *the same pixels* (lossless). OpenCV's ``imdecode``
  was measured too and sat between the two, so it is not a dependency. Only 8-bit grey / grey+alpha / RGB /
  RGBA PNGs take this path; palette and 16-bit PNGs go to Pillow (and to ``read_image``'s rules for them).
* **JPEG**: ``simplejpeg`` (libjpeg-turbo) decodes ~1.5x faster than Pillow with identical pixels at full
  size and, when the image is going to be shrunk at least 2x, decodes it directly at 1/2, 1/4 or 1/8
  scale (libjpeg's DCT scaling, as Pillow's ``Image.draft``): the 8x8 blocks are inverse-transformed at
  the smaller size, which skips most of the decode *and* most of the resize. The pixels then differ
  slightly from "full decode + resize" (tolerance in ``tests/test_decode.py``).
* **TIFF**: ``imagecodecs.tiff_decode`` (libtiff) with the same pixels as Pillow, for 8-bit unsigned grey /
  grey+alpha / RGB / RGBA images with interleaved samples, uncompressed, LZW, Deflate or PackBits (what tile
  datasets such as NCT-CRC-HE-100K ship: uncompressed 224x224 RGB). Measured on the CRC tiles saved as TIFF
  (``benchmarks/bench_extraction.py --sets crc_tiff``). The first IFD's tags are read from the file (a few small
  reads) before anything is decoded; other TIFFs (16-bit, palette, YCbCr, JPEG-compressed, planar, BigTIFF,
  ...) go to Pillow.
* **Everything else** (BMP, WebP, CMYK JPEGs, ...): ``None``, i.e. Pillow.

JPEGs can also be decoded **on the device** (``BackboneEmbedder(decode="device")``): :func:`read_jpeg_file`
reads the raw bytes and checks the header in the loader, :func:`decode_jpegs` decodes a whole batch with
nvJPEG on CUDA (``torchvision.io.decode_jpeg(device="cuda")``; libjpeg-turbo on a CPU device).
"""

from __future__ import annotations

import functools
import os
import struct
import warnings
from collections.abc import Callable

import numpy as np
import torch
from PIL import Image

# torchvision 0.29 deprecates its decoders for TorchCodec, whose CUDA builds are not on PyPI and which needs
# torch >= 2.11; torchvision's nvJPEG path is the one that installs everywhere today. Filtered once, here, and
# not with catch_warnings() around each call: decode_jpegs runs in a background thread (the embedder's
# prefetching), and catch_warnings swaps the process-wide filter list, racing with other threads' warnings.
warnings.filterwarnings(
    "ignore", message="The image decoding and encoding capabilities of TorchVision", category=DeprecationWarning
)

_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
_JPEG_MAGIC = b"\xff\xd8\xff"
# IHDR colour types decoded natively to 8-bit samples: grey, RGB, grey+alpha, RGBA (not 3, palette).
_PNG_DIRECT_COLOR_TYPES = {0, 2, 4, 6}
# Classic TIFF headers (BigTIFF, b"II+\x00", is left to Pillow).
_TIFF_MAGICS = (b"II*\x00", b"MM\x00*")
# TIFF compressions decoded by libtiff with Pillow's pixels: none, LZW, Adobe Deflate, Deflate, PackBits.
_TIFF_DIRECT_COMPRESSIONS = {1, 5, 8, 32946, 32773}
# Photometric interpretation -> samples per pixel decoded directly: grey (MinIsBlack) 1-2, RGB 3-4.
_TIFF_DIRECT_SAMPLES = {1: (1, 2), 2: (3, 4)}
# The tags read: width, length, bits per sample, compression, photometric, samples per pixel, planar
# configuration, extra samples, sample format.
_TIFF_TAGS = {256: "width", 257: "height", 258: "bits", 259: "compression", 262: "photometric",
              277: "samples", 284: "planar", 338: "extra_samples", 339: "sample_format"}  # fmt: skip
# ExtraSamples values decoded directly: unspecified and unassociated alpha. Associated (premultiplied) alpha,
# 1, is un-premultiplied by Pillow's conversion: left to it.
_TIFF_DIRECT_EXTRA_SAMPLES = {0, 2}
# TIFF field types of those tags: SHORT (2 bytes) and LONG (4 bytes).
_TIFF_TYPE_SIZES = {3: 2, 4: 4}

try:  # both are dependencies; the guard keeps a broken wheel from breaking every read
    import imagecodecs
except ImportError:  # pragma: no cover
    imagecodecs = None
try:
    import simplejpeg
except ImportError:  # pragma: no cover
    simplejpeg = None

#: ``(height, width) -> (min_height, min_width)``: the smallest decoded size the caller's resize needs.
ShrinkRequest = Callable[[int, int], tuple[int, int]]


def decode_image_file(
    path,
    *,
    shrink_to: ShrinkRequest | None = None,
    interpolation: str = "bicubic",
    max_pixels: int | None | str = "pil",
) -> np.ndarray | None:
    """Decode an image file to ``(H, W, 3)`` uint8 RGB with the fast decoders, or ``None`` for Pillow.

    Parameters
    ----------
    path : str or path-like
        The image file. Read errors (a missing file) propagate as :class:`OSError`.
    shrink_to : callable, default=None
        ``(height, width) -> (min_height, min_width)``: the size the image will be resized to. A JPEG that
        is going to shrink at least 2x on both sides is then decoded at the smallest DCT scale (1/2, 1/4, 1/8)
        that still covers that size, then resized to exactly that size (so that the caller's geometry,
        run next, places it where a full-size decode would have been placed); the pixels differ slightly
        from a full decode + resize. ``None`` decodes at full size (same pixels as Pillow).
    interpolation : str, default="bicubic"
        Pillow filter name of that final resize (the backbone's ``data_config["interpolation"]``).
    max_pixels : int, None or "pil", default="pil"
        Images with more pixels are left to Pillow (``None`` is returned), whose decompression-bomb
        check then warns or refuses as configured. ``"pil"``: ``PIL.Image.MAX_IMAGE_PIXELS`` at call
        time; ``None``: no limit.

    Returns
    -------
    ndarray or None
        The RGB pixels; ``None`` when the format or mode has no fast path here, or the fast decoder
        rejected the data (corrupt or unusual files get Pillow's error messages).
    """
    if max_pixels == "pil":
        max_pixels = Image.MAX_IMAGE_PIXELS
    with open(path, "rb") as f:
        head = f.read(32)
        if head[:4] in _TIFF_MAGICS:
            if not _tiff_direct(f, head, max_pixels):
                return None
            f.seek(0)
            return _decode_lossless(imagecodecs.tiff_decode, f.read())
        # Other formats, and PNGs the header already rules out, cost one small read, not the whole file.
        if not (head.startswith(_JPEG_MAGIC) or (head.startswith(_PNG_MAGIC) and _png_direct(head, max_pixels))):
            return None
        data = head + f.read()
    if data.startswith(_PNG_MAGIC):
        return _decode_lossless(imagecodecs.png_decode, data)
    if data.startswith(_JPEG_MAGIC):
        return _decode_jpeg(data, shrink_to, interpolation, max_pixels)
    return None


def _too_big(height: int, width: int, max_pixels: int | None) -> bool:
    return max_pixels is not None and height * width > max_pixels


def _png_direct(head: bytes, max_pixels: int | None) -> bool:
    """Whether the PNG whose first bytes are ``head`` decodes to 8-bit samples Pillow would not alter."""
    if imagecodecs is None or len(head) < 26 or head[12:16] != b"IHDR":
        return False
    width, height, bit_depth, color_type = struct.unpack(">IIBB", head[16:26])
    return bit_depth == 8 and color_type in _PNG_DIRECT_COLOR_TYPES and not _too_big(height, width, max_pixels)


def _tiff_direct(f, head: bytes, max_pixels: int | None) -> bool:
    """Whether the TIFF open as ``f`` (first bytes ``head``) decodes with libtiff to Pillow's pixels.

    Reads the first IFD's entries (Pillow and libtiff both read that image); any tag outside the cases listed
    in the module docstring, or a file too short to hold what its header promises, leaves it to Pillow.
    """
    if imagecodecs is None or len(head) < 8 or not _codec_available("TIFF"):
        return False
    order = "<" if head[:2] == b"II" else ">"
    (ifd,) = struct.unpack(order + "I", head[4:8])
    f.seek(ifd)
    raw = f.read(2)
    if len(raw) < 2:
        return False
    (count,) = struct.unpack(order + "H", raw)
    entries = f.read(12 * count)
    if len(entries) < 12 * count:
        return False
    tags: dict[str, list[int]] = {}
    for k in range(count):
        tag, kind, n, value = struct.unpack(order + "HHI4s", entries[12 * k : 12 * k + 12])
        if tag not in _TIFF_TAGS:
            continue
        size = _TIFF_TYPE_SIZES.get(kind)
        if size is None or n == 0:
            return False
        if size * n > 4:  # the values live elsewhere in the file, at the offset the entry holds
            f.seek(struct.unpack(order + "I", value)[0])
            value = f.read(size * n)
            if len(value) < size * n:
                return False
        code = "H" if size == 2 else "I"
        tags[_TIFF_TAGS[tag]] = list(struct.unpack(f"{order}{n}{code}", value[: size * n]))
    photometric = tags.get("photometric", [-1])[0]
    samples = tags.get("samples", [1])[0]
    allowed = _TIFF_DIRECT_SAMPLES.get(photometric, ())
    extra = tags.get("extra_samples", [])
    return (
        "width" in tags
        and "height" in tags
        and samples in allowed
        # An alpha (or unspecified extra) sample is declared, and not premultiplied.
        and len(extra) == samples - allowed[0]
        and all(e in _TIFF_DIRECT_EXTRA_SAMPLES for e in extra)
        and all(bits == 8 for bits in tags.get("bits", [1]))
        and tags.get("compression", [1])[0] in _TIFF_DIRECT_COMPRESSIONS
        and tags.get("planar", [1])[0] == 1
        and all(fmt == 1 for fmt in tags.get("sample_format", [1]))
        and not _too_big(tags["height"][0], tags["width"][0], max_pixels)
    )


@functools.cache
def _codec_available(name: str) -> bool:
    """Whether this imagecodecs build has codec ``name`` (a wheel cut down to PNG does not have TIFF)."""
    try:
        return bool(getattr(imagecodecs, name).available)
    except Exception:  # the codec's extension module missing from this build
        return False


def _decode_lossless(decode: Callable[[bytes], np.ndarray], data: bytes) -> np.ndarray | None:
    """``data`` decoded by the imagecodecs function ``decode`` as RGB; None when it rejects the data."""
    try:
        img = decode(data)
    except Exception:  # imagecodecs.PngError, TiffError and friends: let Pillow decide and word the error
        return None
    return _as_rgb(img)


def _as_rgb(img: np.ndarray) -> np.ndarray | None:
    """Decoded 8-bit grey / grey+alpha / RGB / RGBA samples as Pillow's ``convert("RGB")`` gives them."""
    if img.dtype != np.uint8 or img.ndim not in (2, 3):
        return None
    if img.ndim == 2:
        img = img[..., None]
    if img.shape[-1] in (1, 2):  # grey (+ alpha): Pillow's convert("RGB") replicates the grey channel
        return np.repeat(img[..., :1], 3, axis=-1)
    if img.shape[-1] == 4:  # Pillow's convert("RGB") drops alpha without compositing
        return np.ascontiguousarray(img[..., :3])
    return img if img.shape[-1] == 3 else None


def _decode_jpeg(
    data: bytes, shrink_to: ShrinkRequest | None, interpolation: str, max_pixels: int | None
) -> np.ndarray | None:
    if simplejpeg is None:
        return None
    try:
        height, width, colorspace, _ = simplejpeg.decode_jpeg_header(data)
    except ValueError:
        return None
    if colorspace not in ("Gray", "YCbCr", "RGB") or _too_big(height, width, max_pixels):
        return None  # CMYK / YCCK: Pillow's conversion is the reference
    need_h, need_w = shrink_to(height, width) if shrink_to is not None else (height, width)
    # Only the power-of-two scales 1/2, 1/4, 1/8 (Pillow's draft): libjpeg's 3/8, 5/8, ... scales were
    # measured 5x further from "full decode + resize" (mean 2.6 vs 0.5 grey levels on BreakHis), and
    # 5/8..7/8 decode slower than full size.
    divisor = next((d for d in (8, 4, 2) if -(-height // d) >= need_h and -(-width // d) >= need_w), 1)
    scaled = divisor > 1
    try:
        img = simplejpeg.decode_jpeg(
            data,
            colorspace="RGB",
            min_height=-(-height // divisor) if scaled else 0,
            min_width=-(-width // divisor) if scaled else 0,
        )
    except ValueError:
        return None
    if scaled and img.shape[:2] != (need_h, need_w):
        resample = Image.Resampling[interpolation.upper()] if interpolation.upper() in Image.Resampling.__members__ \
            else Image.Resampling.BICUBIC
        img = np.asarray(Image.fromarray(img).resize((need_w, need_h), resample))
    return img


def read_jpeg_file(path, *, max_pixels: int | None | str = "pil") -> torch.Tensor | None:
    """The bytes of a JPEG file :func:`decode_jpegs` can decode, as a 1-D uint8 tensor, or ``None``.

    ``None`` for anything else, left to the CPU decoders and their error messages: another format, a header
    libjpeg-turbo rejects, CMYK/YCCK colour (Pillow's conversion is the reference), or more pixels than
    ``max_pixels`` (``"pil"``: ``PIL.Image.MAX_IMAGE_PIXELS`` at call time; ``None``: no limit), so that
    the decompression-bomb check runs where it always does. Read errors propagate as :class:`OSError`.
    """
    if simplejpeg is None:  # pragma: no cover
        return None
    if max_pixels == "pil":
        max_pixels = Image.MAX_IMAGE_PIXELS
    with open(path, "rb") as f:
        if f.read(3) != _JPEG_MAGIC:
            return None
        # Read once, straight into the writable buffer the tensor will share (no intermediate bytes copy).
        data = bytearray(os.fstat(f.fileno()).st_size)
        f.seek(0)
        del data[f.readinto(data) :]  # in place: a file that shrank since fstat keeps what was read
    try:
        height, width, colorspace, _ = simplejpeg.decode_jpeg_header(data)
    except ValueError:
        return None
    if colorspace not in ("Gray", "YCbCr", "RGB") or _too_big(height, width, max_pixels):
        return None
    return torch.frombuffer(data, dtype=torch.uint8)


def device_jpeg_decoder_available(device: torch.device) -> bool:
    """Whether :func:`decode_jpegs` can decode on ``device`` (torchvision's image ops; nvJPEG on CUDA)."""
    if device.type not in ("cpu", "cuda"):
        return False
    try:
        from torchvision.io import decode_jpeg  # noqa: F401
    except ImportError:  # pragma: no cover
        return False
    return device.type == "cpu" or torch.cuda.is_available()


def decode_jpegs(data: list[torch.Tensor], device: torch.device) -> list[torch.Tensor]:
    """Decode 1-D uint8 JPEG byte tensors (on the CPU) to RGB uint8 ``(3, h, w)`` tensors on ``device``.

    On CUDA the whole list goes to nvJPEG in one batched call. Raises ``RuntimeError`` when a stream is
    rejected; the caller then decodes that batch on the CPU.
    """
    from torchvision.io import ImageReadMode, decode_jpeg

    return list(decode_jpeg(data, mode=ImageReadMode.RGB, device=device))


def shrink_request(
    size: tuple[int, int], policy: str, *, scale: float | None = None, crop_pct: float = 1.0
) -> ShrinkRequest | None:
    """The :data:`ShrinkRequest` of :func:`skdfl.transforms.fit_geometry` for ``policy``, or ``None``.

    It is the size ``fit_geometry`` resizes an ``h x w`` image to. Only ``"stretch"`` and ``"pad"``
    without a fixed ``scale`` shrink at decode time: their resize is relative to the image, so a
    smaller decode resized to that size is placed exactly where the full one would be. ``"none"``, a
    fixed pad ``scale`` (an absolute factor) and ``"crop"`` (timm's transform, whose rounding is its
    own) decode at full size. The result pickles (DataLoader workers under
    the ``spawn`` start method, macOS and Windows).
    """
    height, width = size
    if policy == "stretch":
        return functools.partial(_stretch_size, height, width)
    if policy == "pad" and scale is None:
        return functools.partial(_pad_size, height, width)
    return None


def _stretch_size(height: int, width: int, h: int, w: int) -> tuple[int, int]:
    return height, width


def _pad_size(height: int, width: int, h: int, w: int) -> tuple[int, int]:
    factor = min(height / h, width / w)
    return max(1, round(h * factor)), max(1, round(w * factor))


__all__ = [
    "ShrinkRequest",
    "decode_image_file",
    "decode_jpegs",
    "device_jpeg_decoder_available",
    "read_jpeg_file",
    "shrink_request",
]
