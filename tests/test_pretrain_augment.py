"""Device-side augmentations of the pretrainers: per-sample draws, valid images, replayable draws."""

from __future__ import annotations

import pytest
import torch

from skdfl.pretrain import build_augmentation

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def batch_of_one_image(n=16, size=24):
    gen = torch.Generator().manual_seed(0)
    return torch.rand(1, 3, size, size, generator=gen).expand(n, -1, -1, -1).contiguous()


def test_each_image_of_a_batch_draws_its_own_augmentation():
    torch.manual_seed(0)
    out = build_augmentation(24)(batch_of_one_image())
    assert out.shape == (16, 3, 24, 24)
    assert out.min() >= 0 and out.max() <= 1
    distinct = {tuple(o.flatten()[:50].round(decimals=4).tolist()) for o in out}
    assert len(distinct) >= 12  # one image in, (almost) all different views out


def test_one_draw_can_be_replayed_on_another_batch():
    torch.manual_seed(0)
    augment = build_augmentation(24)
    x = batch_of_one_image(8)
    params = augment.forward_parameters(x.shape)
    torch.testing.assert_close(augment(x, params=params), augment(x.clone(), params=params))


def test_flip_rotate_only_permutes_pixels_and_disabled_policy_is_identity():
    torch.manual_seed(0)
    x = batch_of_one_image(8)
    geometric = build_augmentation(24, crop_scale=None, color_jitter=0, gray_probability=0, blur_probability=0)
    out = geometric(x)
    # flips and 90-degree rotations move pixels without changing their values
    torch.testing.assert_close(out.flatten(1).sort(dim=1).values, x.flatten(1).sort(dim=1).values)
    none = build_augmentation(24, crop_scale=None, flip_rotate=False, color_jitter=0, gray_probability=0,
                              blur_probability=0)  # fmt: skip
    torch.testing.assert_close(none(x), x)


def test_grayscale_always_gives_equal_channels():
    torch.manual_seed(0)
    gray = build_augmentation(24, crop_scale=None, flip_rotate=False, color_jitter=0, gray_probability=1.0,
                              blur_probability=0)(batch_of_one_image(4))  # fmt: skip
    torch.testing.assert_close(gray[:, 0], gray[:, 1])
    torch.testing.assert_close(gray[:, 1], gray[:, 2])
