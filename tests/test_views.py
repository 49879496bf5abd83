"""Views: colour options (incl. stain normalisation) and feature names with augmentation blocks."""

from __future__ import annotations

import numpy as np
import pytest
from test_stain import OTHER_STAINS, synthetic_he

from skdfl.stain import MacenkoNormalizer, ReinhardNormalizer
from skdfl.views import COLORS, View, apply_color, feature_names, resolve_views, to_gray


def test_stain_colours_are_view_colours_in_the_given_order():
    views = resolve_views(["x20", "x5"], None, ["rgb", "macenko", "reinhard", "gray"])
    assert views[:4] == [View("x20", c) for c in ("rgb", "macenko", "reinhard", "gray")]
    assert [v.name for v in views[4:]] == ["x5_rgb", "x5_macenko", "x5_reinhard", "x5_gray"]
    assert set(COLORS) == {"rgb", "gray", "macenko", "reinhard"}


def test_unknown_colour_lists_the_choices():
    with pytest.raises(ValueError, match="vahadane.*macenko"):
        resolve_views(["x20"], None, ["vahadane"])
    with pytest.raises(ValueError, match="unknown color"):
        apply_color(np.zeros((4, 4, 3), np.uint8), "vahadane")


def test_apply_color_uses_the_given_normaliser_or_the_published_default():
    img = synthetic_he(OTHER_STAINS, [1.3, 0.8], seed=11)
    reference = synthetic_he(seed=12, max_concentrations=[1.0, 0.5])
    np.testing.assert_array_equal(apply_color(img, "rgb"), img)
    np.testing.assert_array_equal(apply_color(img, "gray"), to_gray(img))
    np.testing.assert_array_equal(apply_color(img, "macenko"), MacenkoNormalizer().transform(img))
    np.testing.assert_array_equal(apply_color(img, "reinhard"), ReinhardNormalizer().transform(img))
    fitted = {"macenko": MacenkoNormalizer().fit(reference)}
    custom = apply_color(img, "macenko", fitted)
    np.testing.assert_array_equal(custom, fitted["macenko"].transform(img))
    assert not np.array_equal(custom, apply_color(img, "macenko"))


def test_feature_names_are_augmentation_major():
    views = [View("x20", "rgb"), View("x5", "gray")]
    assert list(feature_names(views, 2)) == ["x20_rgb_0", "x20_rgb_1", "x5_gray_0", "x5_gray_1"]
    names = list(feature_names(views, 2, ["identity", "rot90"]))
    assert names == [
        "identity_x20_rgb_0", "identity_x20_rgb_1", "identity_x5_gray_0", "identity_x5_gray_1",
        "rot90_x20_rgb_0", "rot90_x20_rgb_1", "rot90_x5_gray_0", "rot90_x5_gray_1",
    ]
