"""The proxy protocol shared by every comparison and search: the proxy head, its parameters and the folds.

The DFL paper ranks backbones with a proxy task: a single dense softmax layer trained with focal loss, Adam
and Gaussian input noise on each backbone's embeddings (:func:`default_head`), scored on the same
cross-validation folds (:func:`make_splits`). :func:`set_head_params` lets short parameter names reach
the classifier at the end of a Pipeline head. The labels helpers name the rows of the result tables.
"""

from __future__ import annotations

from collections.abc import Mapping
from numbers import Integral

import numpy as np
from sklearn.model_selection import StratifiedGroupKFold, StratifiedKFold
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import StandardScaler
from torch import nn

from ..embedder import BackboneEmbedder
from ..heads import FocalHeadClassifier

__all__ = [
    "PROXY_NOISE_STD",
    "backbone_label",
    "default_head",
    "format_head_setting",
    "make_splits",
    "set_head_params",
    "weights_label",
]

#: Input-noise std of the default proxy head, on standardised embeddings. Mild on purpose: the proxy
#: task ranks backbones, and heavy noise would mostly measure how well a backbone tolerates it.
PROXY_NOISE_STD = 0.1


def default_head(random_state=0) -> Pipeline:
    """The paper's proxy head: ``StandardScaler`` then a single dense softmax layer with focal loss.

    ``FocalHeadClassifier(hidden_units=(), noise_std=PROXY_NOISE_STD, gamma=2.0, weight_decay=0.0)`` trained
    with Adam: the paper's settings, kept for backbone comparisons even though the classifier's own defaults
    (chosen for task heads on new patients) differ. The scaler comes first because the Gaussian noise std is
    meant relative to unit-variance features, which makes one setting comparable across backbones whose raw
    feature scales differ by orders of magnitude.

    Parameters
    ----------
    random_state : int or None, default=0
        Seed of the head's weight initialisation, shuffling and noise.

    Returns
    -------
    head : Pipeline
        Steps ``standardscaler`` and ``focalheadclassifier``.
    """
    return make_pipeline(
        StandardScaler(),
        FocalHeadClassifier(
            hidden_units=(), noise_std=PROXY_NOISE_STD, gamma=2.0, weight_decay=0.0, random_state=random_state
        ),
    )


def set_head_params(head, params: Mapping):
    """``head.set_params(**params)``, routing short names to the last step of a :class:`Pipeline`.

    A key that is a parameter of ``head`` itself (``"focalheadclassifier__lr"``, or ``"lr"`` for a bare
    classifier) is set as is. A key without ``"__"`` that is not, is set on the final step of a Pipeline
    head, so ``{"lr": 1e-3}`` works for the default ``StandardScaler -> FocalHeadClassifier`` head.

    Returns
    -------
    head : estimator
        The same object, modified in place (clone it first).
    """
    valid = head.get_params(deep=True)
    routed = {}
    for key, value in params.items():
        if key not in valid and "__" not in key and isinstance(head, Pipeline):
            key = f"{head.steps[-1][0]}__{key}"
        routed[key] = value
    return head.set_params(**routed)


def make_splits(cv, y, groups=None, *, random_state=0) -> list[tuple[np.ndarray, np.ndarray]]:
    """Materialise cross-validation splits once, so every backbone and head sees the same folds.

    Parameters
    ----------
    cv : int, cross-validation splitter or iterable of (train, test) index arrays
        An int gives ``StratifiedKFold(cv, shuffle=True)``, or ``StratifiedGroupKFold`` when ``groups``
        are given, both seeded with ``random_state``.
    y : array-like of shape (n_samples,)
        Class labels (for stratification).
    groups : array-like of shape (n_samples,), default=None
        Patient/slide of each sample. When given, every split is checked to keep each group entirely on
        one side, whatever ``cv`` is, so a splitter that ignores groups fails loudly instead of leaking.
    random_state : int, default=0
        Seed of the shuffling of an int ``cv``.

    Returns
    -------
    splits : list of (train_indices, test_indices)
    """
    y = np.asarray(y)
    n = len(y)
    if isinstance(cv, Integral) and not isinstance(cv, bool):
        if cv < 2:
            raise ValueError(f"cv must be at least 2 folds, got {cv}")
        if groups is not None:
            n_groups = len(np.unique(np.asarray(groups)))
            if n_groups < cv:
                raise ValueError(
                    f"cv={cv} grouped folds need at least {cv} distinct groups (patients), got {n_groups}"
                )
            splitter = StratifiedGroupKFold(n_splits=cv, shuffle=True, random_state=random_state)
        else:
            counts = np.unique(y, return_counts=True)[1]
            if counts.min() < cv:
                raise ValueError(
                    f"cv={cv} stratified folds need at least {cv} samples of every class; the smallest "
                    f"class has {counts.min()}"
                )
            splitter = StratifiedKFold(n_splits=cv, shuffle=True, random_state=random_state)
        splits = list(splitter.split(np.zeros((n, 1)), y, groups))
    elif hasattr(cv, "split"):
        splits = list(cv.split(np.zeros((n, 1)), y, groups))
    else:
        splits = [(np.asarray(train), np.asarray(test)) for train, test in cv]
    if not splits:
        raise ValueError("cv produced no splits")
    if groups is not None:
        groups = np.asarray(groups)
        for k, (train, test) in enumerate(splits):
            shared = np.intersect1d(groups[train], groups[test])
            if len(shared):
                raise ValueError(
                    f"fold {k} puts group {shared[0]!r} (and {len(shared) - 1} other(s)) in both train and "
                    "test: use a group-aware splitter such as StratifiedGroupKFold"
                )
    return splits


def backbone_label(embedder) -> str:
    """Row name of an embedder in a result table: its backbone name, else the class name of its model."""
    backbone = getattr(embedder, "backbone", None)
    if isinstance(backbone, str):
        return backbone
    return type(backbone if backbone is not None else embedder).__name__


def weights_label(embedder) -> str:
    """Which weights an embedder carries: ``pretrained``, ``random-init``, ``checkpoint``, ``module`` or
    ``custom`` (a transformer other than :class:`~skdfl.BackboneEmbedder`)."""
    if not isinstance(embedder, BackboneEmbedder):
        return "custom"
    if embedder.checkpoint_path is not None:
        return "checkpoint"
    if isinstance(embedder.backbone, nn.Module):
        return "module"
    return "pretrained" if embedder.pretrained else "random-init"


def format_head_setting(setting: Mapping) -> str:
    """One head setting as ``"key=value, ..."`` sorted by key (``"default"`` when empty)."""
    return ", ".join(f"{k}={v!r}" for k, v in sorted(setting.items())) or "default"
