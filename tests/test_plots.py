"""skdfl.plots figures (the ``skdfl select`` command that writes them: tests/test_cli_select.py)."""

from __future__ import annotations

import importlib.util

import numpy as np
import pandas as pd
import pytest
from matplotlib.collections import PathCollection
from matplotlib.container import BarContainer
from matplotlib.figure import Figure
from PIL import Image
from sklearn.metrics import confusion_matrix

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
    # Random-init rows are reference rows, labelled as such (issue 11, item 5).
    assert [t.get_text().split("\n")[1] for t in ax.get_xticklabels()] == [
        "(pretrained)", "(random init)", "(random init)"
    ]

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
    # "auto" is UMAP when umap-learn is installed, else t-SNE at this size.
    fig = plot_embedding_projection(Z, y, method="auto", max_points=30)
    scatters = [c for c in fig.axes[0].collections if isinstance(c, PathCollection)]
    assert sum(len(s.get_offsets()) for s in scatters) == 30
    expected = "UMAP" if importlib.util.find_spec("umap") is not None else "t-SNE"
    assert expected in fig.axes[0].get_title()
    with pytest.raises(ValueError, match="method must be"):
        plot_embedding_projection(Z, y, method="lda")


def test_plot_embedding_umap_separates_a_distinct_class():
    pytest.importorskip("umap", reason="umap-learn is an optional extra (pip install skdfl[umap])")
    rng = np.random.RandomState(0)
    y = np.repeat(["ADI", "LYM", "TUM"], 20)
    Z = rng.normal(size=(60, 12)) + 8 * (y[:, None] == "LYM")
    fig = plot_embedding_projection(Z, y, method="umap", random_state=0)
    ax = fig.axes[0]
    assert "UMAP" in ax.get_title() and ax.get_xlabel() == "UMAP 1"
    scatters = {c.get_label().split(" ")[0]: c.get_offsets() for c in ax.collections}
    lym, rest = scatters["LYM"], np.concatenate([scatters["ADI"], scatters["TUM"]])
    # Far apart in 12-D, so UMAP puts LYM in its own cluster: every LYM point is nearer LYM's centre than
    # any other point is.
    centre = lym.mean(axis=0)
    assert np.linalg.norm(lym - centre, axis=1).max() < np.linalg.norm(rest - centre, axis=1).min()


def test_plot_confusion_matrix_colour_bar_has_integer_ticks_for_counts():
    y_true = np.array(["a"] * 2 + ["b"] * 1 + ["c"] * 1)
    y_pred = np.array(["a", "a", "b", "c"])
    fig = plot_confusion_matrix(y_true, y_pred)  # counts 0..2: matplotlib's default ticks are 0.25 apart
    colour_bar = fig.axes[0].images[0].colorbar
    fig.canvas.draw()
    ticks = [t for t in colour_bar.get_ticks() if 0 <= t <= 2]
    assert len(ticks) >= 2 and all(float(t).is_integer() for t in ticks), ticks
    fig = plot_confusion_matrix(y_true, y_pred, normalize="true")  # proportions keep fractional ticks
    ticks = fig.axes[0].images[0].colorbar.get_ticks()
    assert not all(float(t).is_integer() for t in ticks)


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
    # x is the actual number of labelled samples (issue 11, item 6), not the requested fraction.
    np.testing.assert_allclose(line.get_xdata(), curve["n_train"])
    assert fig.axes[0].get_xlabel() == "labelled training samples"
    np.testing.assert_allclose(line.get_ydata(), curve["balanced_accuracy_mean"])
    _assert_png(save_figure(fig, tmp_path / "le.png"))
    with pytest.raises(ValueError, match="metric 'f1_macro'"):
        plot_label_efficiency(curve, metric="f1_macro")


def test_plot_label_efficiency_draws_one_point_per_n_train():
    # Three fractions that clamped to the same 8 samples (the CRC case of issue 11): one point, a warning.
    curve = pd.DataFrame(
        {
            "fraction": [0.05, 0.1, 0.2, 1.0],
            "n_train": [8, 8, 8, 40],
            "n_runs": [3] * 4,
            "balanced_accuracy_mean": [0.5, 0.52, 0.49, 0.9],
            "balanced_accuracy_std": [0.1] * 4,
        }
    )
    with pytest.warns(UserWarning, match="only 2 distinct n_train"):
        fig = plot_label_efficiency(curve)
    (line,) = fig.axes[0].get_lines()
    np.testing.assert_allclose(line.get_xdata(), [8, 40])
    np.testing.assert_allclose(line.get_ydata(), [0.5, 0.9])
