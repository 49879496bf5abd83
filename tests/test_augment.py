"""Image-space augmentations (skdfl.augment) and the embedder's augmentation bank / stain colours."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from sklearn.base import clone
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GridSearchCV
from sklearn.pipeline import make_pipeline

from skdfl import BackboneEmbedder
from skdfl.augment import (
    DIHEDRAL,
    augment,
    average_blocks,
    bank_blocks,
    check_augmentations,
    dihedral,
    resolve_augmentations,
    scale_jitter,
)
from skdfl.embedder import ViewDataset

pytestmark = pytest.mark.usefixtures("one_torch_thread")

SIZE = 32


def images(n=4, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (n, SIZE, SIZE, 3), dtype=np.uint8)


def embedder(**params):
    return BackboneEmbedder(
        "resnet18",
        pretrained=False,
        image_size=SIZE,
        resize="none",
        verbose=0,
        num_workers=0,
        precision="fp32",
        **params,
    )


class ForwardCounter:
    """Counts the images a backbone embeds (a forward hook on the shared module)."""

    def __init__(self, module):
        self.images = 0
        self.handle = module.register_forward_hook(self)

    def __call__(self, module, args, output):
        self.images += args[0].shape[0]


# ------------------------------------------------------------------ functions
def test_resolve_augmentations():
    assert resolve_augmentations(None) == ["identity"]
    assert resolve_augmentations("dihedral") == list(DIHEDRAL)
    assert resolve_augmentations(["random", "rot90", "identity", "random", "hed_jitter"]) == [
        "identity",
        "random",
        "rot90",
        "random2",
        "hed_jitter",
    ]
    with pytest.raises(ValueError, match="'rot90' is given twice"):
        resolve_augmentations(["dihedral", "rot90"])
    with pytest.raises(ValueError, match=r"unknown augmentations \['blur'\]"):
        resolve_augmentations(["blur"])


def test_dihedral_elements_are_the_eight_distinct_symmetries_of_the_square():
    img = images(1)[0]
    out = {name: dihedral(img, name) for name in DIHEDRAL}
    assert len({a.tobytes() for a in out.values()}) == 8
    np.testing.assert_array_equal(out["rot90"], np.rot90(img))
    np.testing.assert_array_equal(out["flip_h"], img[:, ::-1])
    np.testing.assert_array_equal(out["transverse"], np.rot90(img, 2).transpose(1, 0, 2))
    for a in out.values():  # each is a permutation of the pixels
        np.testing.assert_array_equal(np.sort(a.reshape(-1, 3), axis=0), np.sort(img.reshape(-1, 3), axis=0))


def test_random_augmentations_are_reproducible_and_depend_on_seed_label_and_image():
    img, other = images(2)
    for label in ("hed_jitter", "scale_jitter", "random"):
        a = augment(img, label, random_state=0)
        assert a.shape == img.shape and a.dtype == np.uint8
        np.testing.assert_array_equal(a, augment(img.copy(), label, random_state=0))
        assert not np.array_equal(a, img)
        assert not np.array_equal(a, augment(img, label, random_state=1))
        assert not np.array_equal(a, augment(img, label + "2", random_state=0))
    # the draw depends on the image: the same jitter on two images would make them differ identically
    shift_a = augment(img, "hed_jitter").astype(int) - img
    shift_b = augment(other, "hed_jitter").astype(int) - other
    assert not np.array_equal(shift_a, shift_b)


def test_scale_jitter_zooms_about_the_centre_and_keeps_the_size():
    yy, xx = np.mgrid[:SIZE, :SIZE]
    disc = (((yy - 15.5) ** 2 + (xx - 15.5) ** 2) < 8**2)[..., None].repeat(3, -1).astype(np.uint8) * 255
    areas = set()
    for seed in range(6):
        out = scale_jitter(disc, np.random.default_rng(seed))
        assert out.shape == disc.shape
        areas.add(int((out[..., 0] > 127).sum()))
    reference = int((disc[..., 0] > 127).sum())
    assert len(areas) > 1 and all(0.75 * reference < a < 1.3 * reference for a in areas)
    flat = np.full((SIZE, SIZE, 3), 77, np.uint8)
    np.testing.assert_array_equal(scale_jitter(flat, np.random.default_rng(0)), flat)


def test_quarter_turns_need_a_square_input():
    check_augmentations(["identity", "flip_h", "flip_v", "rot180", "hed_jitter"], (32, 48))
    with pytest.raises(ValueError, match=r"rot90.*square.*32x48"):
        check_augmentations(["identity", "rot90"], (32, 48))


def test_bank_blocks_and_average_blocks_layout():
    X = np.arange(2 * 3 * 4, dtype=float).reshape(2, 12)  # n=2, K=3 blocks of D=4
    bank = bank_blocks(X, 3)
    assert bank.shape == (2, 3, 4)
    np.testing.assert_array_equal(bank[:, 1], X[:, 4:8])
    np.testing.assert_array_equal(average_blocks(X, 3), (X[:, :4] + X[:, 4:8] + X[:, 8:]) / 3)
    np.testing.assert_array_equal(average_blocks(X, 3, blocks=[0, 2]), (X[:, :4] + X[:, 8:]) / 2)
    with pytest.raises(ValueError, match="5 augmentation blocks"):
        bank_blocks(X, 5)


# ------------------------------------------------------------------ embedder
def test_bank_layout_is_augmentation_major_and_block_k_embeds_augmentation_k():
    X = images(3)
    colors = ["rgb", "gray"]
    bank = embedder(colors=colors, augmentations="dihedral").fit(X)
    Z = bank.transform(X)
    plain = embedder(colors=colors).fit(X)
    D = 2 * plain.embedding_dim_
    assert bank.n_augmentations_ == 8 and bank.augmentations_ == list(DIHEDRAL)
    assert Z.shape == (3, 8 * D)
    names = bank.get_feature_names_out()
    assert len(names) == Z.shape[1]
    assert names[0] == "identity_image_rgb_0" and names[D + plain.embedding_dim_] == "rot90_image_gray_0"
    for k, name in enumerate(DIHEDRAL):
        turned = np.stack([dihedral(img, name) for img in X])
        np.testing.assert_allclose(Z[:, k * D : (k + 1) * D], plain.transform(turned), rtol=1e-5, atol=1e-5)
    # augmentation blocks are not copies of block 0 on a generic image
    assert not np.allclose(Z[:, :D], Z[:, D : 2 * D], atol=1e-3)


def test_dihedral_tta_of_a_rotation_invariant_image_is_the_plain_embedding():
    yy, xx = np.mgrid[:SIZE, :SIZE]
    radius = np.hypot(yy - (SIZE - 1) / 2, xx - (SIZE - 1) / 2)
    img = np.stack([128 + 100 * np.cos(radius / 2), 128 + 90 * np.sin(radius / 3), 255 - 7 * radius], -1)
    X = np.rint(np.clip(img, 0, 255)).astype(np.uint8)[None]
    bank = embedder(augmentations="dihedral").fit(X)
    Z = bank.transform(X)
    blocks = bank_blocks(Z, bank.n_augmentations_)
    for k in range(8):
        np.testing.assert_allclose(blocks[:, k], blocks[:, 0], rtol=1e-5, atol=1e-6)
    plain = embedder().fit(X).transform(X)
    np.testing.assert_allclose(average_blocks(Z, 8), plain, rtol=1e-5, atol=1e-6)


def _write_pngs(folder, X):
    paths = []
    for i, img in enumerate(X):
        path = folder / f"img{i}.png"
        Image.fromarray(img).save(path)
        paths.append(str(path))
    return pd.DataFrame({"x20": paths})


def test_second_grid_search_embeds_nothing_and_reads_no_pixels(tmp_path, monkeypatch):
    X = _write_pngs(tmp_path, images(8, seed=3))
    y = np.array([0, 1] * 4)
    cache = tmp_path / "cache"
    pipe = make_pipeline(
        embedder(augmentations=["dihedral", "random"], cache=cache), LogisticRegression(max_iter=200)
    )
    search = GridSearchCV(pipe, {"logisticregression__C": [0.1, 1.0]}, cv=2)
    first = search.fit(X, y)
    counter = ForwardCounter(first.best_estimator_[0].module_)  # shared by every clone of this embedder
    try:

        def no_pixels(self, k):
            raise AssertionError("an image was read although every embedding is cached")

        monkeypatch.setattr(ViewDataset, "__getitem__", no_pixels)
        second = GridSearchCV(clone(pipe), {"logisticregression__C": [0.1, 1.0]}, cv=2).fit(X, y)
        Z = second.best_estimator_[0].transform(X)
    finally:
        counter.handle.remove()
    assert counter.images == 0
    assert Z.shape[1] == 9 * second.best_estimator_[0].embedding_dim_
    np.testing.assert_allclose(second.cv_results_["mean_test_score"], first.cv_results_["mean_test_score"])


def test_cache_keys_each_augmentation_and_stain_reference(tmp_path):
    X = images(4, seed=5)
    reference_a = images(1, seed=6)[0]
    reference_b = (reference_a // 2).astype(np.uint8)
    cache = tmp_path / "cache"
    uncached = embedder(
        augmentations=["flip_h", "hed_jitter"], colors=["rgb", "reinhard"], stain_reference=reference_a
    ).fit(X)
    expected = uncached.transform(X)
    first = embedder(
        augmentations=["flip_h", "hed_jitter"],
        colors=["rgb", "reinhard"],
        stain_reference=reference_a,
        cache=cache,
    ).fit(X)
    np.testing.assert_allclose(first.transform(X), expected, rtol=1e-5, atol=1e-5)

    counter = ForwardCounter(first.module_)
    try:
        # one more augmentation: only its 2 colours x 4 images are embedded
        more = embedder(
            augmentations=["flip_h", "hed_jitter", "rot180"],
            colors=["rgb", "reinhard"],
            stain_reference=reference_a,
            cache=cache,
        ).fit(X)
        Z = more.transform(X)
        assert counter.images == 2 * 4
        np.testing.assert_allclose(Z[:, : expected.shape[1]], expected, rtol=1e-5, atol=1e-5)
        # another stain reference: only the reinhard views (4 blocks x 4 images) are recomputed
        counter.images = 0
        other = embedder(
            augmentations=["flip_h", "hed_jitter", "rot180"],
            colors=["rgb", "reinhard"],
            stain_reference=reference_b,
            cache=cache,
        ).fit(X)
        W = other.transform(X)
        assert counter.images == 4 * 4
    finally:
        counter.handle.remove()
    dim = more.embedding_dim_
    rgb = np.concatenate([np.arange(k * 2 * dim, (k * 2 + 1) * dim) for k in range(4)])
    np.testing.assert_array_equal(W[:, rgb], Z[:, rgb])
    assert not np.allclose(W[:, dim : 2 * dim], Z[:, dim : 2 * dim], atol=1e-3)


def test_stain_reference_is_fitted_and_clone_safe(tmp_path):
    X = images(2, seed=7)
    reference = images(1, seed=8)[0]
    path = tmp_path / "ref.png"
    Image.fromarray(reference).save(path)
    from_array = embedder(colors=["macenko", "reinhard"], stain_reference=reference).fit(X)
    from_file = clone(embedder(colors=["macenko", "reinhard"], stain_reference=str(path))).fit(X)
    assert set(from_array.stain_normalizers_) == {"macenko", "reinhard"}
    for color in ("macenko", "reinhard"):
        assert (
            from_array.stain_normalizers_[color].fingerprint()
            == from_file.stain_normalizers_[color].fingerprint()
        )
    np.testing.assert_allclose(from_array.transform(X), from_file.transform(X), rtol=1e-5, atol=1e-5)
    assert embedder().fit(X).stain_normalizers_ == {}


def test_non_square_input_with_quarter_turns_is_refused_at_fit():
    X = images(1)
    with pytest.raises(ValueError, match="square"):
        BackboneEmbedder(
            "resnet18", pretrained=False, image_size=(32, 48), verbose=0, augmentations="dihedral"
        ).fit(X)


@pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")
def test_pipeline_embeds_a_dihedral_bank_that_the_head_trains_on_and_averages():
    from sklearn.preprocessing import StandardScaler

    from skdfl.heads import FocalHeadClassifier

    X = images(12, seed=7)
    y = np.array([0, 1] * 6)
    pipe = make_pipeline(
        embedder(augmentations="dihedral"),
        StandardScaler(),
        FocalHeadClassifier(bank_size=8, max_epochs=3, random_state=0),
    ).fit(X, y)
    head = pipe[-1]
    d = pipe[0].embedding_dim_
    assert head.n_features_in_ == 8 * d and head.net_.module_.output.in_features == d
    Z = pipe[:-1].transform(X)
    plain = head.predict_proba(Z)
    # Block 0 is the plain image: the same prediction from the plain embedder's output, tiled.
    np.testing.assert_array_equal(plain, head.predict_proba(np.tile(Z[:, :d], 8)))
    head.set_params(test_time_augmentation=True)
    averaged = head.predict_proba(Z)
    np.testing.assert_allclose(
        averaged,
        head.set_params(test_time_augmentation=False).predict_proba(np.tile(average_blocks(Z, 8), 8)),
        atol=1e-12,
    )
