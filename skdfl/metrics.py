"""Task evaluation helpers: the proxy-task scorers, binary and multiclass reports, patient-level scores.

Every number here is computed by scikit-learn's own metric functions; this module only chooses them,
names them consistently and aggregates per patient. The names are the keys used throughout
:mod:`skdfl.model_selection` (``balanced_accuracy``, ``cohen_kappa``, ``f1_weighted``, ``f1_macro``); their
display names (:func:`metric_display_name`) label the tables and figures.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from sklearn.metrics import (
    accuracy_score,
    average_precision_score,
    balanced_accuracy_score,
    classification_report,
    cohen_kappa_score,
    f1_score,
    make_scorer,
    precision_score,
    recall_score,
    roc_auc_score,
)
from sklearn.utils import Bunch

__all__ = [
    "METRIC_DISPLAY_NAMES",
    "SELECTION_METRICS",
    "REFERENCE_WEIGHTS",
    "backbone_display_name",
    "binary_report",
    "metric_display_name",
    "multiclass_report",
    "patient_level_scores",
    "selection_scoring",
    "table_metrics",
]

#: Metric names of the backbone-selection table (the paper's Table 1 plus macro F1), in display order.
SELECTION_METRICS = ("balanced_accuracy", "cohen_kappa", "f1_weighted", "f1_macro")

#: Human-readable names of the selection metrics, for table headers, legends and axis labels.
METRIC_DISPLAY_NAMES = {
    "balanced_accuracy": "balanced acc.",
    "cohen_kappa": "Cohen's kappa",
    "f1_weighted": "weighted F1",
    "f1_macro": "macro F1",
}


#: ``weights`` value of a selection-table row that is a reference (an untrained, random-init backbone):
#: it shows what the architecture alone gives, and is never the selected backbone.
REFERENCE_WEIGHTS = "random-init"


def backbone_display_name(backbone, weights=None) -> str:
    """Row label of a backbone in tables and figures: ``"resnet18 (random init)"`` for a reference row.

    Parameters
    ----------
    backbone : str
        Backbone name (the ``backbone`` column of a selection table).
    weights : str, default=None
        Its ``weights`` column; :data:`REFERENCE_WEIGHTS` appends ``" (random init)"``.
    """
    return f"{backbone} (random init)" if weights == REFERENCE_WEIGHTS else str(backbone)


def metric_display_name(metric: str) -> str:
    """The display name of a metric key (:data:`METRIC_DISPLAY_NAMES`), or the key itself if it has none."""
    return METRIC_DISPLAY_NAMES.get(metric, metric)


def table_metrics(table: pd.DataFrame) -> list[str]:
    """Metrics reported by a table as ``<metric>_mean``/``<metric>_std`` column pairs, in display order.

    Parameters
    ----------
    table : DataFrame
        A selection table (:func:`skdfl.model_selection.compare_backbones`,
        :func:`skdfl.model_selection.search_table`) or a label-efficiency curve.

    Returns
    -------
    metrics : list of str
        The :data:`SELECTION_METRICS` present, in that order, then any other metric in column order.
    """
    names = [c[: -len("_mean")] for c in table.columns if c.endswith("_mean") and c[:-5] + "_std" in table]
    return sorted(
        names, key=lambda m: (SELECTION_METRICS.index(m) if m in SELECTION_METRICS else 99, names.index(m))
    )


def selection_scoring() -> dict:
    """The ``scoring`` dict of the proxy task, for ``cross_validate`` or ``GridSearchCV``.

    Returns
    -------
    scoring : dict
        ``{"balanced_accuracy", "cohen_kappa", "f1_weighted", "f1_macro"}`` mapped to scikit-learn
        scorers: the built-in ``"balanced_accuracy"``, ``"f1_weighted"`` and ``"f1_macro"`` strings and
        ``make_scorer(cohen_kappa_score)``. A new dict on every call, so callers may extend it.
    """
    return {
        "balanced_accuracy": "balanced_accuracy",
        "cohen_kappa": make_scorer(cohen_kappa_score),
        "f1_weighted": "f1_weighted",
        "f1_macro": "f1_macro",
    }


def _as_1d(a, name: str) -> np.ndarray:
    arr = np.asarray(a)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be one-dimensional, got shape {arr.shape}")
    return arr


def _check_lengths(**arrays) -> None:
    lengths = {name: len(a) for name, a in arrays.items()}
    if len(set(lengths.values())) > 1:
        raise ValueError(f"inconsistent numbers of samples: {lengths}")


def _resolve_pos_label(classes: np.ndarray, pos_label):
    if pos_label is not None:
        if pos_label not in set(classes.tolist()):
            raise ValueError(f"pos_label={pos_label!r} is not one of the labels in y_true {classes.tolist()}")
        return pos_label
    # Same rule as scikit-learn: guessing the positive class of, e.g., {"IDC", "non_IDC"} is a trap.
    as_set = set(classes.tolist())
    for known in ({0, 1}, {-1, 1}):
        if as_set <= known:
            return 1
    raise ValueError(
        f"y_true has labels {classes.tolist()}; pass pos_label to say which one is the positive class "
        "(only {0, 1} and {-1, 1} labels have an implicit positive class)"
    )


def binary_report(y_true, y_score, *, pos_label=None, threshold=0.5, classes=None) -> dict:
    """Precision, recall, F1, balanced accuracy, PR-AUC and ROC-AUC of a binary task.

    This is the "confirm on a real task" report of the paper's Table 4. Threshold-free metrics use the
    scores; the others use the predictions ``y_score >= threshold``.

    Parameters
    ----------
    y_true : array-like of shape (n_samples,)
        True labels; exactly two classes.
    y_score : array-like of shape (n_samples,) or (n_samples, 2)
        Score of the positive class (a probability, or a decision value with a matching ``threshold``),
        or ``predict_proba`` output whose columns are ordered as ``classes``.
    pos_label : label, default=None
        The positive class. Required unless the labels are ``{0, 1}`` or ``{-1, 1}``.
    threshold : float, default=0.5
        Predict the positive class when its score is ``>= threshold``.
    classes : array-like of shape (2,), default=None
        Column order of a 2-D ``y_score`` (an estimator's ``classes_``); default: the sorted labels of
        ``y_true``, which is ``classes_`` of a classifier fitted on both classes.

    Returns
    -------
    report : dict
        ``precision``, ``recall`` (sensitivity), ``specificity``, ``f1``, ``balanced_accuracy``,
        ``pr_auc`` (:func:`~sklearn.metrics.average_precision_score`), ``roc_auc``, ``threshold``,
        ``n_positive``, ``n_negative``.
    """
    y_true = _as_1d(y_true, "y_true")
    score = np.asarray(y_score)
    labels = np.unique(y_true)
    if len(labels) != 2:
        raise ValueError(
            f"binary_report needs y_true with exactly 2 classes, got {len(labels)}: {labels.tolist()}; "
            "use multiclass_report for more classes (ROC-AUC and PR-AUC are undefined with one class)"
        )
    pos_label = _resolve_pos_label(labels, pos_label)
    if score.ndim == 2:
        cols = labels if classes is None else np.asarray(classes)
        if score.shape[1] != 2 or len(cols) != 2:
            raise ValueError(f"a 2-D y_score must have 2 columns (one per class), got shape {score.shape}")
        where = np.flatnonzero(cols == pos_label)
        if len(where) != 1:
            raise ValueError(f"pos_label={pos_label!r} is not one of classes {cols.tolist()}")
        score = score[:, where[0]]
    elif score.ndim != 1:
        raise ValueError(f"y_score must be 1-D or (n_samples, 2), got shape {score.shape}")
    _check_lengths(y_true=y_true, y_score=score)
    score = score.astype(float)
    if not np.isfinite(score).all():
        raise ValueError("y_score contains NaN or infinite values")

    is_pos = y_true == pos_label
    neg_label = labels[labels != pos_label][0]
    y_pred = np.where(score >= threshold, pos_label, neg_label)
    return {
        "precision": float(precision_score(y_true, y_pred, pos_label=pos_label, zero_division=0)),
        "recall": float(recall_score(y_true, y_pred, pos_label=pos_label, zero_division=0)),
        "specificity": float(recall_score(y_true, y_pred, pos_label=neg_label, zero_division=0)),
        "f1": float(f1_score(y_true, y_pred, pos_label=pos_label, zero_division=0)),
        "balanced_accuracy": float(balanced_accuracy_score(y_true, y_pred)),
        "pr_auc": float(average_precision_score(is_pos, score)),
        "roc_auc": float(roc_auc_score(is_pos, score)),
        "threshold": float(threshold),
        "n_positive": int(is_pos.sum()),
        "n_negative": int((~is_pos).sum()),
    }


def multiclass_report(y_true, y_pred, *, y_proba=None, labels=None) -> Bunch:
    """Per-class precision/recall/F1/support plus the summary scores of the selection table.

    Parameters
    ----------
    y_true, y_pred : array-like of shape (n_samples,)
        True and predicted labels.
    y_proba : array-like of shape (n_samples, n_classes), default=None
        Class probabilities with columns ordered as ``labels``. When given, the per-class table gains
        one-vs-rest ``roc_auc`` and ``pr_auc`` (average precision) columns and the summary gains
        ``roc_auc_ovr_macro``.
    labels : array-like, default=None
        Classes to report, in this order; default: sorted union of ``y_true`` and ``y_pred`` (the
        ``classes_`` order of a fitted classifier when every class was predicted or present).

    Returns
    -------
    report : Bunch
        ``per_class``: DataFrame indexed by class with ``precision``, ``recall``, ``f1``, ``support``
        (from :func:`~sklearn.metrics.classification_report` with ``output_dict=True``) and optionally
        ``roc_auc``, ``pr_auc``. ``scores``: dict with ``accuracy``, ``balanced_accuracy``,
        ``cohen_kappa``, ``f1_weighted``, ``f1_macro`` (and ``roc_auc_ovr_macro``).
    """
    y_true = _as_1d(y_true, "y_true")
    y_pred = _as_1d(y_pred, "y_pred")
    _check_lengths(y_true=y_true, y_pred=y_pred)
    labels = np.unique(np.concatenate([y_true, y_pred])) if labels is None else np.asarray(labels)
    names = [str(c) for c in labels]
    if len(set(names)) != len(names):
        raise ValueError(f"labels {labels.tolist()} are not distinct once converted to strings")
    report = classification_report(
        y_true, y_pred, labels=labels, target_names=names, output_dict=True, zero_division=0
    )
    per_class = pd.DataFrame({name: report[name] for name in names}).T
    per_class = per_class.rename(columns={"f1-score": "f1"})[["precision", "recall", "f1", "support"]]
    per_class["support"] = per_class["support"].astype(int)
    per_class.index = pd.Index(labels, name="class")
    scores = {
        "accuracy": float(accuracy_score(y_true, y_pred)),
        "balanced_accuracy": float(balanced_accuracy_score(y_true, y_pred)),
        "cohen_kappa": float(cohen_kappa_score(y_true, y_pred)),
        "f1_weighted": float(f1_score(y_true, y_pred, average="weighted", labels=labels, zero_division=0)),
        "f1_macro": float(f1_score(y_true, y_pred, average="macro", labels=labels, zero_division=0)),
    }
    if y_proba is not None:
        proba = np.asarray(y_proba, dtype=float)
        if proba.ndim != 2 or proba.shape != (len(y_true), len(labels)):
            raise ValueError(
                f"y_proba must have shape (n_samples, n_classes) = {(len(y_true), len(labels))} with columns "
                f"ordered as labels {labels.tolist()}, got {proba.shape}"
            )
        onehot = y_true[:, None] == labels[None, :]
        present = onehot.any(axis=0) & ~onehot.all(axis=0)
        # A class absent from y_true (or the only class) has no one-vs-rest curve: NaN, not an error.
        per_class["roc_auc"] = [
            roc_auc_score(onehot[:, k], proba[:, k]) if present[k] else np.nan for k in range(len(labels))
        ]
        per_class["pr_auc"] = [
            average_precision_score(onehot[:, k], proba[:, k]) if present[k] else np.nan
            for k in range(len(labels))
        ]
        scores["roc_auc_ovr_macro"] = float(np.nanmean(per_class["roc_auc"]))
    return Bunch(per_class=per_class, scores=scores)


def patient_level_scores(y_true, y_pred, groups, *, how="majority", classes=None) -> Bunch:
    """Aggregate image predictions per patient (or slide) and score them.

    Two patient-level numbers are returned, both common in the BreakHis literature:

    * ``accuracy``: every patient gets one prediction, the majority vote of its images' labels
      (``how="majority"``) or the class of its mean probability (``how="mean"``), compared to the
      patient's label (the MPCS-style patient-level accuracy);
    * ``recognition_rate``: the mean over patients of the fraction of that patient's images classified
      correctly (Spanhol et al., 2016), which weights every patient equally however many images it has.

    Parameters
    ----------
    y_true : array-like of shape (n_samples,)
        Image labels. All images of a patient must share one label (a patient-level label).
    y_pred : array-like of shape (n_samples,) or (n_samples, n_classes)
        Predicted labels, or class probabilities with columns ordered as ``classes``. ``how="mean"``
        needs probabilities.
    groups : array-like of shape (n_samples,)
        Patient (or slide) of every image.
    how : {"majority", "mean"}, default="majority"
        Aggregation. Majority ties go to the class with the highest mean probability when
        probabilities are given, else to the first class in sorted order.
    classes : array-like of shape (n_classes,), default=None
        Column order of probabilities (an estimator's ``classes_``); default: sorted labels of ``y_true``.

    Returns
    -------
    result : Bunch
        ``accuracy``, ``recognition_rate``, ``n_patients``, and ``patients``: a DataFrame indexed by
        patient with ``y_true``, ``y_pred`` (patient-level prediction), ``n_images`` and
        ``image_accuracy``.
    """
    if how not in ("majority", "mean"):
        raise ValueError(f"how must be 'majority' or 'mean', got {how!r}")
    y_true = _as_1d(y_true, "y_true")
    groups = _as_1d(groups, "groups")
    pred = np.asarray(y_pred)
    _check_lengths(y_true=y_true, y_pred=pred, groups=groups)
    classes = np.unique(y_true) if classes is None else np.asarray(classes)
    if pred.ndim == 2:
        if pred.shape[1] != len(classes):
            raise ValueError(
                f"y_pred has {pred.shape[1]} probability columns but there are {len(classes)} classes "
                f"{classes.tolist()}; pass classes= in the column order"
            )
        proba = pred.astype(float)
        labels_pred = classes[np.argmax(proba, axis=1)]
    elif pred.ndim == 1:
        if how == "mean":
            raise ValueError("how='mean' averages probabilities: pass y_pred of shape (n_samples, n_classes)")
        proba = None
        labels_pred = pred
        classes = np.unique(np.concatenate([classes, labels_pred]))
    else:
        raise ValueError(f"y_pred must be 1-D labels or 2-D probabilities, got shape {pred.shape}")

    frame = pd.DataFrame({"group": groups, "y_true": y_true, "correct": labels_pred == y_true})
    mixed = frame.groupby("group", sort=True)["y_true"].nunique()
    mixed = mixed[mixed > 1]
    if len(mixed):
        raise ValueError(
            f"{len(mixed)} patient(s) have images of several classes (e.g. {mixed.index[0]!r}), so there is no "
            "patient-level label; patient-level scores need one label per patient"
        )

    rows = {}
    for patient, idx in frame.groupby("group", sort=True).indices.items():
        if how == "mean":
            patient_pred = classes[np.argmax(proba[idx].mean(axis=0))]
        else:
            votes = np.array([(labels_pred[idx] == c).sum() for c in classes])
            tied = np.flatnonzero(votes == votes.max())
            if len(tied) > 1 and proba is not None:
                tied = tied[[np.argmax(proba[idx][:, tied].mean(axis=0))]]
            patient_pred = classes[tied[0]]
        rows[patient] = {
            "y_true": y_true[idx[0]],
            "y_pred": patient_pred,
            "n_images": len(idx),
            "image_accuracy": float(frame["correct"].to_numpy()[idx].mean()),
        }
    patients = pd.DataFrame.from_dict(rows, orient="index")
    patients.index.name = "patient"
    return Bunch(
        accuracy=float(accuracy_score(patients["y_true"].to_numpy(), patients["y_pred"].to_numpy())),
        recognition_rate=float(patients["image_accuracy"].mean()),
        n_patients=len(patients),
        patients=patients,
    )
