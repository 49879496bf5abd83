"""Command line: the command table, ``main``'s error contract, and the demo (offline, end to end).

The other commands are tested in tests/test_cli_<command>.py.
"""

from __future__ import annotations

import importlib.metadata
import re
import runpy
import sys

import joblib
import numpy as np
import pytest
from sklearn.base import clone
from sklearn.metrics import balanced_accuracy_score, classification_report
from sklearn.model_selection import StratifiedKFold, cross_val_predict
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

import skdfl
import skdfl.cli
from skdfl import BackboneEmbedder, FocalHeadClassifier
from skdfl.cli import COMMANDS, build_parser, main
from skdfl.datasets import data_dir, make_tissue_patches

FAST = ["--backbone", "resnet18", "--random-init", "--image-size", "32", "--epochs", "15", "--cv", "3", "--quiet"]


def test_help_lists_every_command_of_the_table(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    assert "{demo,backbones,fetch-weights,select,embed,tile,heatmap,pretrain}" in text
    assert len(COMMANDS) == 8
    assert build_parser().parse_args(["embed", "in", "out", "--backbone", "resnet18"]).command == "embed"


def test_version(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0
    assert capsys.readouterr().out.strip() == f"skdfl {skdfl.__version__}"


def test_a_new_command_is_one_function_in_the_table(monkeypatch, capsys):
    def add_echo_parser(subparsers):
        p = subparsers.add_parser("echo", help="print a word")
        p.add_argument("word")
        p.set_defaults(func=run_echo)
        return p

    def run_echo(args):
        if args.word == "bad":
            raise ValueError("bad word")
        print(args.word)
        return 3

    monkeypatch.setattr(skdfl.cli._main, "COMMANDS", (*COMMANDS, add_echo_parser))
    assert main(["echo", "hello"]) == 3
    assert capsys.readouterr().out == "hello\n"
    # Data and usage errors of any command: one line on stderr and exit code 2, no traceback.
    assert main(["echo", "bad"]) == 2
    assert capsys.readouterr().err == "skdfl echo: error: bad word\n"


def test_console_script_and_python_dash_m(monkeypatch, capsys):
    scripts = importlib.metadata.entry_points(group="console_scripts", name="skdfl")
    if not scripts:
        pytest.skip("skdfl is not installed (pip install -e .), so it has no console script")
    assert [ep.load() for ep in scripts] == [main]
    monkeypatch.setattr(sys, "argv", ["skdfl", "backbones", "--format", "csv", "--only", "medical"])
    with pytest.raises(SystemExit) as exit_info:
        runpy.run_module("skdfl.cli", run_name="__main__")
    assert exit_info.value.code == 0
    header = capsys.readouterr().out.splitlines()[0]
    assert header.startswith("name,") and "embedding_dim" in header


def test_demo_on_synthetic_data_reports_and_saves(tmp_path, capsys, one_torch_thread):
    out = tmp_path / "m.joblib"
    assert main(["demo", "--n-samples", "45", "--out", str(out), *FAST]) == 0
    text = capsys.readouterr().out
    assert "SYNTHETIC" in text
    assert "resnet18 with RANDOM weights" in text
    assert "3-fold cross-validated predictions" in text
    for stage in ["extract", "cross_validate", "fit_head", "save"]:
        assert stage in text
    assert not list(tmp_path.glob("*.tmp")), "no half-written file may be left behind"

    # The printed numbers are the right ones: redo the demo's protocol with scikit-learn directly.
    X, y = make_tissue_patches(45, random_state=0)
    Z = BackboneEmbedder("resnet18", pretrained=False, colors=["rgb"], image_size=32, verbose=0).fit_transform(X)
    head = make_pipeline(StandardScaler(), FocalHeadClassifier(max_epochs=15, noise_std=0.1, random_state=0))
    y_pred = cross_val_predict(head, Z, y, cv=StratifiedKFold(3, shuffle=True, random_state=0))
    printed = float(re.search(r"balanced accuracy: ([0-9.]+)", text).group(1))
    assert printed == pytest.approx(balanced_accuracy_score(y, y_pred), abs=5e-4)
    assert classification_report(y, y_pred, digits=3, zero_division=0) in text
    # The saved model is the head refitted on all embeddings, behind the same embedder.
    model = joblib.load(out)
    np.testing.assert_allclose(
        model.predict_proba(X), clone(head).fit(Z, y).predict_proba(Z), rtol=1e-5, atol=1e-6
    )


def test_demo_refuses_to_overwrite_a_model_without_force(tmp_path, capsys):
    out = tmp_path / "m.joblib"
    out.write_bytes(b"previous model")
    # Refused before any work (no embedding), naming the file and the way out.
    assert main(["demo", "--n-samples", "45", "--out", str(out), *FAST]) == 2
    err = capsys.readouterr().err
    assert str(out) in err and "--force" in err
    assert out.read_bytes() == b"previous model"
    assert main(["demo", "--n-samples", "45", "--out", str(out), "--force", *FAST]) == 0
    assert hasattr(joblib.load(out), "predict")


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
    assert "32 images, 8 classes" in text
    printed = float(re.search(r"balanced accuracy: ([0-9.]+) \(chance: 0\.125\)", text).group(1))
    assert 0.0 <= printed <= 1.0
