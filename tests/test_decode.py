"""The fast decoders (skdfl._decode) against the Pillow path they replace.

Tolerances: PNG is lossless, so the fast path must give *exactly* Pillow's pixels. A JPEG decoded at full
size must too (same libjpeg-turbo IDCT, identical here; 1 grey level allowed for other builds). A JPEG
shrunk at decode time (DCT scaling, only when the geometry shrinks it >= 2x) then brought to the backbone
input: mean absolute difference <= 2.5 grey levels and PSNR >= 33 dB against full decode + resize.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from skdfl._decode import decode_image_file, shrink_request
from skdfl._device import resolve_device, resolve_num_workers, resolve_precision
from skdfl.io import ImageReadError, read_image
from skdfl.transforms import fit_geometry

DATA = Path(os.environ.get("SKDFL_DATA_DIR", Path(__file__).resolve().parents[2] / "shared" / "data"))
needs_data = pytest.mark.skipif(not DATA.is_dir(), reason=f"real data folder {DATA} is absent")


def _pil_rgb(path) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))


def _texture(h=96, w=140, seed=0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w]
    base = np.stack([np.sin(x / 5.0), np.cos(y / 7.0), np.sin((x + y) / 11.0)], -1) * 90 + 128
    return np.clip(base + rng.normal(0, 12, (h, w, 3)), 0, 255).astype(np.uint8)


@pytest.mark.parametrize("mode", ["RGB", "RGBA", "L", "LA"])
def test_png_fast_path_gives_pillows_pixels(tmp_path, mode):
    path = tmp_path / f"x_{mode}.png"
    Image.fromarray(_texture()).convert(mode).save(path)
    fast = decode_image_file(path)
    assert fast is not None, f"8-bit {mode} PNGs take the fast path"
    assert fast.dtype == np.uint8 and fast.shape == (96, 140, 3)
    np.testing.assert_array_equal(fast, _pil_rgb(path))


@pytest.mark.parametrize("mode", ["P", "I;16"])
def test_png_modes_without_a_fast_path_are_left_to_pillow(tmp_path, mode):
    path = tmp_path / "x.png"
    img = Image.fromarray(_texture()).convert("L")
    (img.convert("P") if mode == "P" else Image.fromarray(np.asarray(img).astype(np.uint16) * 257)).save(path)
    assert decode_image_file(path) is None
    assert read_image(path).shape == (96, 140, 3)  # read_image still reads it, through Pillow


def test_other_formats_corrupt_and_oversized_files_fall_back(tmp_path):
    bmp = tmp_path / "x.bmp"
    Image.fromarray(_texture()).save(bmp)
    assert decode_image_file(bmp) is None
    png = tmp_path / "x.png"
    Image.fromarray(_texture()).save(png)
    assert decode_image_file(png, max_pixels=96 * 140 - 1) is None
    assert decode_image_file(png, max_pixels=96 * 140) is not None
    broken = tmp_path / "broken.png"
    broken.write_bytes(png.read_bytes()[:200])
    assert decode_image_file(broken) is None
    with pytest.raises(ImageReadError, match="broken.png"):
        read_image(broken)
    with pytest.raises(OSError):
        decode_image_file(tmp_path / "missing.png")
    with pytest.raises(ImageReadError, match="not found"):
        read_image(tmp_path / "missing.png")


@pytest.mark.parametrize("mode", ["RGB", "RGBA", "L", "LA"])
@pytest.mark.parametrize("compression", [None, "tiff_lzw", "tiff_adobe_deflate", "packbits"])
def test_tiff_fast_path_gives_pillows_pixels(tmp_path, mode, compression):
    path = tmp_path / f"x_{mode}_{compression}.tif"
    Image.fromarray(_texture()).convert(mode).save(path, compression=compression)
    fast = decode_image_file(path)
    assert fast is not None, f"8-bit {mode} TIFFs ({compression}) take the fast path"
    assert fast.dtype == np.uint8 and fast.shape == (96, 140, 3)
    np.testing.assert_array_equal(fast, _pil_rgb(path))


@pytest.mark.parametrize(
    "options",
    [
        {"byteorder": ">"},  # big-endian ("MM")
        {"tile": (32, 32)},  # tiled
        {"predictor": True, "compression": "zlib"},  # horizontal differencing
        {"rowsperstrip": 7},  # many strips: the offsets are stored away from the IFD
    ],
    ids=["big-endian", "tiled", "predictor", "strips"],
)
def test_tiff_layouts_written_by_tifffile_give_pillows_pixels(tmp_path, options):
    tifffile = pytest.importorskip("tifffile")
    path = tmp_path / "x.tif"
    tifffile.imwrite(path, _texture(), photometric="rgb", **options)
    fast = decode_image_file(path)
    assert fast is not None
    np.testing.assert_array_equal(fast, _pil_rgb(path))


@pytest.mark.parametrize("case", ["16-bit", "palette", "planar", "premultiplied alpha", "jpeg", "oversized"])
def test_tiffs_without_a_fast_path_are_left_to_pillow(tmp_path, case):
    tifffile = pytest.importorskip("tifffile")
    path = tmp_path / "x.tif"
    rgb = _texture()
    if case == "16-bit":
        Image.fromarray(rgb[..., 0].astype(np.uint16) * 257).save(path)
    elif case == "palette":
        Image.fromarray(rgb).convert("P").save(path)
    elif case == "planar":
        tifffile.imwrite(path, np.moveaxis(rgb, -1, 0), photometric="rgb", planarconfig="separate")
    elif case == "premultiplied alpha":
        alpha = np.full(rgb.shape[:2] + (1,), 128, np.uint8)
        tifffile.imwrite(path, np.concatenate([rgb, alpha], -1), photometric="rgb", extrasamples=["assocalpha"])
    elif case == "jpeg":
        Image.fromarray(rgb).save(path, compression="jpeg")
    else:
        Image.fromarray(rgb).save(path)
    limit = 96 * 140 - 1 if case == "oversized" else "pil"
    assert decode_image_file(path, max_pixels=limit) is None
    if case != "oversized":
        assert read_image(path).shape == (96, 140, 3)  # read_image still reads it, through Pillow


def test_an_imagecodecs_build_without_tiff_leaves_tiffs_to_pillow(tmp_path, monkeypatch):
    # The GPU benchmark kit ships imagecodecs cut down to PNG: TIFFs must still read, through Pillow.
    import skdfl._decode as decode_module

    path = tmp_path / "x.tif"
    Image.fromarray(_texture()).save(path)
    monkeypatch.setattr(decode_module, "_codec_available", lambda name: name != "TIFF")
    assert decode_image_file(path) is None
    np.testing.assert_array_equal(read_image(path), _pil_rgb(path))


@pytest.mark.filterwarnings("ignore:Corrupt EXIF data")  # Pillow's, reading the broken files
def test_truncated_or_corrupt_tiffs_get_pillows_error(tmp_path):
    path = tmp_path / "x.tif"
    Image.fromarray(_texture()).save(path, compression="tiff_lzw")
    data = path.read_bytes()
    broken_files = {"cut.tif": data[:6], "noifd.tif": data[:8] + b"\xff" * 4, "half.tif": data[: len(data) // 2]}
    for name, broken in broken_files.items():
        (tmp_path / name).write_bytes(broken)
        assert decode_image_file(tmp_path / name) is None
        with pytest.raises(ImageReadError, match=name):
            read_image(tmp_path / name)


def test_jpeg_full_size_decode_matches_pillow(tmp_path):
    path = tmp_path / "x.jpg"
    Image.fromarray(_texture(460, 700)).save(path, quality=90)
    fast = decode_image_file(path)
    assert fast.shape == (460, 700, 3)
    assert np.abs(fast.astype(int) - _pil_rgb(path)).max() <= 1


def _jpeg_geometry_error(path, policy, size=(224, 224)) -> tuple[float, float]:
    full = fit_geometry(_pil_rgb(path), size, policy)
    fast = fit_geometry(decode_image_file(path, shrink_to=shrink_request(size, policy)), size, policy)
    assert fast.shape == full.shape
    diff = full.astype(float) - fast
    return float(np.abs(diff).mean()), float(10 * np.log10(255**2 / max((diff**2).mean(), 1e-12)))


@pytest.mark.parametrize("policy", ["pad", "stretch"])
def test_jpeg_dct_scaled_decode_is_within_tolerance(tmp_path, policy):
    path = tmp_path / "x.jpg"
    Image.fromarray(_texture(460, 700)).save(path, quality=90)
    request = shrink_request((224, 224), policy)
    with open(path, "rb") as f:
        import simplejpeg

        full_h, full_w = simplejpeg.decode_jpeg_header(f.read())[:2]
    need = request(full_h, full_w)
    assert decode_image_file(path, shrink_to=request).shape[:2] == need  # exactly what the geometry wants
    mae, psnr = _jpeg_geometry_error(path, policy)
    assert mae <= 2.5 and psnr >= 33, (mae, psnr)


def test_no_decode_time_shrink_for_absolute_geometry():
    assert shrink_request((224, 224), "none") is None
    assert shrink_request((224, 224), "pad", scale=2.0) is None
    assert shrink_request((224, 224), "crop") is None
    assert shrink_request((224, 224), "pad")(460, 700) == (147, 224)


@pytest.mark.data
@needs_data
def test_real_pngs_decode_exactly_like_pillow():
    paths = []
    for folder, k in (("breast_idc_patches", 10), ("breakhis_samples", 4), ("crc_val_he_7k_mini", 4)):
        paths += sorted((DATA / folder).rglob("*.png"))[:k]
    assert len(paths) == 18
    for path in paths:
        fast = decode_image_file(path)
        assert fast is not None, path
        np.testing.assert_array_equal(fast, _pil_rgb(path), err_msg=str(path))


@pytest.mark.data
@needs_data
@pytest.mark.parametrize("policy", ["pad", "stretch"])
def test_real_breakhis_jpegs_within_tolerance(tmp_path, policy):
    for k, png in enumerate(sorted((DATA / "breakhis_samples").rglob("*.png"))[:4]):
        path = tmp_path / f"{k}.jpg"
        Image.open(png).convert("RGB").save(path, quality=90)
        mae, psnr = _jpeg_geometry_error(path, policy)
        assert mae <= 2.5 and psnr >= 33, (png, mae, psnr)


# ------------------------------------------------------------------ worker / device resolution rules
@pytest.mark.parametrize(
    ("cores", "device", "n_batches", "expected"),
    [
        (2, "cpu", None, 0),  # this machine: decoding in a worker only takes a core from the forward pass
        (1, "cpu", None, 0),
        (8, "cpu", None, 1),
        (32, "cpu", None, 4),
        (16, "cuda", None, 15),  # a GPU box: every core but the one driving the device decodes
        (16, "cuda", 3, 3),  # never more workers than batches
        (10, "mps", None, 9),
        (1, "cuda", None, 0),
    ],
)
def test_num_workers_auto_rule(monkeypatch, cores, device, n_batches, expected):
    import skdfl._device as device_module

    monkeypatch.setattr(device_module, "available_cpus", lambda: cores)
    assert resolve_num_workers("auto", torch.device(device), n_batches) == expected
    assert resolve_num_workers(5, torch.device(device), n_batches) == 5  # an explicit int is kept


def test_auto_device_and_precision_with_mocked_accelerators(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert resolve_device("auto").type == "cuda"
    assert resolve_precision("auto", torch.device("cuda")) == torch.float16
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: True)
    assert resolve_device("auto").type == "mps"
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    assert resolve_device("auto").type == "cpu"
