"""scikit-learn's common estimator checks (``check_estimator``) for the skdfl estimators.

To add an estimator, append a fast instance to ``_estimators()`` and, only if unavoidable, list the checks
it cannot pass (with the reason) in ``_expected_failed_checks``.
"""

from __future__ import annotations

import pytest
import torch
from sklearn.utils.estimator_checks import parametrize_with_checks

from skdfl.heads import FocalHeadClassifier


def _estimators():
    """Instances under test, configured to be fast but still pass the accuracy checks.

    ``check_classifiers_train`` requires > 0.83 training accuracy on 300 standardised blobs; a tiny head
    with a large learning rate reaches ~0.92-0.95 in 10 epochs (checked over 8 seeds).
    """
    return [
        FocalHeadClassifier(hidden_units=(16,), lr=0.02, max_epochs=10, batch_size=32, random_state=0),
    ]


def _expected_failed_checks(estimator):
    """Map check name -> reason for the checks ``estimator`` is known to fail (none at the moment)."""
    return {}


@pytest.fixture(autouse=True, scope="module")
def _single_torch_thread():
    # The estimators under test are tiny; on a shared, oversubscribed machine OpenMP spin-waiting made the
    # suite ~7x slower with the default thread count. Restored for other modules.
    n_threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n_threads)


@parametrize_with_checks(_estimators(), expected_failed_checks=_expected_failed_checks)
def test_sklearn_compatible_estimator(estimator, check):
    check(estimator)
