"""Reading one cell of ``X``: high bit depths, pixel limits, PIL images and tensors, missing cells."""

from __future__ import annotations

import warnings

import imagecodecs
import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image
from torch import nn

from skdfl import BackboneEmbedder
from skdfl.io import ImageReadError, as_sources, read_image


class TinyNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, stride=2)
        self.pool = nn.AdaptiveAvgPool2d(1)

    def forward(self, x):
        return self.pool(torch.relu(self.conv(x))).flatten(1)


def _embedder(**kw):
    torch.manual_seed(0)
    params = dict(image_size=16, precision="fp32", device="cpu", verbose=0, batch_size=4)
    return BackboneEmbedder(TinyNet(), **{**params, **kw})


@pytest.fixture(scope="module")
def images():
    return np.random.default_rng(0).integers(0, 256, (3, 16, 16, 3), dtype=np.uint8)


# ------------------------------------------------------------------------------- high bit depth (15)
def test_16bit_grayscale_png_is_scaled_to_8_bits_not_white(tmp_path):
    expected = np.tile(np.arange(256, dtype=np.uint8), (4, 1))  # a horizontal 0..255 ramp
    path = tmp_path / "gray16.png"
    path.write_bytes(imagecodecs.png_encode(expected.astype(np.uint16) * 257))  # 0..65535
    with Image.open(path) as im:
        assert im.mode == "I;16"  # what Pillow makes of it, and what convert("RGB") clipped to white
    img = read_image(path)
    assert img.shape == (4, 256, 3) and img.dtype == np.uint8
    np.testing.assert_array_equal(img, np.repeat(expected[..., None], 3, axis=-1))
    # Values between the 8-bit levels round to the nearest one.
    odd = tmp_path / "odd.png"
    odd.write_bytes(imagecodecs.png_encode(np.array([[0, 128, 385, 65535]], np.uint16)))
    np.testing.assert_array_equal(read_image(odd)[0, :, 0], [0, 0, 1, 255])
    # The same holds for a PIL image handed over in memory.
    with Image.open(path) as im:
        np.testing.assert_array_equal(read_image(im), img)


def test_16bit_rgb_png_reads_as_its_8bit_version(tmp_path):
    rgb16 = np.random.default_rng(0).integers(0, 65536, (8, 8, 3), dtype=np.uint16)
    path = tmp_path / "rgb16.png"
    path.write_bytes(imagecodecs.png_encode(rgb16))
    img = read_image(path)
    assert img.dtype == np.uint8
    assert np.abs(img.astype(float) - rgb16 / 257.0).max() <= 1.0


def test_16bit_png_embeds_like_its_8bit_copy(tmp_path):
    gray8 = np.random.default_rng(1).integers(0, 256, (16, 16), dtype=np.uint8)
    p16, p8 = tmp_path / "a16.png", tmp_path / "a8.png"
    p16.write_bytes(imagecodecs.png_encode(gray8.astype(np.uint16) * 257))
    Image.fromarray(gray8).save(p8)
    white = tmp_path / "white.png"
    Image.fromarray(np.full((16, 16), 255, np.uint8)).save(white)
    emb = _embedder().fit([str(p8)])
    Z = emb.transform([str(p16), str(p8), str(white)])
    np.testing.assert_allclose(Z[0], Z[1], rtol=1e-6, atol=1e-6)
    assert not np.allclose(Z[0], Z[2])


# ------------------------------------------------------------------------------------ pixel limit (19)
def test_pixel_limit_is_a_parameter_and_the_error_names_the_file(tmp_path, monkeypatch):
    path = tmp_path / "big.png"
    Image.fromarray(np.zeros((200, 300, 3), np.uint8)).save(path)  # 60000 pixels
    with pytest.raises(ImageReadError, match=r"big\.png.*60000.*max_pixels=50000"):
        read_image(path, max_pixels=50_000)
    assert read_image(path, max_pixels=60_000).shape == (200, 300, 3)
    # Default: Pillow's own limit (here made small), now with the file named instead of a bare
    # DecompressionBombError.
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 10_000)
    with pytest.raises(ImageReadError, match=r"big\.png.*max_pixels"):
        read_image(path)
    # None lifts it for a trusted file, without a DecompressionBombWarning and without touching
    # Pillow's setting for anyone else.
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert read_image(path, max_pixels=None).shape == (200, 300, 3)
        assert read_image(path, max_pixels=100_000).shape == (200, 300, 3)
    assert Image.MAX_IMAGE_PIXELS == 10_000


def test_embedder_passes_max_image_pixels_through(tmp_path):
    small, big = tmp_path / "small.png", tmp_path / "big.png"
    Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(small)
    Image.fromarray(np.zeros((100, 100, 3), np.uint8)).save(big)
    emb = _embedder(max_image_pixels=5_000).fit([str(small)])
    assert emb.transform([str(small)]).shape == (1, 4)
    with pytest.raises(ImageReadError, match=r"big\.png"):
        emb.transform([str(small), str(big)])
    assert emb.set_params(max_image_pixels=None).transform([str(big)]).shape == (1, 4)


# --------------------------------------------------------------------------- PIL images, tensors (13)
def test_pil_images_and_tensors_are_cells(images):
    img = images[0]
    np.testing.assert_array_equal(read_image(Image.fromarray(img)), img)
    np.testing.assert_array_equal(read_image(Image.fromarray(img).convert("L")), np.repeat(
        np.asarray(Image.fromarray(img).convert("L"))[..., None], 3, axis=-1))
    # torchvision's layout: (3, H, W) float in [0, 1] (ToTensor) or uint8 (decode_image).
    chw_float = torch.from_numpy(img).permute(2, 0, 1).float() / 255.0
    np.testing.assert_array_equal(read_image(chw_float), img)
    np.testing.assert_array_equal(read_image(torch.from_numpy(img).permute(2, 0, 1)), img)
    # numpy's layout: (H, W, 3) uint8.
    np.testing.assert_array_equal(read_image(torch.from_numpy(img)), img)
    np.testing.assert_array_equal(read_image(chw_float.to(torch.bfloat16)).shape, img.shape)
    with pytest.raises(ImageReadError, match=r"cell 4.*\(3, H, W\)"):
        read_image(torch.zeros(2, 3, 8, 8), "cell 4")
    with pytest.raises(ImageReadError, match=r"cell 5.*\[0, 1\]"):
        read_image(chw_float * 255.0, "cell 5")


def test_embedder_accepts_pil_and_tensor_cells_and_tensor_batches(images):
    emb = _embedder().fit(images)
    expected = emb.transform(images)
    nchw = torch.from_numpy(images).permute(0, 3, 1, 2)
    inputs = {
        "PIL images": [Image.fromarray(im) for im in images],
        "HWC uint8 tensors": [torch.from_numpy(im) for im in images],
        "CHW float tensors": [torch.from_numpy(im).permute(2, 0, 1) / 255.0 for im in images],
        "(n, H, W, 3) uint8 batch": torch.from_numpy(images),
        "(n, 3, H, W) float batch": nchw.float() / 255.0,
        "(n, 3, H, W) uint8 batch": nchw,
        "DataFrame of PIL images": pd.DataFrame({"image": [Image.fromarray(im) for im in images]}),
    }
    for name, X in inputs.items():
        np.testing.assert_allclose(emb.transform(X), expected, rtol=1e-5, atol=1e-6, err_msg=name)
    with pytest.raises(ValueError, match=r"tensor of shape \(3, 16, 16\)"):
        as_sources(torch.from_numpy(images[0]).permute(2, 0, 1))


def test_pil_and_tensor_cells_share_cache_entries_with_arrays(images, tmp_path):
    emb = _embedder(cache=tmp_path).fit(images)
    expected = emb.transform(images)
    tensors = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255.0
    np.testing.assert_allclose(emb.transform([Image.fromarray(im) for im in images]), expected, rtol=1e-6)
    np.testing.assert_allclose(emb.transform(tensors), expected, rtol=1e-6)
    assert len(list(tmp_path.rglob("*.emb"))) == len(images)


# ------------------------------------------------------------------------------------ missing cells (21)
@pytest.mark.parametrize("missing", [None, np.nan])
@pytest.mark.parametrize("cached", [False, True])
def test_missing_cell_names_sample_and_column(images, tmp_path, missing, cached):
    frame = pd.DataFrame({"x20": list(images), "x5": [images[0], missing, images[2]]})
    emb = _embedder(cache=tmp_path if cached else None).fit(frame.iloc[[0]])
    with pytest.raises(ImageReadError, match=r"sample 1, source 'x5': the cell is missing") as info:
        emb.transform(frame)
    assert "cache" not in str(info.value) and "float" not in str(info.value)
