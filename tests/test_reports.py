"""skdfl.reports.task_report_markdown: binary and multiclass tables from out-of-fold probabilities."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import precision_score, recall_score

from skdfl.reports import safe_file_stem, task_report_markdown


def _table(md: str) -> dict[str, str]:
    rows = [line.strip("|").split("|") for line in md.splitlines() if line.startswith("| ")]
    return {k.strip(): v.strip() for k, v, *_ in rows}


def test_binary_report_positive_class_given_as_a_string():
    y = np.array([0, 0, 0, 0, 1, 1, 1, 1])
    p1 = np.array([0.1, 0.2, 0.7, 0.3, 0.8, 0.9, 0.4, 0.6])
    proba = np.column_stack([1 - p1, p1])
    # From the command line the positive class arrives as a string: it must find the integer class 0.
    md = task_report_markdown(y, proba, [0, 1], pos_label="0", title="T")
    assert md.startswith("# T\n") and "Positive class: `0`." in md
    y_pred = (p1 >= 0.5).astype(int)
    rows = _table(md)
    assert float(rows["precision"]) == pytest.approx(precision_score(y, y_pred, pos_label=0), abs=5e-4)
    assert float(rows["recall"]) == pytest.approx(recall_score(y, y_pred, pos_label=0), abs=5e-4)
    with pytest.raises(ValueError, match="pos_label 'x' is not a class"):
        task_report_markdown(y, proba, [0, 1], pos_label="x")


def test_binary_report_defaults_to_the_minority_class():
    y = np.array(["benign"] * 6 + ["malignant"] * 2)
    proba = np.tile([0.5, 0.5], (8, 1))
    assert "Positive class: `malignant`." in task_report_markdown(y, proba, ["benign", "malignant"])


def test_multiclass_report_and_patient_level():
    classes = np.array(["adi", "lym", "tum"])
    y = np.array(["adi", "adi", "lym", "lym", "tum", "tum"])
    proba = np.array([[0.8, 0.1, 0.1], [0.2, 0.7, 0.1], [0.1, 0.8, 0.1], [0.1, 0.6, 0.3], [0.1, 0.1, 0.8],
                      [0.3, 0.3, 0.4]])  # fmt: skip
    md = task_report_markdown(y, proba, classes, groups=["p1", "p1", "p2", "p2", "p3", "p3"])
    per_class = [line for line in md.splitlines() if line.startswith("| adi |")]
    # adi: one image of two predicted adi (recall 0.5), and the only adi prediction is right (precision 1);
    # one-vs-rest, the second adi image (0.2) ranks below one other image (0.3): ROC-AUC 7/8, AP 5/6.
    assert per_class == ["| adi | 1.000 | 0.500 | 0.667 | 0.875 | 0.833 | 2 |"]
    # Patient p1 averages to adi (0.5 vs 0.4): all three patients are right.
    assert "Patient level (3 patients, mean probability per patient): accuracy 1.000" in md

    mixed = task_report_markdown(y, proba, classes, groups=["p1"] * 6)
    assert "Patient level: not computed (" in mixed


def test_safe_file_stem():
    assert safe_file_stem("hf-hub:MahmoodLab/UNI v2") == "hf-hub_MahmoodLab_UNI_v2"
