"""The head's estimator API beyond fit/predict: sample weights, groups, decision_function, partial_fit.

Issue 11.8 (``sample_weight`` through metadata routing, ``decision_function``, ``partial_fit``) and 11.21
(early stopping on too little data names ``early_stopping`` / ``validation_fraction``).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from numpy.testing import assert_allclose, assert_array_equal
from scipy.special import logsumexp
from sklearn import config_context
from sklearn.base import clone
from sklearn.datasets import make_blobs, make_classification
from sklearn.model_selection import GroupKFold, cross_validate
from sklearn.preprocessing import StandardScaler
from skorch.callbacks import Callback

from skdfl.heads import FocalHeadClassifier

pytestmark = [
    pytest.mark.usefixtures("one_torch_thread"),
    pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning"),
]

FAST = dict(hidden_units=(8,), lr=0.02, max_epochs=10, batch_size=32, min_steps_per_epoch=1, random_state=0)


@pytest.fixture(scope="module")
def blobs():
    X, y = make_blobs(n_samples=120, centers=3, n_features=6, cluster_std=2.0, random_state=0)
    return StandardScaler().fit_transform(X).astype(np.float32), y


class _SplitProbe(Callback):
    """Records the rows of the training and validation datasets."""

    def on_epoch_begin(self, net, dataset_train=None, dataset_valid=None, **kwargs):
        self.train_rows = dataset_train.rows.numpy()
        self.valid_rows = None if dataset_valid is None else dataset_valid.rows.numpy()


# --------------------------------------------------------------------------- sample_weight


def test_integer_sample_weight_equals_repeating_samples():
    # Full-batch training without noise: weighted and repeated data give the same loss and gradients at every
    # step, so the two heads must agree up to float32 rounding. Zero weights remove samples. (A linear head:
    # with ReLU units, a sample sitting on a kink can amplify rounding differences.)
    X, y = make_classification(n_samples=40, n_features=6, n_informative=4, n_classes=3, random_state=0)
    weights = np.random.RandomState(0).randint(0, 4, size=len(y))
    params = dict(
        hidden_units=(), noise_std=0.0, batch_size=512, max_epochs=30, n_iter_no_change=100, random_state=0
    )
    weighted = FocalHeadClassifier(**params).fit(X, y, sample_weight=weights)
    repeated = FocalHeadClassifier(**params).fit(np.repeat(X, weights, axis=0), np.repeat(y, weights))
    assert_allclose(weighted.predict_proba(X), repeated.predict_proba(X), atol=1e-6)
    assert_allclose(weighted.feature_mean_, repeated.feature_mean_, rtol=1e-5)
    unweighted = FocalHeadClassifier(**params).fit(X, y)
    assert np.abs(unweighted.predict_proba(X) - weighted.predict_proba(X)).max() > 1e-2


def test_sample_weight_shifts_the_decision(blobs):
    X, y = blobs
    weights = np.where(y == 2, 20.0, 1.0)
    plain = FocalHeadClassifier(**FAST).fit(X, y)
    heavy = FocalHeadClassifier(**FAST).fit(X, y, sample_weight=weights)
    assert (heavy.predict(X) == 2).sum() > (plain.predict(X) == 2).sum()


def test_balanced_alpha_counts_sample_weight(blobs):
    X, y = blobs
    weights = np.where(y == 0, 3.0, 1.0)
    head = FocalHeadClassifier(**{**FAST, "max_epochs": 1}, alpha="balanced").fit(X, y, sample_weight=weights)
    totals = np.bincount(y, weights=weights)
    assert_allclose(head.net_.criterion_.alpha.numpy(), totals.sum() / (3 * totals), rtol=1e-6)


def test_bad_sample_weight(blobs):
    X, y = blobs
    with pytest.raises(ValueError, match="Negative values in data passed to `sample_weight`"):
        FocalHeadClassifier(**FAST).fit(X, y, sample_weight=-np.ones(len(y)))
    with pytest.raises(ValueError, match="non-zero"):
        FocalHeadClassifier(**FAST).fit(X, y, sample_weight=np.zeros(len(y)))


def test_sample_weight_and_groups_routed_through_cross_validate(blobs):
    X, y = blobs
    groups = np.arange(len(y)) % 12
    weights = np.where(y == 1, 5.0, 1.0)
    cv = GroupKFold(n_splits=3)
    with config_context(enable_metadata_routing=True):
        head = FocalHeadClassifier(**FAST, early_stopping=True, callbacks=[("split", _SplitProbe())])
        head.set_fit_request(sample_weight=True, groups=True).set_score_request(sample_weight=False)
        result = cross_validate(
            head, X, y, cv=cv, params={"sample_weight": weights, "groups": groups}, return_estimator=True,
            return_indices=True,
        )  # fmt: skip
    for fold, fitted in enumerate(result["estimator"]):
        train = result["indices"]["train"][fold]
        # The weights reached fit: the fold's head equals one fitted by hand with the same weights and groups.
        by_hand = clone(head).fit(X[train], y[train], sample_weight=weights[train], groups=groups[train])
        assert_array_equal(fitted.predict_proba(X), by_hand.predict_proba(X))
        # The groups reached fit: early stopping held out whole groups of the training fold.
        probe = dict(fitted.net_.callbacks_)["split"]
        train_groups = set(groups[train][probe.train_rows])
        valid_groups = set(groups[train][probe.valid_rows])
        assert valid_groups and not train_groups & valid_groups


# --------------------------------------------------------------------------- early stopping split


@pytest.mark.parametrize("seed", range(4))
def test_group_aware_early_stopping_never_splits_a_group(seed):
    rng = np.random.RandomState(seed)
    X, y = make_classification(n_samples=200, n_features=5, random_state=seed)
    groups = rng.randint(0, 15, size=len(y)).astype(str)
    head = FocalHeadClassifier(
        **{**FAST, "max_epochs": 2, "random_state": seed}, early_stopping=True, validation_fraction=0.2,
        callbacks=[("split", _SplitProbe())],
    ).fit(X, y, groups=groups)  # fmt: skip
    probe = dict(head.net_.callbacks_)["split"]
    assert len(probe.train_rows) + len(probe.valid_rows) == len(y)
    assert not set(groups[probe.train_rows]) & set(groups[probe.valid_rows])
    assert 0.05 < len(probe.valid_rows) / len(y) < 0.4


def test_early_stopping_without_groups_is_stratified(blobs):
    X, y = blobs
    head = FocalHeadClassifier(
        **{**FAST, "max_epochs": 1}, early_stopping=True, validation_fraction=0.25,
        callbacks=[("split", _SplitProbe())],
    ).fit(X, y)  # fmt: skip
    valid = dict(head.net_.callbacks_)["split"].valid_rows
    assert_array_equal(np.bincount(y[valid]), [10, 10, 10])


def test_early_stopping_on_too_few_samples_names_the_parameters():
    X, y = make_classification(n_samples=10, n_features=4, n_informative=2, random_state=0)
    with pytest.raises(
        ValueError, match=r"early_stopping=True.*validation_fraction=0\.1.*10 training samples"
    ):
        FocalHeadClassifier(**FAST, early_stopping=True).fit(X, y)
    with pytest.raises(ValueError, match=r"early_stopping=True.*one group"):
        FocalHeadClassifier(**FAST, early_stopping=True).fit(X, y, groups=np.zeros(10))


def test_groups_length_is_checked(blobs):
    X, y = blobs
    with pytest.raises(ValueError, match="inconsistent numbers of samples"):
        FocalHeadClassifier(**FAST, early_stopping=True).fit(X, y, groups=np.arange(5))


# --------------------------------------------------------------------------- decision_function


def test_decision_function_is_the_logits(blobs):
    X, y = blobs
    head = FocalHeadClassifier(**FAST).fit(X, y)
    scores = head.decision_function(X)
    assert scores.shape == (len(X), 3)
    assert_array_equal(head.classes_[scores.argmax(axis=1)], head.predict(X))
    # log_softmax of the logits is predict_log_proba.
    assert_allclose(scores - logsumexp(scores, axis=1, keepdims=True), head.predict_log_proba(X), atol=1e-5)
    with torch.no_grad():
        logits = head.net_.module_.eval()(torch.from_numpy(X)).numpy()
    assert_allclose(scores, logits, rtol=1e-5, atol=1e-5)


def test_binary_decision_function_is_the_log_odds_of_classes_1(blobs):
    X, y = blobs
    labels = np.array(["benign", "malignant"])[(y == 1).astype(int)]
    head = FocalHeadClassifier(**FAST).fit(X, labels)
    scores = head.decision_function(X)
    assert scores.shape == (len(X),)
    assert_array_equal(np.where(scores > 0, "malignant", "benign"), head.predict(X))
    log_proba = head.predict_log_proba(X)
    assert_allclose(scores, log_proba[:, 1] - log_proba[:, 0], atol=1e-5)


# --------------------------------------------------------------------------- partial_fit


def test_partial_fit_continues_training_from_memmap_chunks(blobs, tmp_path):
    X, y = blobs
    store = np.memmap(tmp_path / "emb.f32", dtype=np.float32, mode="w+", shape=X.shape)
    store[:] = X
    store.flush()
    chunks = np.array_split(np.arange(len(y)), 4)
    head = FocalHeadClassifier(
        hidden_units=(8,), lr=0.01, batch_size=16, min_steps_per_epoch=1, random_state=0
    )
    losses, accuracies = [], []
    for _ in range(5):
        for chunk in chunks:
            rows = slice(chunk[0], chunk[-1] + 1)
            head.partial_fit(store[rows], y[rows], classes=[0, 1, 2])
        losses.append(head.net_.get_loss(head.net_.forward(X), torch.from_numpy(y)).item())
        accuracies.append(head.score(X, y))
    assert head.n_iter_ == 20 == len(head.history_)
    assert losses[-1] < losses[0] and accuracies[-1] >= accuracies[0]
    assert accuracies[-1] > 0.85
    # The feature statistics accumulated over the chunks are those of the whole data.
    assert_allclose(head.feature_mean_, X.mean(axis=0), atol=1e-5)
    assert_allclose(head.feature_std_, X.std(axis=0), rtol=1e-4)


def test_partial_fit_keeps_weights_and_optimizer_state(blobs):
    X, y = blobs
    head = FocalHeadClassifier(**FAST).partial_fit(X, y, classes=np.unique(y))
    module, optimizer = head.net_.module_, head.net_.optimizer_
    after_one = {k: v.clone() for k, v in module.state_dict().items()}
    head.partial_fit(X, y)
    assert head.net_.module_ is module and head.net_.optimizer_ is optimizer
    assert head.n_iter_ == 2
    assert any(not torch.equal(after_one[k], v) for k, v in module.state_dict().items())
    # Two calls are not the same as one fresh call repeated.
    fresh = FocalHeadClassifier(**FAST).partial_fit(X, y, classes=np.unique(y))
    assert not np.array_equal(fresh.predict_proba(X), head.predict_proba(X))


def test_partial_fit_after_fit_continues(blobs):
    X, y = blobs
    head = FocalHeadClassifier(**FAST, early_stopping=True).fit(X, y)
    n_fit = head.n_iter_
    head.partial_fit(X, y)
    assert head.n_iter_ == n_fit + 1
    assert "valid_loss" not in head.history_[-1]


def test_partial_fit_is_reproducible(blobs):
    X, y = blobs
    a = FocalHeadClassifier(**FAST, noise_std=0.2)
    b = clone(a)
    for head in (a, b):
        for part in np.array_split(np.arange(len(y)), 3):
            head.partial_fit(X[part], y[part], classes=[0, 1, 2])
    assert_array_equal(a.predict_proba(X), b.predict_proba(X))


def test_partial_fit_errors(blobs):
    X, y = blobs
    with pytest.raises(ValueError, match="classes must be passed on the first call"):
        FocalHeadClassifier(**FAST).partial_fit(X, y)
    head = FocalHeadClassifier(**FAST).partial_fit(X, y, classes=[0, 1, 2])
    with pytest.raises(ValueError, match=r"labels \[7\] not in classes \[0, 1, 2\]"):
        head.partial_fit(X[:3], [0, 1, 7])
    with pytest.raises(ValueError, match="differs from the classes of the first call"):
        head.partial_fit(X, y, classes=[0, 1])
    with pytest.raises(ValueError, match="X has 4 features, but FocalHeadClassifier is expecting 6"):
        head.partial_fit(X[:, :4], y)


def test_partial_fit_is_one_pass_whatever_min_steps_per_epoch(blobs):
    X, y = blobs
    head = FocalHeadClassifier(hidden_units=(8,), batch_size=16, min_steps_per_epoch=50, random_state=0)
    head.partial_fit(X[:40], y[:40], classes=[0, 1, 2])
    head.partial_fit(X[40:100], y[40:100])
    assert head.history_[:, "train_batch_count"] == [3, 4]  # ceil(40 / 16), ceil(60 / 16)
    fitted = FocalHeadClassifier(hidden_units=(8,), batch_size=16, min_steps_per_epoch=50, max_epochs=1).fit(
        X, y
    )
    assert fitted.history_[:, "train_batch_count"] == [56]  # fit: 8 batches per pass, 7 passes >= 50 steps
    fitted.partial_fit(X, y)
    assert fitted.history_[:, "train_batch_count"] == [56, 8]
