"""scikit-learn conventions of the pretrainers.

They learn from images only (``two_d_array=False``), so ``parametrize_with_checks`` would skip them whole;
the API-level common checks run here one by one, and the data-level ones as image versions below.
"""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch
from sklearn.base import clone
from sklearn.utils._param_validation import InvalidParameterError
from sklearn.utils.estimator_checks import (
    check_do_not_raise_errors_in_init_or_set_params,
    check_estimator_cloneable,
    check_estimator_repr,
    check_estimator_tags_renamed,
    check_get_params_invariance,
    check_no_attributes_set_in_init,
    check_parameters_default_constructible,
    check_set_params,
    check_valid_tag_types,
)

from skdfl.pretrain import MPCSPretrainer, SimCLRPretrainer

pytestmark = pytest.mark.usefixtures("one_torch_thread")

API_CHECKS = [
    check_no_attributes_set_in_init,
    check_parameters_default_constructible,
    check_get_params_invariance,
    check_set_params,
    check_estimator_cloneable,
    check_estimator_repr,
    check_estimator_tags_renamed,
    check_valid_tag_types,
    check_do_not_raise_errors_in_init_or_set_params,
]
TINY = dict(backbone="resnet10t", image_size=32, precision="fp32", device="cpu", verbose=0, batch_size=4)


@pytest.mark.parametrize("make", [SimCLRPretrainer, MPCSPretrainer], ids=lambda c: c.__name__)
@pytest.mark.parametrize("check", API_CHECKS, ids=lambda c: c.__name__)
def test_sklearn_api_checks(make, check):
    estimator = make()
    check(type(estimator).__name__, estimator)


@pytest.mark.parametrize(
    ("params", "name"),
    [
        ({"temperature": 0.0}, "temperature"),
        ({"batch_size": 1}, "batch_size"),
        ({"optimizer": "rmsprop"}, "optimizer"),
        ({"precision": "fp8"}, "precision"),
        ({"gray_probability": 1.5}, "gray_probability"),
        ({"max_epochs": 0}, "max_epochs"),
    ],
)
def test_invalid_parameters_are_refused_at_fit(params, name):
    with pytest.raises(InvalidParameterError, match=name):
        SimCLRPretrainer(**{**TINY, **params}).fit(np.zeros((4, 8, 8, 3), np.uint8))


def test_invalid_mpcs_parameters_are_refused_at_fit():
    with pytest.raises(InvalidParameterError, match="pair_strategy"):
        MPCSPretrainer(pair_strategy="diagonal").fit(None)
    with pytest.raises(InvalidParameterError, match="pair_table"):
        MPCSPretrainer(pair_table=[("40X", "100X")]).fit(None)


def test_bad_crop_scale_names_itself():
    with pytest.raises(ValueError, match="crop_scale"):
        SimCLRPretrainer(**TINY, crop_scale=(0.9, 0.1)).fit(np.zeros((4, 8, 8, 3), np.uint8))


@pytest.fixture(scope="module")
def images():
    return np.random.default_rng(0).integers(0, 256, (8, 40, 40, 3), dtype=np.uint8)


def test_fit_returns_self_is_idempotent_and_leaves_params_alone(images):
    backbone = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten())
    before = {k: v.clone() for k, v in backbone.state_dict().items()}
    pre = SimCLRPretrainer(**{**TINY, "backbone": backbone}, max_epochs=2)
    params = pre.get_params()
    assert pre.fit(images) is pre
    first = {k: v.clone() for k, v in pre.encoder_.state_dict().items()}
    pre.fit(images)
    assert all(torch.equal(first[k], v) for k, v in pre.encoder_.state_dict().items())
    assert pre.get_params() == params
    # the module passed as a parameter is copied, never trained in place
    assert all(torch.equal(before[k], v) for k, v in backbone.state_dict().items())
    assert not all(torch.equal(first[k], before[k]) for k in before)
    assert pre.embedding_dim_ == 4


def test_clone_refits_identically_and_pickles(images):
    pre = SimCLRPretrainer(**TINY, max_epochs=1).fit(images)
    twin = clone(pre).fit(images)
    np.testing.assert_array_equal(pre.loss_curve_, twin.loss_curve_)
    restored = pickle.loads(pickle.dumps(pre))
    x = torch.rand(2, 3, 32, 32)
    torch.testing.assert_close(restored.encoder_(x), pre.encoder_(x))
    assert restored.history_ == pre.history_


def test_random_state_changes_the_run(images):
    a = SimCLRPretrainer(**TINY, max_epochs=1, random_state=0).fit(images)
    b = SimCLRPretrainer(**TINY, max_epochs=1, random_state=1).fit(images)
    assert not np.array_equal(a.loss_curve_, b.loss_curve_)


@pytest.mark.parametrize(("optimizer", "lr"), [("adam", 1e-3), ("adamw", 1e-3), ("lars", 0.1), ("sgd", 0.1)])
def test_every_optimizer_trains_the_encoder(images, optimizer, lr):
    pre = SimCLRPretrainer(**TINY, max_epochs=1, optimizer=optimizer, lr=lr, lr_schedule="constant").fit(images)
    start = SimCLRPretrainer(**TINY, max_epochs=1, lr=1e-12).fit(images)
    assert np.isfinite(pre.loss_curve_).all()
    moved = [not torch.allclose(a, b) for a, b in zip(pre.encoder_.parameters(), start.encoder_.parameters(), strict=True)]
    assert np.mean(moved) > 0.8, f"{optimizer} moved {np.mean(moved):.0%} of the parameter tensors"
