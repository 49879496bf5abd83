"""The head's training loop: the lean epoch (issue 14.3) trains exactly like skorch's, and its data path.

A training epoch runs without skorch's per-batch machinery when no callback observes training batches; with
one that does, skorch's own loop runs. Both must give the same weights, the same history, bit for bit.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.datasets import make_classification
from skorch import NeuralNetClassifier
from skorch.callbacks import (
    Callback,
    EarlyStopping,
    EpochScoring,
    GradientNormClipping,
    LRScheduler,
    PassthroughScoring,
)

from skdfl.heads import FocalHeadClassifier
from skdfl.heads._data import EmbeddingDataset
from skdfl.heads._net import observes_training_batches

pytestmark = pytest.mark.usefixtures("one_torch_thread")


class CountTrainingBatches(Callback):
    """Observes training batches, which sends the net through skorch's loop."""

    def initialize(self):
        self.batches = 0
        return self

    def on_batch_end(self, net, batch=None, training=None, **kwargs):
        self.batches += bool(training)


@pytest.fixture
def data():
    X, y = make_classification(n_samples=300, n_features=12, n_informative=6, n_classes=3, random_state=0)
    return X.astype(np.float32), y


def _history(head, key):
    return [[batch[key] for batch in epoch["batches"] if key in batch] for epoch in head.history_]


@pytest.mark.parametrize(
    "params",
    [
        {},
        {"hidden_units": (16,), "dropout": 0.2, "gamma": 2.0},
        {"mixup_alpha": 0.4, "feature_dropout": 0.1, "alpha": "balanced"},
        {"early_stopping": True, "n_iter_no_change": 2},
    ],
    ids=["defaults", "hidden-focal", "mixup-dropout-alpha", "early-stopping"],
)
def test_lean_epoch_trains_exactly_like_skorchs_loop(data, params, monkeypatch):
    X, y = data
    weight = np.linspace(0.5, 1.5, len(y))
    common = dict(max_epochs=6, batch_size=32, random_state=0, **params)
    observed = FocalHeadClassifier(callbacks=[("count", CountTrainingBatches())], **common).fit(
        X, y, sample_weight=weight
    )

    def no_skorch_step(self, batch, **fit_params):
        raise AssertionError("the lean epoch should not go through skorch's train_step")

    monkeypatch.setattr(NeuralNetClassifier, "train_step", no_skorch_step)
    lean = FocalHeadClassifier(**common).fit(X, y, sample_weight=weight)

    # The observed fit went through skorch's loop: the callback saw every training batch.
    assert dict(observed.net_.callbacks_)["count"].batches == sum(observed.history_[:, "train_batch_count"])
    lean_state, observed_state = lean.net_.module_.state_dict(), observed.net_.module_.state_dict()
    assert lean_state.keys() == observed_state.keys()
    for name in lean_state:
        assert torch.equal(lean_state[name], observed_state[name]), name
    assert lean.n_iter_ == observed.n_iter_
    assert lean.history_[:, "train_loss"] == observed.history_[:, "train_loss"]
    assert _history(lean, "train_loss") == _history(observed, "train_loss")
    assert _history(lean, "train_batch_size") == _history(observed, "train_batch_size")
    assert lean.history_[:, "train_batch_count"] == observed.history_[:, "train_batch_count"]
    np.testing.assert_array_equal(lean.predict_proba(X), observed.predict_proba(X))


def test_lean_epoch_also_serves_partial_fit(data, monkeypatch):
    X, y = data
    observed = FocalHeadClassifier(callbacks=[CountTrainingBatches()], random_state=0)
    lean = FocalHeadClassifier(random_state=0)
    for chunk in np.array_split(np.arange(len(y)), 3):
        observed.partial_fit(X[chunk], y[chunk], classes=np.unique(y))
    monkeypatch.setattr(NeuralNetClassifier, "train_step", None)  # any call would fail
    for chunk in np.array_split(np.arange(len(y)), 3):
        lean.partial_fit(X[chunk], y[chunk], classes=np.unique(y))
    for name, tensor in lean.net_.module_.state_dict().items():
        assert torch.equal(tensor, observed.net_.module_.state_dict()[name]), name


@pytest.mark.parametrize(
    ("callback", "observes"),
    [
        (CountTrainingBatches(), True),
        (GradientNormClipping(1.0), True),
        (LRScheduler("StepLR", step_size=1, step_every="batch"), True),
        (EpochScoring("accuracy", on_train=True), True),
        (EpochScoring("accuracy", on_train=False), False),
        (PassthroughScoring("train_loss", on_train=True), False),
        (EarlyStopping(), False),
    ],
    ids=lambda value: type(value).__name__ if not isinstance(value, bool) else str(value),
)
def test_which_callbacks_observe_training_batches(callback, observes):
    assert observes_training_batches(callback) is observes


def test_training_passes_share_a_buffer_that_other_passes_leave_alone():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(50, 4)).astype(np.float32)
    rows = np.arange(10, 50)
    data = EmbeddingDataset(X, np.zeros(50, dtype=np.int64), rows=rows)
    expected = torch.from_numpy(X[rows])

    valid_order = torch.randperm(40)
    kept = [inputs for inputs, _ in data.batches(valid_order, 16, training=False)]
    pointers = []
    for _ in range(2):
        order = torch.randperm(40)
        batches = [inputs.clone() for inputs, _ in data.batches(order, 16, training=True)]
        assert torch.equal(torch.cat(batches), expected[order])
        pointers.append(next(data.batches(order, 16, training=True))[0].data_ptr())
    assert pointers[0] == pointers[1]  # one buffer for every training pass
    # A validation pass's batches are its own memory: later training passes do not overwrite them.
    assert torch.equal(torch.cat(kept), expected[valid_order])


def test_training_pass_over_a_bank_draws_each_sample_from_its_own_embeddings():
    X = np.arange(30 * 3 * 2, dtype=np.float32).reshape(30, 3, 2)
    data = EmbeddingDataset(X, np.zeros(30, dtype=np.int64))
    order = torch.randperm(30)
    inputs = torch.cat([batch for batch, _ in data.batches(order, 8, training=True)]).numpy()
    for sample, row in zip(order.tolist(), inputs, strict=True):
        assert any(np.array_equal(row, draw) for draw in X[sample])
    plain = torch.cat([batch for batch, _ in data.batches(order, 8, training=False)]).numpy()
    np.testing.assert_array_equal(plain, X[order.numpy(), 0])


HOST_READS = ("__bool__", "item", "tolist", "numpy", "__float__", "__int__", "__index__")


def test_a_training_step_reads_nothing_back_from_the_device(monkeypatch):
    """On a GPU every read of a tensor's value on the host (``bool``, ``item``, ...) waits for the device:
    training steps must not read any, only one per epoch (the epoch's losses). Counted on the CPU."""
    rng = np.random.default_rng(0)
    X = rng.normal(size=(600, 32)).astype(np.float32)
    y = (X[:, 0] > 0).astype(int)
    reads = []
    for name in HOST_READS:
        original = getattr(torch.Tensor, name)

        def counted(self, *args, _original=original, **kwargs):
            reads.append(1)
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(torch.Tensor, name, counted)

    def reads_of_a_fit(epochs):
        reads.clear()
        head = FocalHeadClassifier(max_epochs=epochs, tol=0, n_iter_no_change=epochs + 1, random_state=0)
        head.fit(X, y)  # 600 rows, batch 256: 10 steps per epoch (min_steps_per_epoch)
        assert head.n_iter_ == epochs
        return len(reads)

    with pytest.warns(Warning):  # stopped at max_epochs while improving: intended here
        extra = reads_of_a_fit(8) - reads_of_a_fit(4)
    assert extra <= 4, f"{extra} host reads for 4 more epochs of 10 steps"
