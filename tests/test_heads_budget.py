"""The head's training budget: enough optimiser steps on small data, a convergence stop, and a warning.

Issue 11.7: ``max_epochs`` counted passes, so with fewer samples than ``batch_size`` each epoch was a single
Adam step and ``hidden_units=(), max_epochs=20`` after ``PCA(8)`` ended below chance, silently.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
from sklearn.datasets import make_classification
from sklearn.decomposition import PCA
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from skdfl.heads import FocalHeadClassifier

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _small_separable(seed):
    """60 samples, 4 well-separated classes in 30 dimensions (the issue's reproducer)."""
    return make_classification(
        n_samples=60, n_features=30, n_informative=8, n_redundant=0, n_classes=4, n_clusters_per_class=1,
        class_sep=2.5, random_state=seed,
    )  # fmt: skip


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_linear_head_after_pca_trains_like_logistic_regression(seed):
    # Before the fix: 20 single-step epochs left the head at 0.03-0.25 training accuracy (LR: 1.0).
    X, y = _small_separable(seed)
    Z = PCA(8, random_state=0).fit_transform(X)
    reference = LogisticRegression(max_iter=1000).fit(Z, y).score(Z, y)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        head = FocalHeadClassifier(hidden_units=(), max_epochs=20, random_state=0).fit(Z, y)
    assert reference == 1.0
    assert head.score(Z, y) >= reference - 0.05


def test_small_data_epoch_makes_min_steps_per_epoch_steps():
    X, y = _small_separable(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        head = FocalHeadClassifier(hidden_units=(), max_epochs=3, batch_size=16, min_steps_per_epoch=10).fit(
            X, y
        )
        one_pass = FocalHeadClassifier(
            hidden_units=(), max_epochs=3, batch_size=16, min_steps_per_epoch=1
        ).fit(X, y)
    # 60 samples in batches of 16 = 4 steps per pass; 10 steps need 3 passes = 12 steps.
    assert head.history_[:, "train_batch_count"] == [12, 12, 12]
    assert one_pass.history_[:, "train_batch_count"] == [4, 4, 4]
    # Large data: one pass already has more steps than the minimum.
    X_big, y_big = make_classification(n_samples=700, n_features=5, random_state=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        big = FocalHeadClassifier(hidden_units=(), max_epochs=1, batch_size=16).fit(X_big, y_big)
    assert big.history_[:, "train_batch_count"] == [math.ceil(700 / 16)]


def test_tiny_budget_warns_that_the_loss_is_still_falling():
    X, y = _small_separable(0)
    with pytest.warns(ConvergenceWarning, match=r"max_epochs=2 while the train_loss was still decreasing"):
        head = FocalHeadClassifier(hidden_units=(), max_epochs=2, random_state=0).fit(X, y)
    assert head.n_iter_ == 2
    losses = head.history_[:, "train_loss"]
    assert losses[-1] < losses[0] - head.tol


def test_early_stopping_budget_warning_names_the_validation_loss():
    X, y = make_classification(n_samples=200, n_features=10, random_state=0)
    with pytest.warns(ConvergenceWarning, match="valid_loss was still decreasing"):
        FocalHeadClassifier(hidden_units=(), max_epochs=2, early_stopping=True, random_state=0).fit(X, y)


def test_stops_when_the_training_loss_plateaus_without_warning():
    X, y = make_classification(n_samples=300, n_features=10, n_informative=4, flip_y=0.2, random_state=0)
    with warnings.catch_warnings():
        warnings.simplefilter("error", ConvergenceWarning)
        head = FocalHeadClassifier(
            hidden_units=(), lr=0.01, weight_decay=1e-2, max_epochs=500, n_iter_no_change=5, tol=1e-3,
            random_state=0,
        ).fit(X, y)  # fmt: skip
    assert head.n_iter_ < 500
    losses = np.asarray(head.history_[:, "train_loss"])
    best_before = losses[: -head.n_iter_no_change].min()
    # The last n_iter_no_change epochs did not beat the best earlier loss by tol, and training ran until then.
    assert losses[-head.n_iter_no_change :].min() > best_before - head.tol
    assert losses[: -head.n_iter_no_change].argmin() == len(losses) - head.n_iter_no_change - 1


def test_default_pipeline_converges_on_small_data_without_warning():
    X, y = _small_separable(1)
    with warnings.catch_warnings():
        warnings.simplefilter("error", ConvergenceWarning)
        pipe = make_pipeline(StandardScaler(), FocalHeadClassifier(random_state=0)).fit(X, y)
    assert pipe.score(X, y) == 1.0
    assert pipe[-1].n_iter_ < pipe[-1].max_epochs
