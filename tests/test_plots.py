"""skdfl.plots figures and the ``skdfl select`` command that writes them."""

from __future__ import annotations

import argparse

import numpy as np
import pandas as pd
import pytest
from matplotlib.collections import PathCollection
from matplotlib.container import BarContainer
from matplotlib.figure import Figure
from PIL import Image
from sklearn.metrics import confusion_matrix

from skdfl._cli_select import add_select_parser
from skdfl.datasets import data_dir
from skdfl.plots import (
    plot_confusion_matrix,
    plot_embedding_projection,
    plot_label_efficiency,
    plot_selection,
    save_figure,
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
METRICS = ("balanced_accuracy", "cohen_kappa", "f1_weighted", "f1_macro")




def _assert_png(path):
    assert path.is_file() and path.stat().st_size > 1000, path
    assert path.read_bytes()[:8] == PNG_MAGIC
    with Image.open(path) as im:
        assert min(im.size) > 100


def _table(n=3):
    data = {"backbone": [f"net{i}" for i in range(n)], "weights": ["pretrained"] + ["random-init"] * (n - 1)}
    for m in METRICS:
        data[f"{m}_mean"] = np.linspace(0.9, 0.4, n)
        data[f"{m}_std"] = np.full(n, 0.05)
    return pd.DataFrame(data)


def test_plot_selection_has_one_bar_per_backbone_and_metric(tmp_path):
    table = _table(3)
    fig = plot_selection(table, metrics=["balanced_accuracy"])
    assert isinstance(fig, Figure)
    (ax,) = fig.axes
    containers = [c for c in ax.containers if isinstance(c, BarContainer)]
    assert len(containers) == 1 and len(containers[0]) == 3
    heights = [bar.get_height() for bar in containers[0]]
    np.testing.assert_allclose(heights, table["balanced_accuracy_mean"])
    assert [t.get_text().split("\n")[0] for t in ax.get_xticklabels()] == ["net0", "net1", "net2"]

    fig = plot_selection(table)
    bars = [c for c in fig.axes[0].containers if isinstance(c, BarContainer)]
    assert len(bars) == 4 and sum(len(c) for c in bars) == 12
    _assert_png(save_figure(fig, tmp_path / "nested" / "selection.png"))
    with pytest.raises(ValueError, match="not in the table"):
        plot_selection(table, metrics=["roc_auc"])


def test_plot_embedding_projection_one_artist_per_class(tmp_path):
    rng = np.random.RandomState(0)
    y = np.repeat(["ADI", "LYM", "TUM"], 20)
    Z = rng.normal(size=(60, 12)) + 3 * (y[:, None] == "LYM")
    fig = plot_embedding_projection(Z, y, method="pca")
    scatters = [c for c in fig.axes[0].collections if isinstance(c, PathCollection)]
    assert len(scatters) == 3
    assert sum(len(s.get_offsets()) for s in scatters) == 60
    assert "PCA" in fig.axes[0].get_title()
    _assert_png(save_figure(fig, tmp_path / "projection.png"))
    # Without umap-learn, "auto" is t-SNE at this size.
    fig = plot_embedding_projection(Z, y, method="auto", max_points=30)
    scatters = [c for c in fig.axes[0].collections if isinstance(c, PathCollection)]
    assert sum(len(s.get_offsets()) for s in scatters) == 30
    with pytest.raises(ValueError, match="method must be"):
        plot_embedding_projection(Z, y, method="lda")


def test_plot_confusion_matrix_shows_sklearn_counts(tmp_path):
    y_true = np.array(["a", "a", "b", "b", "c", "c", "c"])
    y_pred = np.array(["a", "b", "b", "b", "c", "a", "c"])
    fig = plot_confusion_matrix(y_true, y_pred)
    image = fig.axes[0].images[0].get_array()
    np.testing.assert_array_equal(image, confusion_matrix(y_true, y_pred))
    _assert_png(save_figure(fig, tmp_path / "confusion.png"))


def test_plot_label_efficiency_line_is_the_mean(tmp_path):
    curve = pd.DataFrame(
        {
            "fraction": [0.05, 0.1, 0.2, 0.5, 1.0],
            "n_train": [5, 10, 20, 50, 100],
            "n_runs": [3] * 5,
            "balanced_accuracy_mean": [0.55, 0.6, 0.7, 0.78, 0.8],
            "balanced_accuracy_std": [0.1, 0.06, 0.04, 0.02, 0.01],
        }
    )
    fig = plot_label_efficiency(curve)
    (line,) = fig.axes[0].get_lines()
    np.testing.assert_allclose(line.get_xdata(), curve["fraction"])
    np.testing.assert_allclose(line.get_ydata(), curve["balanced_accuracy_mean"])
    _assert_png(save_figure(fig, tmp_path / "le.png"))
    with pytest.raises(ValueError, match="metric 'f1_macro'"):
        plot_label_efficiency(curve, metric="f1_macro")


# ----------------------------------------------------------------------------------------- CLI
def _run_cli(argv):
    parser = argparse.ArgumentParser(prog="skdfl")
    add_select_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["select", *argv])
    return args.func(args)


def _write_csv_dataset(root, n=24):
    rng = np.random.RandomState(0)
    rows = []
    for i in range(n):
        label = ["benign", "malignant"][i % 2]
        img = rng.randint(0, 256, size=(24, 24, 3)).astype(np.uint8)
        img[..., 2] = 40 if label == "benign" else 200
        path = root / "images" / f"{i}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(img).save(path)
        # 12 patients, each with one label (a patient-level label exists).
        rows.append({"path": f"images/{i}.png", "label": label, "patient": f"p{i % 12}"})
    pd.DataFrame(rows).to_csv(root / "labels.csv", index=False)
    return root / "labels.csv"


def test_cli_select_writes_table_and_plots(tmp_path, capsys):
    csv = _write_csv_dataset(tmp_path / "data")
    out = tmp_path / "report"
    code = _run_cli(
        [
            "--data",
            str(csv),
            "--backbones",
            "resnet18,mobilenetv3_small_050",
            "--random-init",
            "--image-size",
            "32",
            "--cv",
            "3",
            "--epochs",
            "3",
            "--repeats",
            "1",
            "--fractions",
            "0.5,1.0",
            "--out",
            str(out),
            "--quiet",
        ]
    )
    assert code == 0
    table = pd.read_csv(out / "selection.csv")
    assert sorted(table["backbone"]) == ["mobilenetv3_small_050", "resnet18"]
    assert table["weights"].eq("random-init").all()
    best = table["backbone"].iloc[0]
    for name in (
        "selection.png",
        f"projection_{best}.png",
        f"confusion_{best}.png",
        f"label_efficiency_{best}.png",
    ):
        _assert_png(out / name)
    md = (out / "selection.md").read_text()
    assert md.count("| resnet18 |") == 1 and "Command: `skdfl select --data" in md
    assert "patient-grouped" in md  # 'patient' column picked up by --group-col auto
    report = (out / f"task_report_{best}.md").read_text()
    assert "Positive class" in report and "pr_auc" in report and "Patient level (12 patients" in report
    assert "best:" in capsys.readouterr().out


def test_cli_select_errors(tmp_path):
    csv = _write_csv_dataset(tmp_path / "data", n=8)
    with pytest.raises(ValueError, match="--random-init names"):
        _run_cli(
            [
                "--data",
                str(csv),
                "--backbones",
                "resnet18",
                "--random-init",
                "vit_small_patch16_224",
                "--out",
                str(tmp_path / "r"),
            ]
        )
    with pytest.raises(FileNotFoundError):
        _run_cli(
            ["--data", str(tmp_path / "missing.csv"), "--backbones", "resnet18", "--out", str(tmp_path / "r")]
        )
    with pytest.raises(ValueError, match="single class folder"):
        _run_cli(["--data", str(tmp_path / "data"), "--backbones", "resnet18", "--out", str(tmp_path / "r")])


@pytest.mark.data
def test_cli_select_on_real_crc_tiles(tmp_path):
    csv = data_dir() / "crc_val_he_7k_mini" / "labels.csv"
    if not csv.is_file():
        pytest.skip(f"real data not found: {csv} (set SKDFL_DATA_DIR or put shared/data beside the repo)")
    out = tmp_path / "report"
    code = _run_cli(
        [
            "--data",
            str(csv),
            "--backbones",
            "resnet18,mobilenetv3_small_050",
            "--random-init",
            "--image-size",
            "64",
            "--cv",
            "2",
            "--epochs",
            "10",
            "--repeats",
            "1",
            "--out",
            str(out),
            "--quiet",
        ]
    )
    assert code == 0
    table = pd.read_csv(out / "selection.csv")
    assert len(table) == 2 and (table["embedding_dim"] > 0).all()
    best = table["backbone"].iloc[0]
    _assert_png(out / f"confusion_{best}.png")
    assert "| class |" in (out / f"task_report_{best}.md").read_text()  # 8-class per-class report
