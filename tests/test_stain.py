"""Stain normalisation (skdfl.stain): published references, self-mapping, determinism, background."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from skdfl.stain import (
    MACENKO_MAX_CONCENTRATIONS,
    MACENKO_STAIN_MATRIX,
    REINHARD_TARGET_MEANS,
    REINHARD_TARGET_STDS,
    MacenkoNormalizer,
    ReinhardNormalizer,
    hed_to_rgb,
    lab_to_rgb,
    rgb_to_hed,
    rgb_to_lab,
)

# Another plausible H&E stain matrix (unit columns): bluer hematoxylin, pinker eosin.
OTHER_STAINS = np.array([[0.68, 0.30], [0.66, 0.78], [0.32, 0.55]])
OTHER_STAINS = OTHER_STAINS / np.linalg.norm(OTHER_STAINS, axis=0)


def synthetic_he(stains=MACENKO_STAIN_MATRIX, max_concentrations=MACENKO_MAX_CONCENTRATIONS, size=64, seed=0):
    """An H&E-like tile mixed from ``stains``: pure hematoxylin, pure eosin and mixed pixels, with the
    99th-percentile concentrations set to ``max_concentrations`` (Beer-Lambert with Io=240)."""
    rng = np.random.default_rng(seed)
    n = size * size
    kind = rng.integers(0, 3, n)
    conc = np.stack([rng.gamma(2, 0.4, n) * (kind != 1), rng.gamma(2, 0.25, n) * (kind != 0)])
    conc *= (np.asarray(max_concentrations) / np.percentile(conc, 99, axis=1))[:, None]
    rgb = 240 * np.exp(-(stains @ conc)).T - 1
    return np.rint(np.clip(rgb, 0, 255)).astype(np.uint8).reshape(size, size, 3)


def test_published_reference_is_a_fixed_point_and_is_recovered():
    img = synthetic_he()
    normalizer = MacenkoNormalizer()
    stains, _, max_conc = normalizer.estimate(img)
    np.testing.assert_allclose(stains, MACENKO_STAIN_MATRIX, atol=0.02)
    np.testing.assert_allclose(max_conc, MACENKO_MAX_CONCENTRATIONS, rtol=0.03)
    out = normalizer.transform(img)
    diff = np.abs(out.astype(int) - img)
    assert diff.mean() < 1.0 and diff.max() <= 3


def test_macenko_reference_maps_to_itself():
    reference = synthetic_he(OTHER_STAINS, [1.2, 0.7], seed=1)
    normalizer = MacenkoNormalizer().fit(reference)
    np.testing.assert_allclose(normalizer.stain_matrix_, OTHER_STAINS, atol=0.02)
    diff = np.abs(normalizer.transform(reference).astype(int) - reference)
    assert diff.mean() < 0.5 and diff.max() <= 2


def test_macenko_restains_another_image_with_the_reference():
    reference = synthetic_he(seed=2)
    source = synthetic_he(OTHER_STAINS, [1.2, 0.7], seed=3)
    normalizer = MacenkoNormalizer().fit(reference)
    out = normalizer.transform(source)
    stains, _, max_conc = MacenkoNormalizer().estimate(out)
    np.testing.assert_allclose(stains, normalizer.stain_matrix_, atol=0.03)
    np.testing.assert_allclose(max_conc, normalizer.max_concentrations_, rtol=0.05)
    # Without normalisation the two images differ a lot; after, the colour statistics are close.
    assert np.abs(out.mean((0, 1)) - reference.mean((0, 1))).max() < 0.25 * np.abs(
        source.mean((0, 1)) - reference.mean((0, 1))
    ).max()


@pytest.mark.parametrize("normalizer", [MacenkoNormalizer, ReinhardNormalizer])
def test_deterministic_and_input_untouched(normalizer):
    img = synthetic_he(OTHER_STAINS, [1.5, 0.9], seed=4)
    copy = img.copy()
    first = normalizer().transform(img)
    second = normalizer().transform(img)
    np.testing.assert_array_equal(first, second)
    np.testing.assert_array_equal(img, copy)
    assert first.dtype == np.uint8 and first.shape == img.shape
    assert not np.array_equal(first, img)


@pytest.mark.parametrize("normalizer", [MacenkoNormalizer, ReinhardNormalizer])
@pytest.mark.parametrize("value", [255, 240, 128, 0])
def test_background_and_uniform_tiles_give_finite_images_without_warnings(normalizer, value):
    img = np.full((16, 16, 3), value, dtype=np.uint8)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = normalizer().transform(img)
    assert out.dtype == np.uint8 and out.shape == img.shape
    if normalizer is MacenkoNormalizer and value >= 240:
        np.testing.assert_array_equal(out, img)  # no tissue: left unchanged


def test_macenko_with_little_tissue_is_left_unchanged_and_cannot_be_a_reference():
    img = np.full((32, 32, 3), 250, dtype=np.uint8)
    img[:2, :2] = synthetic_he(size=2)
    np.testing.assert_array_equal(MacenkoNormalizer().transform(img), img)
    with pytest.raises(ValueError, match="too little tissue"):
        MacenkoNormalizer().fit(img)


def test_reinhard_reference_maps_to_itself():
    reference = synthetic_he(OTHER_STAINS, [1.2, 0.7], seed=5)
    out = ReinhardNormalizer().fit(reference).transform(reference)
    assert np.abs(out.astype(int) - reference).max() <= 1


@pytest.mark.parametrize("fitted", [False, True])
def test_reinhard_output_has_the_target_statistics(fitted):
    source = synthetic_he(OTHER_STAINS, [1.0, 0.6], seed=6)
    normalizer = ReinhardNormalizer()
    if fitted:
        normalizer.fit(synthetic_he(seed=7))
    else:
        np.testing.assert_array_equal(normalizer.means_, REINHARD_TARGET_MEANS)
        np.testing.assert_array_equal(normalizer.stds_, REINHARD_TARGET_STDS)
    means, stds = ReinhardNormalizer.statistics(normalizer.transform(source))
    before_means, before_stds = ReinhardNormalizer.statistics(source)
    np.testing.assert_allclose(means, normalizer.means_, atol=0.01)
    np.testing.assert_allclose(stds, normalizer.stds_, rtol=0.05, atol=0.002)
    assert np.abs(before_means - normalizer.means_).max() > 0.05  # it had something to do


def test_colour_space_round_trips():
    img = np.random.default_rng(8).integers(1, 256, (20, 20, 3), dtype=np.uint8)
    assert np.abs(lab_to_rgb(rgb_to_lab(img)).astype(int) - img).max() <= 1
    assert np.abs(hed_to_rgb(rgb_to_hed(img)).astype(int) - img).max() <= 1


def test_fingerprint_identifies_the_reference():
    a, b = synthetic_he(seed=9), synthetic_he(OTHER_STAINS, [1.2, 0.7], seed=10)
    for cls in (MacenkoNormalizer, ReinhardNormalizer):
        assert cls().fingerprint() == cls().fingerprint()
        assert cls().fit(a).fingerprint() == cls().fit(a.copy()).fingerprint()
        assert cls().fit(a).fingerprint() != cls().fit(b).fingerprint()
        assert cls().fit(b).fingerprint() != cls().fingerprint()


@pytest.mark.parametrize("bad", [np.zeros((8, 8)), np.zeros((8, 8, 4), np.uint8), np.zeros((8, 8, 3), np.float32)])
@pytest.mark.parametrize("normalizer", [MacenkoNormalizer, ReinhardNormalizer])
def test_bad_images_are_refused_with_their_shape_or_dtype(bad, normalizer):
    with pytest.raises(ValueError, match=r"\(H, W, 3\)|uint8"):
        normalizer().transform(bad)
