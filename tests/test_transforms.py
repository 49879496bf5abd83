"""Geometry policies: scale-then-pad, stretch, crop, none."""

import numpy as np
import pytest
import timm
import torch
from PIL import Image
from timm.data import create_transform, resolve_data_config

from skdfl.transforms import fit_geometry

# The glass background of an H&E slide, asserted literally (not through the module's constant).
WHITE = (255, 255, 255)


def solid(h, w, value=10):
    return np.full((h, w, 3), value, np.uint8)


def test_pad_fits_small_square_crop_without_border():
    out = fit_geometry(solid(50, 50), (224, 224), "pad", interpolation="nearest")
    assert out.shape == (224, 224, 3)
    assert np.all(out == 10), "a square crop scaled to fit fills the input exactly"


def test_pad_with_fixed_scale_centres_the_crop_in_white():
    out = fit_geometry(solid(50, 50), (224, 224), "pad", interpolation="nearest", scale=2.0)
    content = np.argwhere(out[..., 0] == 10)
    assert content.min(0).tolist() == [62, 62] and content.max(0).tolist() == [161, 161]
    assert tuple(out[0, 0]) == WHITE and tuple(out[-1, -1]) == WHITE
    assert (out[..., 0] == 10).sum() == 100 * 100
    assert np.all(out[(out != 10).any(-1)] == WHITE), "everything but the image is white"


def test_pad_keeps_aspect_ratio_of_wide_images():
    out = fit_geometry(solid(460, 700), (224, 224), "pad", interpolation="nearest")
    rows = np.where((out[..., 0] == 10).any(1))[0]
    assert out.shape == (224, 224, 3)
    assert abs(len(rows) - round(460 * 224 / 700)) <= 1
    assert np.all(out[0] == WHITE) and np.all(out[-1] == WHITE)


def test_pad_with_overflowing_scale_crops_the_centre():
    img = np.zeros((100, 100, 3), np.uint8)
    img[40:60, 40:60] = 200
    out = fit_geometry(img, (40, 40), "pad", interpolation="nearest", scale=1.0)
    assert out.shape == (40, 40, 3)
    assert np.all(out[10:30, 10:30] == 200) and out[0, 0, 0] == 0


def test_stretch_distorts_to_exact_size():
    out = fit_geometry(solid(20, 80), (32, 32), "stretch")
    assert out.shape == (32, 32, 3) and np.all(out == 10)


def test_crop_resizes_shorter_side_then_centre_crops():
    img = np.zeros((100, 200, 3), np.uint8)
    img[:, :50] = 255  # left quarter is cut off by a centre crop
    out = fit_geometry(img, (50, 50), "crop", interpolation="nearest", crop_pct=1.0)
    assert out.shape == (50, 50, 3) and np.all(out == 0)


def test_none_requires_exact_size():
    assert fit_geometry(solid(32, 32), (32, 32), "none").shape == (32, 32, 3)
    with pytest.raises(ValueError, match=r"img 7 has size 20x32.*32x32"):
        fit_geometry(solid(20, 32), (32, 32), "none", where="img 7")


def test_unknown_policy():
    with pytest.raises(ValueError, match="unknown resize policy"):
        fit_geometry(solid(8, 8), (8, 8), "squash")


@pytest.mark.parametrize("model_name", ["resnet18", "vit_tiny_patch16_224"])
def test_crop_is_timms_eval_transform(model_name):
    """A 700x460 BreakHis-sized image: same size and pixels as timm's own eval transform.

    Tolerance: 0.01 grey level, the float rounding of undoing timm's normalisation (x * std + mean) * 255;
    the old re-implementation differed by one pixel column (390 vs 389 wide before the crop) and up to
    28 levels.
    """
    img = np.random.default_rng(0).integers(0, 256, (460, 700, 3), dtype=np.uint8)
    config = resolve_data_config({}, model=timm.create_model(model_name, pretrained=False))
    reference = create_transform(**config)(Image.fromarray(img))
    mean = torch.tensor(config["mean"]).view(3, 1, 1)
    std = torch.tensor(config["std"]).view(3, 1, 1)
    reference = ((reference * std + mean) * 255.0).permute(1, 2, 0).numpy()
    out = fit_geometry(
        img, config["input_size"][1:], "crop", interpolation=config["interpolation"], crop_pct=config["crop_pct"]
    )
    assert out.shape == reference.shape == (224, 224, 3) and out.dtype == np.uint8
    np.testing.assert_allclose(out, reference, rtol=0, atol=0.01)
