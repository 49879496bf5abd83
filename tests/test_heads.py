"""Behaviour tests for :mod:`skdfl.heads`: focal loss, feature noise, the MLP head and its estimator.

Training budget and convergence: ``test_heads_budget.py``; sample weights, groups, ``decision_function`` and
``partial_fit``: ``test_heads_fit_api.py``; feature-space perturbations and augmentation banks:
``test_heads_augment.py``.
"""

from __future__ import annotations

import pickle
import warnings

import joblib
import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from imblearn.pipeline import Pipeline as ImbPipeline
from imblearn.under_sampling import RandomUnderSampler
from numpy.testing import assert_allclose, assert_array_equal
from sklearn.base import clone
from sklearn.datasets import make_blobs, make_classification
from sklearn.model_selection import GridSearchCV, train_test_split
from sklearn.preprocessing import StandardScaler
from sklearn.utils._param_validation import InvalidParameterError
from skorch.callbacks import Callback

from skdfl.heads import FeatureDropout, FocalHeadClassifier, FocalLoss, GaussianNoise, MLPHead

# Small and fast: a tiny head with a large learning rate converges in a few epochs on these problems; one
# pass per epoch (min_steps_per_epoch=1) and no convergence stop (n_iter_no_change > max_epochs), so the
# number of epochs and batches is known.
FAST = dict(
    hidden_units=(16,),
    lr=0.02,
    max_epochs=15,
    batch_size=32,
    min_steps_per_epoch=1,
    n_iter_no_change=100,
    random_state=0,
)
pytestmark = [
    pytest.mark.usefixtures("one_torch_thread"),
    pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning"),
]


@pytest.fixture(scope="module")
def blobs():
    X, y = make_blobs(n_samples=150, centers=3, n_features=5, cluster_std=1.5, random_state=0)
    return StandardScaler().fit_transform(X), y


def _numpy_focal(logits, target, gamma, alpha=None):
    """Per-sample focal loss written directly from the formula, in float64."""
    shifted = logits - logits.max(axis=1, keepdims=True)
    log_p = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    log_pt = log_p[np.arange(len(target)), target]
    pt = np.exp(log_pt)
    alpha_t = np.ones_like(pt) if alpha is None else np.asarray(alpha)[target]
    return -alpha_t * (1 - pt) ** gamma * log_pt


# --------------------------------------------------------------------------- FocalLoss


@pytest.mark.parametrize("gamma", [0.0, 1.0, 2.0])
@pytest.mark.parametrize("alpha", [None, [0.2, 0.3, 0.5]])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_focal_loss_matches_formula(gamma, alpha, reduction):
    rng = np.random.RandomState(0)
    logits = rng.normal(scale=3.0, size=(7, 3))
    target = rng.randint(0, 3, size=7)
    expected = _numpy_focal(logits, target, gamma, alpha)
    expected = {"mean": expected.mean(), "sum": expected.sum(), "none": expected}[reduction]

    alpha_t = None if alpha is None else torch.tensor(alpha, dtype=torch.float64)
    loss = FocalLoss(gamma=gamma, alpha=alpha_t, reduction=reduction)
    got = loss(torch.from_numpy(logits), torch.from_numpy(target))
    assert_allclose(got.numpy(), expected, rtol=1e-12)


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_focal_loss_gamma0_is_cross_entropy(reduction):
    torch.manual_seed(0)
    logits = torch.randn(64, 5, requires_grad=True)
    target = torch.randint(0, 5, (64,))
    focal = FocalLoss(gamma=0.0, reduction=reduction)(logits, target)
    ce = F.cross_entropy(logits, target, reduction=reduction)
    torch.testing.assert_close(focal, ce)
    (g_focal,) = torch.autograd.grad(focal.sum(), logits)
    (g_ce,) = torch.autograd.grad(ce.sum(), logits)
    torch.testing.assert_close(g_focal, g_ce)


def test_focal_loss_down_weights_easy_examples():
    # p_t = 0.95 (easy) vs p_t = 0.2 (hard), two classes.
    logits = torch.tensor([[np.log(0.95 / 0.05), 0.0], [np.log(0.2 / 0.8), 0.0]], dtype=torch.float64)
    target = torch.tensor([0, 0])
    focal = FocalLoss(gamma=2.0, reduction="none").double()(logits, target)
    ce = F.cross_entropy(logits, target, reduction="none")
    ratio = (focal / ce).numpy()
    assert_allclose(ratio, [0.05**2, 0.8**2], rtol=1e-10)
    assert ratio[0] < 0.01 < 0.5 < ratio[1]


def test_focal_loss_gradient_finite_when_saturated():
    # 1 - p_t underflows to 0 here; gamma < 1 would give inf * 0 = nan without the clamp.
    logits = torch.tensor([[200.0, -200.0]], requires_grad=True)
    loss = FocalLoss(gamma=0.5)(logits, torch.tensor([0]))
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(logits.grad).all()


def test_focal_loss_alpha_is_a_buffer():
    loss = FocalLoss(alpha=[1.0, 2.0])
    assert "alpha" in dict(loss.named_buffers())
    assert_allclose(loss.state_dict()["alpha"].numpy(), [1.0, 2.0])
    assert loss.to("meta").alpha.device.type == "meta"
    assert loss.to(torch.float64).alpha.dtype == torch.float64
    assert "alpha" not in FocalLoss().state_dict()


def test_focal_loss_invalid_arguments():
    with pytest.raises(ValueError, match="gamma"):
        FocalLoss(gamma=-1)
    with pytest.raises(ValueError, match="reduction"):
        FocalLoss(reduction="avg")
    with pytest.raises(ValueError, match="one-dimensional"):
        FocalLoss(alpha=[[1.0, 2.0]])
    with pytest.raises(ValueError, match="non-negative"):
        FocalLoss(alpha=[1.0, -2.0])
    with pytest.raises(ValueError, match="alpha has 2 entries but logits have 3 classes"):
        FocalLoss(alpha=[1.0, 2.0])(torch.zeros(4, 3), torch.zeros(4, dtype=torch.long))


# --------------------------------------------------------------------------- GaussianNoise / MLPHead


def test_gaussian_noise_only_in_training():
    torch.manual_seed(0)
    x = torch.zeros(20000, 4)
    noise = GaussianNoise(std=0.5)
    out = noise.train()(x)
    assert not torch.equal(out, x)
    assert abs(out.std().item() - 0.5) < 0.01
    assert noise.eval()(x) is x
    assert GaussianNoise(std=0.0).train()(x) is x
    with pytest.raises(ValueError, match="std"):
        GaussianNoise(std=-0.1)


@pytest.mark.parametrize(
    "hidden_units, dropout, expected_linear, n_dropout",
    [((), 0.0, [(6, 3)], 0), ((8,), 0.0, [(6, 8), (8, 3)], 0), ((8, 4), 0.5, [(6, 8), (8, 4), (4, 3)], 2)],
)
def test_mlp_head_architecture(hidden_units, dropout, expected_linear, n_dropout):
    head = MLPHead(6, 3, hidden_units=hidden_units, dropout=dropout, noise_std=0.1)
    linears = [m for m in head.modules() if isinstance(m, torch.nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == expected_linear
    assert sum(isinstance(m, torch.nn.Dropout) for m in head.modules()) == n_dropout
    first, second = list(head.children())[:2]
    assert isinstance(first, FeatureDropout) and isinstance(second, GaussianNoise)
    assert head(torch.zeros(2, 6)).shape == (2, 3)


@pytest.mark.parametrize("bad", [(8, 0), (8, -1), (8.5,), ("8",), None])
def test_mlp_head_rejects_bad_hidden_units(bad):
    with pytest.raises(ValueError, match="positive integers"):
        MLPHead(4, 2, hidden_units=bad)


# --------------------------------------------------------------------------- FocalHeadClassifier


def test_beats_chance_on_separable_problem():
    X, y = make_classification(
        n_samples=600, n_features=20, n_informative=6, n_classes=3, class_sep=1.5, random_state=0
    )
    X_train, X_test, y_train, y_test = train_test_split(X, y, stratify=y, random_state=0)
    clf = FocalHeadClassifier(hidden_units=(32,), max_epochs=30, batch_size=64, random_state=0)
    assert clf.fit(X_train, y_train).score(X_test, y_test) > 0.75  # chance is 1/3; ~0.85 over seeds


def test_string_labels_round_trip(blobs):
    X, y = blobs
    names = np.array(["tumor", "stroma", "normal"])
    y_str = names[y]
    clf = FocalHeadClassifier(**FAST).fit(X, y_str)
    assert_array_equal(clf.classes_, np.sort(names))
    pred = clf.predict(X)
    assert set(pred) <= set(names)
    assert (pred == y_str).mean() > 0.9
    assert_array_equal(pred, clf.classes_[clf.predict_proba(X).argmax(axis=1)])


def test_predict_proba_is_a_distribution(blobs):
    X, y = blobs
    clf = FocalHeadClassifier(**FAST).fit(X, y)
    proba = clf.predict_proba(X)
    assert proba.shape == (len(X), 3) and proba.dtype == np.float64
    assert (proba >= 0).all()
    assert_allclose(proba.sum(axis=1), 1.0, rtol=0, atol=1e-12)
    assert_allclose(clf.predict_log_proba(X), np.log(proba), rtol=1e-10, atol=1e-12)


def test_fitted_attributes(blobs):
    X, y = blobs
    clf = FocalHeadClassifier(**FAST, device="cpu").fit(X, y)
    assert clf.n_features_in_ == 5
    assert not hasattr(clf, "feature_names_in_")
    assert clf.n_iter_ == len(clf.history_) == FAST["max_epochs"]
    assert_allclose(clf.feature_mean_, X.mean(axis=0), atol=1e-5)
    assert_allclose(clf.feature_std_, X.std(axis=0), rtol=1e-5)
    assert isinstance(clf.net_.module_, MLPHead)
    assert isinstance(clf.net_.criterion_, FocalLoss)
    assert clf.net_.criterion_.gamma == 0.0 and clf.net_.criterion_.reduction == "none"
    assert isinstance(clf.net_.optimizer_, torch.optim.Adam)
    assert torch.device(clf.net_.device) == torch.device("cpu")
    assert next(clf.net_.module_.parameters()).device.type == "cpu"


class _NoiseProbe(Callback):
    """Records, for every forward call of the input-noise layer, (training mode, max |output - input|)."""

    def __init__(self):
        self.calls = []

    def on_train_begin(self, net, **kwargs):
        net.module_.noise.register_forward_hook(self._hook)

    def _hook(self, module, inputs, output):
        self.calls.append((module.training, float((output - inputs[0]).abs().max())))


def test_noise_applied_in_training_only(blobs):
    X, y = blobs
    clf = FocalHeadClassifier(
        **{**FAST, "max_epochs": 3}, noise_std=0.3, callbacks=[("probe", _NoiseProbe())]
    )
    clf.fit(X, y)
    probe = dict(clf.net_.callbacks_)["probe"]
    train_calls = [diff for training, diff in probe.calls if training]
    assert len(train_calls) == 3 * int(np.ceil(len(X) / FAST["batch_size"]))
    assert min(train_calls) > 0

    n_before = len(probe.calls)
    first = clf.predict_proba(X)
    assert_array_equal(first, clf.predict_proba(X))
    assert_array_equal(clf.predict(X), clf.predict(X))
    eval_calls = probe.calls[n_before:]
    assert eval_calls and all(not training and diff == 0 for training, diff in eval_calls)


class _BatchProbe(Callback):
    """Records the targets of every training batch."""

    def __init__(self):
        self.batches = []

    def on_batch_begin(self, net, batch=None, training=None, **kwargs):
        if training:
            self.batches.append(batch[1]["target"].numpy().copy())


def test_training_batches_are_shuffled_each_epoch(blobs):
    X, y = blobs
    clf = FocalHeadClassifier(**{**FAST, "max_epochs": 2}, callbacks=[("probe", _BatchProbe())]).fit(X, y)
    batches = dict(clf.net_.callbacks_)["probe"].batches
    n_batches = int(np.ceil(len(X) / FAST["batch_size"]))
    assert len(batches) == 2 * n_batches
    epoch_1, epoch_2 = np.concatenate(batches[:n_batches]), np.concatenate(batches[n_batches:])
    assert_array_equal(np.sort(epoch_1), np.sort(y))  # every sample once per epoch
    assert not np.array_equal(epoch_1, y) and not np.array_equal(epoch_1, epoch_2)


def test_callbacks_param_is_not_mutated(blobs):
    X, y = blobs
    probe = _NoiseProbe()
    clf = FocalHeadClassifier(**{**FAST, "max_epochs": 1}, callbacks=[("probe", probe)]).fit(X, y)
    assert probe.calls == []
    assert clf.callbacks[0][1] is probe


@pytest.mark.parametrize("kind", ["float32", "dataframe", "list"])
def test_input_containers_give_identical_results(blobs, kind):
    X, y = blobs
    ref = FocalHeadClassifier(**FAST).fit(X, y).predict_proba(X)
    Xk = {
        "float32": X.astype(np.float32),
        "dataframe": pd.DataFrame(X, columns=[f"f{i}" for i in range(X.shape[1])]),
        "list": X.tolist(),
    }[kind]
    clf = FocalHeadClassifier(**FAST).fit(Xk, y)
    assert_array_equal(clf.predict_proba(Xk), ref)
    if kind == "dataframe":
        assert_array_equal(clf.feature_names_in_, Xk.columns)


class _DatasetProbe(Callback):
    """Records the training and validation datasets the net iterates over."""

    def on_epoch_begin(self, net, dataset_train=None, dataset_valid=None, **kwargs):
        self.train, self.valid = dataset_train, dataset_valid


def test_memmap_input_is_not_copied(blobs, tmp_path):
    X, y = blobs
    path = tmp_path / "emb.f32"
    mm = np.memmap(path, dtype=np.float32, mode="w+", shape=X.shape)
    mm[:] = X
    mm.flush()
    del mm
    store = np.memmap(path, dtype=np.float32, mode="r", shape=X.shape)

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        clf = FocalHeadClassifier(**FAST, callbacks=[("probe", _DatasetProbe())]).fit(store, y)
        proba = clf.predict_proba(store)
    assert not [w for w in caught if "writable" in str(w.message)]
    # The tensor the batches are cut from is the memory-mapped file itself.
    train = dict(clf.net_.callbacks_)["probe"].train
    assert np.shares_memory(train.data.numpy(), store)
    ref = FocalHeadClassifier(**FAST).fit(X.astype(np.float32), y).predict_proba(X.astype(np.float32))
    assert_array_equal(proba, ref)


@pytest.mark.parametrize("dump", ["pickle", "joblib"])
def test_serialisation_round_trip(blobs, tmp_path, dump):
    X, y = blobs
    clf = FocalHeadClassifier(**FAST, alpha="balanced", noise_std=0.1).fit(X, y)
    if dump == "pickle":
        restored = pickle.loads(pickle.dumps(clf))
    else:
        joblib.dump(clf, tmp_path / "head.joblib")
        restored = joblib.load(tmp_path / "head.joblib")
    assert_array_equal(restored.predict_proba(X), clf.predict_proba(X))
    assert_array_equal(restored.predict(X), clf.predict(X))


def test_clone_and_set_params(blobs):
    X, y = blobs
    clf = FocalHeadClassifier(**FAST).fit(X, y)
    twin = clone(clf)
    assert not hasattr(twin, "net_")
    assert twin.get_params() == clf.get_params()
    twin.set_params(hidden_units=(7, 5), dropout=0.2).fit(X, y)
    widths = [m.out_features for m in twin.net_.module_.modules() if isinstance(m, torch.nn.Linear)]
    assert widths == [7, 5, 3]


def test_grid_search_over_noise_and_hidden_units():
    # XOR: no linear head can solve it, a hidden layer can; noise of 3 feature standard deviations drowns the
    # signal. So the search must pick hidden_units=(16,) and noise_std=0, and the noisy head must score worse.
    rng = np.random.RandomState(0)
    X = rng.uniform(-1, 1, size=(240, 2))
    y = np.where(X[:, 0] * X[:, 1] > 0, "same", "diff")
    grid = {"noise_std": [0.0, 3.0], "hidden_units": [(), (16,)]}
    est = FocalHeadClassifier(lr=0.03, weight_decay=0.0, max_epochs=30, batch_size=32, random_state=0)
    search = GridSearchCV(est, grid, cv=2).fit(X, y)
    assert search.best_params_ == {"hidden_units": (16,), "noise_std": 0.0}
    scores = {
        (params["hidden_units"], params["noise_std"]): score
        for params, score in zip(
            search.cv_results_["params"], search.cv_results_["mean_test_score"], strict=True
        )
    }
    assert scores[(16,), 0.0] > 0.85
    assert scores[(16,), 3.0] < scores[(16,), 0.0] - 0.1
    assert max(scores[(), 0.0], scores[(), 3.0]) < 0.7  # a linear head cannot do XOR
    best = search.best_estimator_
    assert best.hidden_units == (16,) and hasattr(best, "net_")
    assert search.score(X, y) > 0.85


def test_reproducible_with_random_state(blobs):
    X, y = blobs
    params = {**FAST, "dropout": 0.2, "noise_std": 0.2, "early_stopping": True, "max_epochs": 5}
    rng_state = torch.get_rng_state()
    clf = FocalHeadClassifier(**params).fit(X, y)
    assert torch.equal(torch.get_rng_state(), rng_state), "fit must not consume the global torch RNG"
    a = clf.predict_proba(X)
    assert torch.equal(torch.get_rng_state(), rng_state), "predict must not consume the global torch RNG"
    b = FocalHeadClassifier(**params).fit(X, y).predict_proba(X)
    assert_array_equal(a, b)
    c = FocalHeadClassifier(**{**params, "random_state": 1}).fit(X, y).predict_proba(X)
    assert not np.array_equal(a, c)
    d = FocalHeadClassifier(**{**params, "random_state": None}).fit(X, y).predict_proba(X)
    e = FocalHeadClassifier(**{**params, "random_state": None}).fit(X, y).predict_proba(X)
    assert not np.array_equal(d, e)


def test_early_stopping_stops_before_max_epochs():
    X, y = make_blobs(n_samples=300, centers=3, n_features=5, cluster_std=3.0, random_state=0)
    X = StandardScaler().fit_transform(X)
    clf = FocalHeadClassifier(**{**FAST, "max_epochs": 200, "n_iter_no_change": 3}, early_stopping=True).fit(
        X, y
    )
    assert clf.n_iter_ < 200
    assert "valid_loss" in clf.history_[-1] and "valid_acc" in clf.history_[-1]
    stopper = dict(clf.net_.callbacks_)["early_stopping"]
    # Stopped right after n_iter_no_change epochs without improvement.
    assert clf.n_iter_ == stopper.best_epoch_ + 3
    # load_best: the fitted module holds the weights of the best epoch, not of the last one.
    for name, weights in clf.net_.module_.state_dict().items():
        assert torch.equal(weights, stopper.best_model_weights_[name])

    no_es = FocalHeadClassifier(**{**FAST, "max_epochs": 4}).fit(X, y)
    assert no_es.n_iter_ == 4 and "valid_loss" not in no_es.history_[-1]


def test_balanced_alpha():
    rng = np.random.RandomState(0)
    y = np.repeat(["a", "b", "c"], [60, 30, 10])
    X = rng.normal(size=(100, 4)) + (y == "a")[:, None]
    clf = FocalHeadClassifier(**{**FAST, "max_epochs": 1}, alpha="balanced").fit(X, y)
    alpha = clf.net_.criterion_.alpha.numpy()
    assert_allclose(alpha, [100 / (3 * 60), 100 / (3 * 30), 100 / (3 * 10)], rtol=1e-6)
    assert_allclose(np.mean(alpha[np.searchsorted(clf.classes_, y)]), 1.0, rtol=1e-6)

    as_dict = clf.set_params(alpha={"b": 2.0}).fit(X, y)
    assert_allclose(as_dict.net_.criterion_.alpha.numpy(), [1.0, 2.0, 1.0])
    as_array = clf.set_params(alpha=[0.5, 0.25, 0.25]).fit(X, y)
    assert_allclose(as_array.net_.criterion_.alpha.numpy(), [0.5, 0.25, 0.25])
    assert clf.set_params(alpha=None).fit(X, y).net_.criterion_.alpha is None


def test_imblearn_pipeline_with_pandas_output(blobs):
    X, y = blobs
    keep = np.r_[np.flatnonzero(y == 0), np.flatnonzero(y == 1)[:20], np.flatnonzero(y == 2)[:10]]
    X = pd.DataFrame(X[keep], columns=[f"emb_{i}" for i in range(X.shape[1])])
    y = y[keep]
    pipe = ImbPipeline(
        [
            ("scale", StandardScaler().set_output(transform="pandas")),
            ("under", RandomUnderSampler(random_state=0)),
            ("head", FocalHeadClassifier(**FAST, alpha="balanced")),
        ]
    ).fit(X, y)
    head = pipe.named_steps["head"]
    assert_array_equal(head.feature_names_in_, X.columns)
    # The sampler balanced the classes before the head, so "balanced" weights are all 1.
    assert_allclose(head.net_.criterion_.alpha.numpy(), [1.0, 1.0, 1.0])
    assert pipe.predict(X).shape == (len(X),)


def test_verbosity(blobs, capsys):
    X, y = blobs
    FocalHeadClassifier(**{**FAST, "max_epochs": 2, "n_iter_no_change": 1}, early_stopping=True).fit(X, y)
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err == ""
    FocalHeadClassifier(**{**FAST, "max_epochs": 2}, verbose=1).fit(X, y)
    assert "train_loss" in capsys.readouterr().out


# --------------------------------------------------------------------------- errors


def test_rejects_nan_and_inf(blobs):
    X, y = blobs
    for bad in (np.nan, np.inf):
        X_bad = X.copy()
        X_bad[3, 1] = bad
        with pytest.raises(ValueError, match="Input X contains (NaN|infinity)"):
            FocalHeadClassifier(**FAST).fit(X_bad, y)
    clf = FocalHeadClassifier(**{**FAST, "max_epochs": 1}).fit(X, y)
    X_bad = X.copy()
    X_bad[0, 0] = np.nan
    with pytest.raises(ValueError, match="Input X contains NaN"):
        clf.predict(X_bad)


def test_wrong_n_features_at_predict(blobs):
    X, y = blobs
    clf = FocalHeadClassifier(**{**FAST, "max_epochs": 1}).fit(X, y)
    msg = "X has 3 features, but FocalHeadClassifier is expecting 5 features as input"
    with pytest.raises(ValueError, match=msg):
        clf.predict(X[:, :3])
    with pytest.raises(ValueError, match=msg):
        clf.predict_proba(X[:, :3])


def test_single_class_raises(blobs):
    X, _ = blobs
    with pytest.raises(ValueError, match="at least 2 classes.*only one class: 'x'$"):
        FocalHeadClassifier(**FAST).fit(X, np.full(len(X), "x"))


def test_bad_alpha(blobs):
    X, y = blobs
    with pytest.raises(
        ValueError, match="alpha must have one entry per class: got shape \\(2,\\) for 3 classes"
    ):
        FocalHeadClassifier(**FAST, alpha=[1.0, 2.0]).fit(X, y)
    with pytest.raises(ValueError, match="non-negative"):
        FocalHeadClassifier(**FAST, alpha=[1.0, -2.0, 1.0]).fit(X, y)
    with pytest.raises(ValueError, match="not in class_weight"):
        FocalHeadClassifier(**FAST, alpha={7: 2.0}).fit(X, y)
    with pytest.raises(InvalidParameterError, match="'alpha' parameter"):
        FocalHeadClassifier(**FAST, alpha="inverse").fit(X, y)


@pytest.mark.parametrize("bad", [(8, 0), (16, -2), (4.5,)])
def test_bad_hidden_units(blobs, bad):
    X, y = blobs
    with pytest.raises(ValueError, match="hidden_units must be a sequence of positive integers"):
        FocalHeadClassifier(**{**FAST, "hidden_units": bad}).fit(X, y)


def test_bad_hidden_units_type_and_device(blobs):
    X, y = blobs
    with pytest.raises(InvalidParameterError, match="'hidden_units' parameter"):
        FocalHeadClassifier(**{**FAST, "hidden_units": 0}).fit(X, y)
    with pytest.raises(ValueError, match="invalid device 'gpu0'"):
        FocalHeadClassifier(**FAST, device="gpu0").fit(X, y)


class _ThreadProbe(Callback):
    def on_epoch_begin(self, net, **kwargs):
        self.threads = torch.get_num_threads()


@pytest.mark.parametrize("n_threads, expected", [(1, 1), (3, 3), (None, 2)])
def test_n_threads_applies_while_fitting_and_is_restored(blobs, n_threads, expected):
    X, y = blobs
    previous = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        clf = FocalHeadClassifier(
            **{**FAST, "max_epochs": 1}, n_threads=n_threads, callbacks=[("probe", _ThreadProbe())]
        )
        clf.fit(X, y)
        assert dict(clf.net_.callbacks_)["probe"].threads == expected
        assert torch.get_num_threads() == 2
        clf.predict(X)
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(previous)
