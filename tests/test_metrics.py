"""skdfl.metrics: every number against scikit-learn's own functions on fixed, hand-written predictions."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import (
    accuracy_score,
    average_precision_score,
    balanced_accuracy_score,
    classification_report,
    cohen_kappa_score,
    f1_score,
    get_scorer,
    precision_score,
    recall_score,
    roc_auc_score,
)

from skdfl.metrics import (
    METRIC_DISPLAY_NAMES,
    SELECTION_METRICS,
    binary_report,
    metric_display_name,
    multiclass_report,
    patient_level_scores,
    selection_scoring,
    table_metrics,
)

# Ten samples, positive class 1: 3 TP, 1 FN (score 0.40), 2 FP (0.55, 0.90), 4 TN.
Y_BIN = np.array([1, 1, 1, 1, 0, 0, 0, 0, 0, 0])
S_BIN = np.array([0.95, 0.80, 0.60, 0.40, 0.90, 0.55, 0.30, 0.20, 0.10, 0.05])

Y_MC = np.array(["adi", "adi", "adi", "lym", "lym", "lym", "tum", "tum", "tum", "tum"])
P_MC = np.array(["adi", "adi", "lym", "lym", "lym", "tum", "tum", "tum", "adi", "tum"])
PROBA_MC = np.array(
    [  # columns: adi, lym, tum; argmax equals P_MC
        [0.8, 0.1, 0.1],
        [0.6, 0.3, 0.1],
        [0.3, 0.5, 0.2],
        [0.2, 0.7, 0.1],
        [0.1, 0.8, 0.1],
        [0.2, 0.3, 0.5],
        [0.1, 0.2, 0.7],
        [0.2, 0.2, 0.6],
        [0.5, 0.1, 0.4],
        [0.1, 0.1, 0.8],
    ]
)


@pytest.mark.parametrize("n_classes", [2, 4])
def test_selection_scoring_matches_sklearn_functions(n_classes):
    scoring = selection_scoring()
    assert tuple(scoring) == SELECTION_METRICS
    rng = np.random.RandomState(0)
    y = np.arange(80) % n_classes
    X = rng.normal(size=(80, 4)) + 0.7 * y[:, None]  # ordered, overlapping classes
    clf = LogisticRegression().fit(X, y)
    y_pred = clf.predict(X)
    expected = {
        "balanced_accuracy": balanced_accuracy_score(y, y_pred),
        "cohen_kappa": cohen_kappa_score(y, y_pred),
        "f1_weighted": f1_score(y, y_pred, average="weighted"),
        "f1_macro": f1_score(y, y_pred, average="macro"),
    }
    for name, scorer in scoring.items():
        scorer = get_scorer(scorer) if isinstance(scorer, str) else scorer
        assert scorer(clf, X, y) == pytest.approx(expected[name], abs=1e-12)
    if n_classes > 2:  # weighted kappas differ from Cohen's (unweighted) kappa only with > 2 classes
        assert abs(cohen_kappa_score(y, y_pred, weights="quadratic") - expected["cohen_kappa"]) > 0.02
        assert abs(cohen_kappa_score(y, y_pred, weights="linear") - expected["cohen_kappa"]) > 0.02
        assert abs(balanced_accuracy_score(y, y_pred, adjusted=True) - expected["balanced_accuracy"]) > 0.02
        assert abs(f1_score(y, y_pred, average="micro") - expected["f1_weighted"]) > 1e-3
    assert selection_scoring() is not scoring  # a fresh dict: callers may extend it


def test_binary_report_equals_sklearn():
    report = binary_report(Y_BIN, S_BIN)
    y_pred = (S_BIN >= 0.5).astype(int)
    assert report["precision"] == pytest.approx(precision_score(Y_BIN, y_pred)) == pytest.approx(3 / 5)
    assert report["recall"] == pytest.approx(recall_score(Y_BIN, y_pred)) == pytest.approx(3 / 4)
    assert (
        report["specificity"]
        == pytest.approx(recall_score(Y_BIN, y_pred, pos_label=0))
        == pytest.approx(4 / 6)
    )
    assert report["f1"] == pytest.approx(f1_score(Y_BIN, y_pred))
    assert report["balanced_accuracy"] == pytest.approx(balanced_accuracy_score(Y_BIN, y_pred))
    assert report["pr_auc"] == pytest.approx(average_precision_score(Y_BIN, S_BIN))
    assert report["roc_auc"] == pytest.approx(roc_auc_score(Y_BIN, S_BIN))
    assert (report["n_positive"], report["n_negative"]) == (4, 6)


def test_binary_report_string_labels_threshold_and_proba_columns():
    labels = np.where(Y_BIN == 1, "IDC", "non_IDC")
    with pytest.raises(ValueError, match="pass pos_label"):
        binary_report(labels, S_BIN)
    report = binary_report(labels, S_BIN, pos_label="IDC", threshold=0.7)
    y_pred = np.where(S_BIN >= 0.7, "IDC", "non_IDC")
    assert report["precision"] == pytest.approx(precision_score(labels, y_pred, pos_label="IDC"))
    assert report["recall"] == pytest.approx(recall_score(labels, y_pred, pos_label="IDC"))
    assert report["pr_auc"] == pytest.approx(average_precision_score(labels == "IDC", S_BIN))
    # predict_proba output: columns in sorted class order ("IDC", "non_IDC"), positive column picked.
    proba = np.column_stack([S_BIN, 1 - S_BIN])
    assert binary_report(labels, proba, pos_label="IDC", threshold=0.7) == report
    with pytest.raises(ValueError, match="exactly 2 classes"):
        binary_report(np.zeros(4), np.linspace(0, 1, 4))
    with pytest.raises(ValueError, match="pos_label='x'"):
        binary_report(labels, S_BIN, pos_label="x")


def test_multiclass_report_equals_sklearn():
    report = multiclass_report(Y_MC, P_MC, y_proba=PROBA_MC)
    expected = classification_report(Y_MC, P_MC, output_dict=True, zero_division=0)
    for cls in ("adi", "lym", "tum"):
        row = report.per_class.loc[cls]
        assert row["precision"] == pytest.approx(expected[cls]["precision"])
        assert row["recall"] == pytest.approx(expected[cls]["recall"])
        assert row["f1"] == pytest.approx(expected[cls]["f1-score"])
        assert row["support"] == expected[cls]["support"]
    assert report.per_class.loc["adi", "precision"] == pytest.approx(2 / 3)  # by hand: 2 of 3 "adi" calls
    scores = report.scores
    assert scores["accuracy"] == pytest.approx(accuracy_score(Y_MC, P_MC)) == pytest.approx(0.7)
    assert scores["balanced_accuracy"] == pytest.approx(balanced_accuracy_score(Y_MC, P_MC))
    assert scores["cohen_kappa"] == pytest.approx(cohen_kappa_score(Y_MC, P_MC))
    assert scores["f1_weighted"] == pytest.approx(f1_score(Y_MC, P_MC, average="weighted"))
    assert scores["f1_macro"] == pytest.approx(f1_score(Y_MC, P_MC, average="macro"))
    for k, cls in enumerate(("adi", "lym", "tum")):
        assert report.per_class.loc[cls, "roc_auc"] == pytest.approx(
            roc_auc_score(Y_MC == cls, PROBA_MC[:, k])
        )
        assert report.per_class.loc[cls, "pr_auc"] == pytest.approx(
            average_precision_score(Y_MC == cls, PROBA_MC[:, k])
        )
    assert scores["roc_auc_ovr_macro"] == pytest.approx(
        roc_auc_score(Y_MC, PROBA_MC, multi_class="ovr", average="macro")
    )
    with pytest.raises(ValueError, match="y_proba must have shape"):
        multiclass_report(Y_MC, P_MC, y_proba=PROBA_MC[:, :2])


def test_patient_level_majority_by_hand():
    y_true = np.array(["B", "B", "B", "M", "M", "M", "M", "B"])
    y_pred = np.array(["B", "B", "M", "B", "M", "M", "B", "M"])
    groups = np.array(["p1", "p1", "p1", "p2", "p2", "p2", "p2", "p3"])
    res = patient_level_scores(y_true, y_pred, groups)
    # p1: votes B,B,M -> B (right, 2/3 images); p2: B,M,M,B tie -> first sorted class "B" (wrong, 2/4);
    # p3: M (wrong, 0/1).
    assert res.patients["y_pred"].tolist() == ["B", "B", "M"]
    assert res.patients["n_images"].tolist() == [3, 4, 1]
    assert res.accuracy == pytest.approx(1 / 3)
    assert res.recognition_rate == pytest.approx((2 / 3 + 2 / 4 + 0) / 3)
    assert res.n_patients == 3


def test_patient_level_mean_and_tie_break_with_probabilities():
    y_true = np.array(["B", "B", "B", "M", "M", "M", "M", "B"])
    groups = np.array(["p1", "p1", "p1", "p2", "p2", "p2", "p2", "p3"])
    proba_m = np.array([0.1, 0.2, 0.9, 0.45, 0.8, 0.7, 0.4, 0.6])  # P(M); columns B, M
    proba = np.column_stack([1 - proba_m, proba_m])
    mean = patient_level_scores(y_true, proba, groups, how="mean")
    # Mean P(M): p1 0.4 -> B, p2 0.5875 -> M, p3 0.6 -> M.
    assert mean.patients["y_pred"].tolist() == ["B", "M", "M"]
    assert mean.accuracy == pytest.approx(2 / 3)
    majority = patient_level_scores(y_true, proba, groups, how="majority")
    # p2 votes B,M,M,B: the tie goes to the higher mean probability, M.
    assert majority.patients.loc["p2", "y_pred"] == "M"


def test_patient_level_errors():
    with pytest.raises(ValueError, match="several classes"):
        patient_level_scores([0, 1, 1], [0, 1, 1], ["a", "a", "b"])
    with pytest.raises(ValueError, match="averages probabilities"):
        patient_level_scores([0, 1], [0, 1], ["a", "b"], how="mean")
    with pytest.raises(ValueError, match="how must be"):
        patient_level_scores([0, 1], [0, 1], ["a", "b"], how="median")
    with pytest.raises(ValueError, match="inconsistent numbers of samples"):
        patient_level_scores([0, 1], [0, 1, 1], ["a", "b"])


def test_table_metrics_are_the_mean_std_pairs_in_display_order():
    table = pd.DataFrame(
        columns=["backbone", "score_mean", "score_std", "f1_macro_mean", "f1_macro_std", "cohen_kappa_mean",
                 "cohen_kappa_std", "balanced_accuracy_mean", "images_per_s", "fit_time_mean"]
    )  # fmt: skip
    # Selection metrics first in SELECTION_METRICS order, then others in column order; a _mean without
    # its _std (balanced_accuracy, fit_time) is no metric column.
    assert table_metrics(table) == ["cohen_kappa", "f1_macro", "score"]
    assert table_metrics(pd.DataFrame(columns=["fraction", "n_train"])) == []


def test_every_selection_metric_has_a_display_name():
    assert set(METRIC_DISPLAY_NAMES) == set(SELECTION_METRICS)
    assert metric_display_name("cohen_kappa") == "Cohen's kappa"
    assert metric_display_name("roc_auc") == "roc_auc"

