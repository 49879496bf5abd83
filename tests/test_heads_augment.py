"""Feature-space perturbations of the head (issue 12.3) and the augmentation-bank input layout.

Every perturbation must act while training only, scale with the data where it claims to, and be
reproducible with ``random_state``.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from numpy.testing import assert_allclose, assert_array_equal
from sklearn.datasets import make_blobs
from skorch.callbacks import Callback

from skdfl.heads import (
    FeatureDropout,
    FocalHeadClassifier,
    FocalLoss,
    GaussianNoise,
    MLPHead,
    mixup_embeddings,
)

pytestmark = [
    pytest.mark.usefixtures("one_torch_thread"),
    pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning"),
]

FAST = dict(hidden_units=(8,), lr=0.02, max_epochs=3, batch_size=32, min_steps_per_epoch=1, random_state=0)
# Very different feature scales, as raw (unstandardised) embeddings have.
SCALES = np.array([1.0, 100.0, 0.01, 10.0], dtype=np.float32)


@pytest.fixture(scope="module")
def raw_blobs():
    X, y = make_blobs(n_samples=160, centers=3, n_features=4, cluster_std=1.0, random_state=0)
    return (X * SCALES + 5 * SCALES).astype(np.float32), y


class _ModuleProbe(Callback):
    """Records (training mode, input, output) of a submodule of the head at every forward call."""

    def __init__(self, submodule):
        self.submodule = submodule
        self.calls = []

    def on_train_begin(self, net, **kwargs):
        getattr(net.module_, self.submodule).register_forward_hook(self._hook)

    def _hook(self, module, inputs, output):
        self.calls.append((module.training, inputs[0].detach().clone(), output.detach().clone()))


def _probe(head, name="probe"):
    return dict(head.net_.callbacks_)[name]


# --------------------------------------------------------------------------- torch modules


def test_gaussian_noise_scale_per_feature():
    torch.manual_seed(0)
    noise = GaussianNoise(std=0.5, scale=[1.0, 10.0, 0.0]).train()
    x = torch.zeros(20000, 3)
    spread = noise(x).std(dim=0).numpy()
    assert_allclose(spread[:2], [0.5, 5.0], rtol=0.03)
    assert spread[2] == 0  # a constant feature gets no noise
    assert noise.eval()(x) is x
    assert "scale" in dict(noise.named_buffers())
    with pytest.raises(ValueError, match="non-negative"):
        GaussianNoise(0.1, scale=[1.0, -1.0])
    with pytest.raises(ValueError, match="one value per feature"):
        GaussianNoise(0.1, scale=[[1.0]])


def test_feature_dropout_replaces_dropped_features_by_the_centre():
    torch.manual_seed(0)
    center = torch.tensor([1.0, -2.0])
    drop = FeatureDropout(p=0.25, center=center).train()
    x = torch.tensor([3.0, 6.0]).repeat(20000, 1)
    out = drop(x)
    dropped = out == center
    kept_value = center + (x - center) / 0.75
    assert torch.equal(out[~dropped], kept_value[~dropped])
    assert abs(dropped.float().mean().item() - 0.25) < 0.01
    assert_allclose(out.mean(dim=0).numpy(), [3.0, 6.0], rtol=0.02)  # inverted dropout keeps the mean
    assert drop.eval()(x) is x
    # Without a centre, this is torch's dropout: dropped features become 0.
    zeros = FeatureDropout(p=0.5).train()(torch.ones(1000, 2))
    assert set(zeros.unique().tolist()) == {0.0, 2.0}
    with pytest.raises(ValueError, match=r"p must be in \[0, 1\)"):
        FeatureDropout(p=1.0)


def test_mixup_embeddings_are_convex_combinations_of_batch_pairs():
    torch.manual_seed(0)
    x = torch.randn(64, 5)
    mixed, partner, lam = mixup_embeddings(x, alpha=0.4)
    assert sorted(partner.tolist()) == list(range(64))
    assert bool(((lam >= 0) & (lam <= 1)).all()) and lam.std() > 0.1
    assert_allclose(mixed.numpy(), (lam[:, None] * x + (1 - lam[:, None]) * x[partner]).numpy(), rtol=1e-6)
    with pytest.raises(ValueError, match="alpha must be > 0"):
        mixup_embeddings(x, alpha=0.0)


def _linear_head(n_features=16, n_classes=3):
    torch.manual_seed(0)
    scale = torch.linspace(0.2, 3.0, n_features)
    return MLPHead(n_features, n_classes, hidden_units=(), noise_std=0.7, noise_scale=scale).train()


def test_linear_head_draws_input_noise_in_logit_space_with_the_same_distribution():
    head = _linear_head()
    x = torch.randn(1, 16).repeat(100_000, 1)
    with torch.no_grad():
        fast = head(x)  # noise drawn in logit space
        slow = head.output(head.noise(x))  # noise added to the input
    assert_allclose(fast.mean(0).numpy(), slow.mean(0).numpy(), atol=0.02)
    assert_allclose(torch.cov(fast.T).numpy(), torch.cov(slow.T).numpy(), atol=0.03)
    expected = (head.output.weight * (0.7 * head.noise.scale)) @ (
        head.output.weight * (0.7 * head.noise.scale)
    ).T
    assert_allclose(torch.cov(fast.T).numpy(), expected.detach().numpy(), atol=0.03)
    head.eval()
    with torch.no_grad():
        assert torch.equal(head(x[:5]), head.output(x[:5]))


def test_logit_space_noise_gives_the_same_expected_gradient():
    head = _linear_head()
    x = torch.randn(64, 16)
    y = torch.randint(0, 3, (64,))
    loss_fn = FocalLoss()

    def mean_gradient(forward, draws=400):
        total = torch.zeros_like(head.output.weight)
        for _ in range(draws):
            head.zero_grad()
            loss_fn(forward(), y).backward()
            total += head.output.weight.grad
        return total / draws

    fast = mean_gradient(lambda: head(x))
    slow = mean_gradient(lambda: head.output(head.noise(x)))
    assert torch.allclose(fast, slow, atol=0.1 * slow.abs().max().item())
    assert not torch.allclose(fast, torch.zeros_like(fast))


@pytest.mark.parametrize("case", ["dependent rows", "zero weights"])
def test_logit_space_noise_of_a_degenerate_layer_is_finite_with_its_covariance(case):
    # A class without samples: after weight decay its weights are ~0 or copies of another's. The ridge keeps
    # the factorisation defined (no status read back: that was a host sync per step on a GPU).
    head = _linear_head()
    with torch.no_grad():
        if case == "dependent rows":
            head.output.weight[2] = head.output.weight[1]
        else:
            head.output.weight.zero_()
    with torch.no_grad():
        noise = head.noise.through_linear(head.output, 50_000)
    assert noise is not None and bool(torch.isfinite(noise).all())
    factor = head.output.weight * (0.7 * head.noise.scale)
    expected = (factor @ factor.T).detach().numpy()
    assert_allclose(torch.cov(noise.T).numpy(), expected, atol=0.02 * max(1.0, float(expected.max())))


def test_logit_space_noise_falls_back_to_input_noise_when_singular():
    torch.manual_seed(0)
    head = MLPHead(2, 5, hidden_units=(), noise_std=1.0).train()  # 5 logits from 2 features: rank 2
    assert head.noise.through_linear(head.output, 10) is None
    x = torch.zeros(20000, 2)
    with torch.no_grad():
        out = head(x)
    assert_allclose(
        torch.cov(out.T).numpy(), (head.output.weight @ head.output.weight.T).detach().numpy(), atol=0.05
    )


# --------------------------------------------------------------------------- the classifier's perturbations


@pytest.mark.parametrize("noise_scale", ["feature", "global", "absolute"])
def test_noise_is_scaled_by_the_training_spread(raw_blobs, noise_scale):
    X, y = raw_blobs
    head = FocalHeadClassifier(
        **FAST, noise_std=0.3, noise_scale=noise_scale, callbacks=[("probe", _ModuleProbe("noise"))]
    ).fit(X, y)
    noise = torch.cat([out - inp for training, inp, out in _probe(head).calls if training]).numpy()
    measured = noise.std(axis=0)
    expected_unit = {
        "feature": X.std(axis=0),
        "global": np.full(4, np.sqrt(np.mean(X.var(axis=0)))),
        "absolute": np.ones(4),
    }[noise_scale]
    assert_allclose(measured, 0.3 * expected_unit, rtol=0.1)


def test_feature_dropout_drops_to_the_training_mean(raw_blobs):
    X, y = raw_blobs
    head = FocalHeadClassifier(
        **FAST, feature_dropout=0.3, callbacks=[("probe", _ModuleProbe("feature_dropout"))]
    ).fit(X, y)
    outputs = torch.cat([out for training, _, out in _probe(head).calls if training]).numpy()
    dropped = np.isclose(outputs, head.feature_mean_, rtol=1e-6)
    assert_allclose(head.feature_mean_, X.mean(axis=0), rtol=1e-5)
    assert abs(dropped.mean() - 0.3) < 0.03


class _TargetProbe(Callback):
    def __init__(self):
        self.steps = []

    def on_batch_end(self, net, batch=None, training=None, loss=None, y_pred=None, **kwargs):
        if training:
            self.steps.append((batch[1], y_pred.detach(), loss.detach()))


def test_mixup_loss_mixes_the_two_labels_losses(raw_blobs):
    X, y = raw_blobs
    weights = np.linspace(0.5, 2.0, len(y))
    head = FocalHeadClassifier(**FAST, mixup_alpha=0.4, callbacks=[("probe", _TargetProbe())])
    head.fit(X, y, sample_weight=weights)
    criterion = head.net_.criterion_
    for target, logits, loss in _probe(head).steps[:5]:
        assert {"lam", "partner_target", "partner_weight"} <= set(target)
        own = criterion(logits, target["target"]) * target["weight"]
        other = criterion(logits, target["partner_target"]) * target["partner_weight"]
        expected = (target["lam"] * own + (1 - target["lam"]) * other).mean()
        torch.testing.assert_close(loss, expected)
    # Without mixup the batch carries no partner.
    plain = FocalHeadClassifier(**FAST, callbacks=[("probe", _TargetProbe())]).fit(X, y)
    assert set(_probe(plain).steps[0][0]) == {"target"}


ALL_ON = dict(noise_std=0.5, feature_dropout=0.2, mixup_alpha=0.4, dropout=0.3)


def test_perturbations_are_off_at_predict(raw_blobs):
    X, y = raw_blobs
    head = FocalHeadClassifier(**FAST, **ALL_ON).fit(X, y)
    proba = head.predict_proba(X)
    assert_array_equal(proba, head.predict_proba(X))
    module = head.net_.module_.eval()
    with torch.no_grad():
        clean = module.output(module.hidden(torch.from_numpy(X))).double()
    assert_allclose(proba, torch.softmax(clean, dim=1).numpy(), rtol=1e-5, atol=1e-7)


def test_perturbations_are_reproducible_with_random_state(raw_blobs):
    X, y = raw_blobs
    a = FocalHeadClassifier(**FAST, **ALL_ON).fit(X, y).predict_proba(X)
    b = FocalHeadClassifier(**FAST, **ALL_ON).fit(X, y).predict_proba(X)
    c = FocalHeadClassifier(**{**FAST, "random_state": 1}, **ALL_ON).fit(X, y).predict_proba(X)
    assert_array_equal(a, b)
    assert not np.allclose(a, c)


@pytest.mark.parametrize("param", list(ALL_ON))
def test_each_perturbation_changes_training(raw_blobs, param):
    X, y = raw_blobs
    plain = FocalHeadClassifier(**FAST).fit(X, y).predict_proba(X)
    perturbed = FocalHeadClassifier(**FAST, **{param: ALL_ON[param]}).fit(X, y).predict_proba(X)
    assert not np.allclose(plain, perturbed)


# --------------------------------------------------------------------------- augmentation bank


def _bank(n_samples=48, n_draws=4):
    """Bank whose column 0 is the sample id and column 1 the draw index."""
    rng = np.random.RandomState(0)
    X = np.zeros((n_samples, n_draws, 3), dtype=np.float32)
    X[:, :, 0] = np.arange(n_samples)[:, None]
    X[:, :, 1] = np.arange(n_draws)[None, :]
    X[:, :, 2] = rng.normal(size=(n_samples, n_draws))
    y = np.arange(n_samples) % 2
    return X, y


def _draws_seen(calls, training):
    """(sample id, draw index) pairs of the module inputs of training (or eval) forward calls."""
    inputs = torch.cat([inp for mode, inp, _ in calls if mode == training]).numpy()
    return inputs[:, 0].astype(int), inputs[:, 1].astype(int)


def test_bank_draws_one_embedding_per_sample_per_visit():
    X, y = _bank()
    head = FocalHeadClassifier(
        **{**FAST, "max_epochs": 6, "batch_size": 16}, callbacks=[("probe", _ModuleProbe("feature_dropout"))]
    ).fit(X, y)
    assert head.n_features_in_ == 3
    ids, draws = _draws_seen(_probe(head).calls, training=True)
    assert len(ids) == 6 * 48 and np.bincount(ids).tolist() == [6] * 48  # every sample once per epoch
    assert set(draws) == {0, 1, 2, 3}
    per_sample = [set(draws[ids == i]) for i in range(48)]
    assert np.mean([len(s) > 1 for s in per_sample]) > 0.9  # different draws across epochs
    # The feature statistics cover every draw.
    assert_allclose(head.feature_mean_, X.reshape(-1, 3).mean(axis=0), rtol=1e-5)


def test_bank_is_for_training_only():
    X, y = _bank()
    head = FocalHeadClassifier(
        **FAST,
        early_stopping=True,
        validation_fraction=0.25,
        callbacks=[("probe", _ModuleProbe("feature_dropout"))],
    ).fit(X, y)
    # The validation forward passes (eval mode) see draw 0 only.
    _, valid_draws = _draws_seen(_probe(head).calls, training=False)
    assert len(valid_draws) and set(valid_draws) == {0}
    with pytest.raises(ValueError, match=r"augmentation bank layout .* is for training only"):
        head.predict(X)
    assert head.predict(X[:, 0]).shape == (len(X),)
    with pytest.raises(ValueError, match="X has 5 features, but FocalHeadClassifier is expecting 3"):
        head.partial_fit(np.zeros((4, 2, 5), dtype=np.float32), y[:4])


def test_bank_is_reproducible_and_works_with_partial_fit():
    X, y = _bank()
    a = FocalHeadClassifier(**FAST).fit(X, y).predict_proba(X[:, 0])
    b = FocalHeadClassifier(**FAST).fit(X, y).predict_proba(X[:, 0])
    assert_array_equal(a, b)
    head = FocalHeadClassifier(**FAST)
    for part in np.array_split(np.arange(len(y)), 3):
        head.partial_fit(X[part], y[part], classes=[0, 1])
    assert head.n_iter_ == 3 and head.predict(X[:, 0]).shape == (len(y),)


# --------------------------------------------------------------------------- the 2-D bank (bank_size)


def _flat(X):
    """A 3-D bank as the embedder outputs it: augmentation-major blocks side by side."""
    return X.reshape(len(X), -1)


def test_2d_bank_trains_exactly_like_the_3d_bank():
    X, y = _bank()
    flat = FocalHeadClassifier(**FAST, bank_size=4).fit(_flat(X), y)
    explicit = FocalHeadClassifier(**FAST).fit(X, y)
    assert flat.n_features_in_ == 12 and explicit.n_features_in_ == 3
    assert_array_equal(flat.predict_proba(_flat(X)), explicit.predict_proba(X[:, 0]))


def test_2d_bank_draws_blocks_in_training_and_predicts_from_block_0_or_their_mean():
    X, y = _bank()
    head = FocalHeadClassifier(
        **{**FAST, "max_epochs": 4}, bank_size=4, callbacks=[("probe", _ModuleProbe("feature_dropout"))]
    ).fit(_flat(X), y)
    ids, draws = _draws_seen(_probe(head).calls, training=True)
    assert set(draws) == {0, 1, 2, 3} and np.bincount(ids).tolist() == [4] * len(X)
    _probe(head).calls.clear()
    plain = head.predict_proba(_flat(X))
    _, eval_draws = _draws_seen(_probe(head).calls, training=False)
    assert set(eval_draws) == {0}
    # Only block 0 matters at inference: other blocks can be anything.
    scrambled = X.copy()
    scrambled[:, 1:] = np.random.default_rng(1).normal(size=scrambled[:, 1:].shape) * 100
    assert_array_equal(head.predict_proba(_flat(scrambled)), plain)
    # With test-time augmentation (switchable after fit), the mean of the blocks.
    head.set_params(test_time_augmentation=True)
    mean = np.repeat(X.mean(axis=1, keepdims=True), 4, axis=1)
    assert_allclose(
        head.predict_proba(_flat(X)),
        head.set_params(test_time_augmentation=False).predict_proba(_flat(mean)),
        atol=1e-12,
    )
    assert not np.allclose(plain, head.set_params(test_time_augmentation=True).predict_proba(_flat(X)))


def test_2d_bank_composes_with_a_scaler_in_a_pipeline_and_grid_search():
    from sklearn.model_selection import GridSearchCV
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    X, y = _bank(n_samples=64)
    pipe = make_pipeline(StandardScaler(), FocalHeadClassifier(**FAST, bank_size=4))
    search = GridSearchCV(pipe, {"focalheadclassifier__test_time_augmentation": [False, True]}, cv=2)
    search.fit(_flat(X), y)
    assert search.best_estimator_[-1].n_features_in_ == 12
    assert search.predict(_flat(X)).shape == (64,)


def test_2d_bank_errors_name_the_problem():
    X, y = _bank()
    with pytest.raises(ValueError, match=r"bank_size=5 .* X has 12 columns, not a multiple of 5"):
        FocalHeadClassifier(**FAST, bank_size=5).fit(_flat(X), y)
    with pytest.raises(ValueError, match=r"bank_size=4 expects a 2-D X .* got a 3-D X of shape \(48, 4, 3\)"):
        FocalHeadClassifier(**FAST, bank_size=4).fit(X, y)
    with pytest.raises(ValueError, match="test_time_augmentation=True .* set bank_size"):
        FocalHeadClassifier(**FAST, test_time_augmentation=True).fit(X[:, 0], y)
    head = FocalHeadClassifier(**FAST, bank_size=4).fit(_flat(X), y)
    with pytest.raises(ValueError, match="X has 3 features, but FocalHeadClassifier is expecting 12"):
        head.predict(X[:, 0])
