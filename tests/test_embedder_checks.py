"""scikit-learn's common-check properties, re-done on images for BackboneEmbedder.

``tests/test_common.py`` runs sklearn's own checks; those that feed tabular 2-D data cannot apply to an
image transformer and point here, where the same property is asserted with real image inputs.
"""

from __future__ import annotations

import pickle

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from sklearn.base import clone
from sklearn.exceptions import NotFittedError
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from skdfl import BackboneEmbedder


def make():
    return BackboneEmbedder("resnet18", pretrained=False, image_size=16, precision="fp32", verbose=0)


@pytest.fixture(scope="module")
def images():
    return np.random.default_rng(1).integers(0, 256, size=(9, 20, 20, 3), dtype=np.uint8)


def test_fit_returns_self(images):
    est = make()
    assert est.fit(images) is est


def test_fit_accepts_and_ignores_y(images):
    a = make().fit(images, y=np.arange(9)).transform(images)
    np.testing.assert_array_equal(a, make().fit(images).transform(images))


def test_transform_before_fit_raises_not_fitted(images):
    with pytest.raises(NotFittedError):
        make().transform(images)
    with pytest.raises(NotFittedError):
        make().get_feature_names_out()


def test_fit_does_not_change_public_attributes(images):
    est = make()
    before = {k: v for k, v in vars(est).items() if not k.endswith("_")}
    params = clone(est).get_params()
    est.fit(images)
    after = {k: v for k, v in vars(est).items() if not k.endswith("_") and not k.startswith("_")}
    assert after == {k: v for k, v in before.items() if not k.startswith("_")}
    assert est.get_params() == params
    assert all(k.endswith("_") or k.startswith("_") or k in params for k in vars(est))


def test_transform_leaves_estimator_dict_unchanged(images):
    est = make().fit(images)
    state = {k: v for k, v in vars(est).items() if k != "module_"}
    weights = {k: v.clone() for k, v in est.module_.state_dict().items()}
    est.transform(images)
    assert {k: v for k, v in vars(est).items() if k != "module_"}.keys() == state.keys()
    assert all(np.all(state[k] == vars(est)[k]) for k in state if not isinstance(state[k], dict))
    assert all((v == est.module_.state_dict()[k]).all() for k, v in weights.items())


def test_fit_is_idempotent(images):
    est = make()
    first = est.fit(images).transform(images)
    np.testing.assert_array_equal(first, est.fit(images).transform(images))


def test_fit_transform_equals_fit_then_transform(images):
    np.testing.assert_array_equal(make().fit_transform(images), make().fit(images).transform(images))


def test_sample_order_and_subset_invariance(images):
    est = make().set_params(batch_size=4).fit(images)
    full = est.transform(images)
    order = np.random.default_rng(0).permutation(9)
    np.testing.assert_allclose(est.transform(images[order]), full[order], rtol=1e-5, atol=1e-6)
    for batch in np.array_split(np.arange(9), 3):
        np.testing.assert_allclose(est.transform(images[batch]), full[batch], rtol=1e-5, atol=1e-6)


def test_image_dtypes(images):
    est = make().fit(images)
    ref = est.transform(images)
    for dtype in (np.float32, np.float64):
        np.testing.assert_allclose(est.transform(images.astype(dtype) / 255), ref, atol=1e-5)
    assert ref.dtype == np.float32
    with pytest.raises(ValueError, match="int64"):
        est.transform(images.astype(np.int64))


def test_fortran_ordered_images(images):
    est = make().fit(images)
    np.testing.assert_array_equal(est.transform(np.asfortranarray(images)), est.transform(images))


def test_pickle_round_trip_including_readonly_memmap_input(images, tmp_path):
    est = make().fit(images)
    loaded = pickle.loads(pickle.dumps(est))
    path = tmp_path / "images.npy"
    np.save(path, images)
    readonly = np.load(path, mmap_mode="r")
    np.testing.assert_array_equal(loaded.transform(readonly), est.transform(images))


def test_object_arrays_of_paths_and_images(images, tmp_path):
    est = make().fit(images)
    paths = []
    for i, im in enumerate(images):
        paths.append(str(tmp_path / f"{i}.png"))
        Image.fromarray(im).save(paths[-1])
    ref = est.transform(images)
    np.testing.assert_array_equal(est.transform(np.asarray(paths, dtype=object)), ref)
    np.testing.assert_array_equal(est.transform(np.asarray(paths)), ref)
    as_objects = np.empty(9, dtype=object)
    as_objects[:] = list(images)
    np.testing.assert_array_equal(est.transform(as_objects), ref)
    np.testing.assert_array_equal(est.transform(list(images)), ref)


def test_single_sample_and_single_source(images):
    est = make().fit(images[:1])
    assert est.transform(images[:1]).shape == (1, 512)
    frame = pd.DataFrame({"x20": list(images)})
    assert make().fit(frame).transform(frame).shape == (9, 512)


def test_n_features_in_counts_sources(images):
    frame = pd.DataFrame({"x20": list(images), "x5": list(images)})
    est = make().fit(frame)
    assert est.n_features_in_ == 2 and list(est.feature_names_in_) == ["x20", "x5"]
    assert not hasattr(make().fit(images), "n_features_in_")


def test_pipeline_consistency(images):
    pipe = make_pipeline(make(), StandardScaler()).fit(images)
    np.testing.assert_array_equal(pipe.transform(images), pipe.transform(images))
    np.testing.assert_allclose(pipe.transform(images), pipe.fit_transform(images), atol=1e-4)
