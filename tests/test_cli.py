"""Command line: the demo runs offline end to end and says which weights it used."""

from __future__ import annotations

import joblib
import pytest

from skdfl.cli import main
from skdfl.datasets import data_dir, make_tissue_patches

FAST = ["--backbone", "resnet18", "--random-init", "--image-size", "32", "--epochs", "15", "--cv", "3", "--quiet"]


def test_demo_on_synthetic_data_reports_and_saves(tmp_path, capsys):
    out = tmp_path / "m.joblib"
    assert main(["demo", "--n-samples", "45", "--out", str(out), *FAST]) == 0
    text = capsys.readouterr().out
    assert "SYNTHETIC" in text
    assert "resnet18 with RANDOM weights" in text
    assert "3-fold cross-validated predictions" in text
    for cls in ["stroma", "tumor", "lymphocytes"]:
        assert cls in text
    for stage in ["extract", "cross_validate", "fit_head", "save"]:
        assert stage in text
    model = joblib.load(out)
    X, _ = make_tissue_patches(5, random_state=9)
    assert set(model.predict(X)) <= {"stroma", "tumor", "lymphocytes"}
    assert not list(tmp_path.glob("*.tmp")), "no half-written file may be left behind"


def test_demo_bad_data_path_is_a_clear_error(tmp_path, capsys):
    assert main(["demo", "--data", str(tmp_path / "missing"), *FAST]) == 2
    assert "missing" in capsys.readouterr().err


@pytest.mark.data
def test_demo_on_real_crc_tiles(tmp_path, capsys):
    csv = data_dir() / "crc_val_he_7k_mini" / "labels.csv"
    if not csv.exists():
        pytest.skip(f"real data not found at {csv} (set SKDFL_DATA_DIR)")
    assert main(["demo", "--data", str(csv), "--out", str(tmp_path / "m.joblib"), "--cv", "2",
                 "--backbone", "resnet18", "--random-init", "--image-size", "64", "--epochs", "30",
                 "--quiet"]) == 0
    text = capsys.readouterr().out
    assert "32 images, 8 classes" in text and "balanced accuracy" in text
