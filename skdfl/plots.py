"""Figures of a backbone selection: the score table, an embedding projection, a confusion matrix and
the label-efficiency curve.

Every function returns a :class:`matplotlib.figure.Figure` built without :mod:`matplotlib.pyplot`, so
nothing depends on (or changes) the global backend or figure registry: figures render with Agg when saved,
are garbage-collected like any object, and still display inline in Jupyter. Pass ``ax=`` to draw into an
existing axes instead. :func:`save_figure` writes a PNG.
"""

from __future__ import annotations

import importlib.util
import os
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator
from sklearn.decomposition import PCA
from sklearn.manifold import TSNE
from sklearn.metrics import ConfusionMatrixDisplay
from sklearn.preprocessing import StandardScaler
from sklearn.utils import check_random_state
from sklearn.utils.validation import check_array
from threadpoolctl import threadpool_limits

from .metrics import REFERENCE_WEIGHTS, metric_display_name, table_metrics

__all__ = [
    "plot_confusion_matrix",
    "plot_embedding_projection",
    "plot_label_efficiency",
    "plot_selection",
    "save_figure",
]

#: Above this many samples ``method="auto"`` prefers PCA to t-SNE (t-SNE is quadratic-ish and slow on
#: a shared CPU; UMAP, when installed, is used at any size).
TSNE_MAX_SAMPLES = 3000


def _figure_and_axes(ax, figsize):
    if ax is not None:
        return ax.figure, ax
    fig = Figure(figsize=figsize, layout="constrained")
    return fig, fig.add_subplot()


def save_figure(fig: Figure, path, *, dpi=120) -> Path:
    """Save ``fig`` (format from the suffix, e.g. ``.png``), creating the parent folder.

    Returns
    -------
    path : pathlib.Path
    """
    path = Path(os.fspath(path))
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi)
    return path


def plot_selection(table: pd.DataFrame, *, metrics=None, ax=None, title=None) -> Figure:
    """Grouped bar chart of a selection table: one group per backbone, one bar per metric, std error bars.

    Parameters
    ----------
    table : DataFrame
        Output of :func:`skdfl.model_selection.compare_backbones` (or
        :func:`~skdfl.model_selection.search_table`): ``backbone`` and ``<metric>_mean``/``<metric>_std``
        columns, best first.
    metrics : list of str, default=None
        Metrics to draw; default every metric of the table (balanced accuracy, Cohen's kappa, weighted F1,
        macro F1). Each metric is one bar container of ``len(table)`` bars.
    ax : matplotlib Axes, default=None
        Draw here instead of a new figure.
    title : str, default=None

    Returns
    -------
    fig : Figure
    """
    available = table_metrics(table)
    metrics = available if metrics is None else list(metrics)
    missing = [m for m in metrics if m not in available]
    if missing or not metrics:
        raise ValueError(f"metrics {missing or metrics} are not in the table; it has {available}")
    labels = table["backbone"].astype(str).tolist()
    if "weights" in table:
        labels = [
            f"{b}\n({'random init' if w == REFERENCE_WEIGHTS else w})"
            for b, w in zip(labels, table["weights"].astype(str), strict=True)
        ]
    if "head_params" in table:
        labels = [f"{b}\n{h}" for b, h in zip(labels, table["head_params"].astype(str), strict=True)]
    n, k = len(table), len(metrics)
    fig, ax = _figure_and_axes(ax, (max(5.0, 1.2 + 0.45 * n * k + 0.4 * n), 4.2))
    width = 0.8 / k
    x = np.arange(n)
    for j, m in enumerate(metrics):
        means = table[f"{m}_mean"].to_numpy(dtype=float)
        stds = table[f"{m}_std"].to_numpy(dtype=float)
        bars = ax.bar(
            x + (j - (k - 1) / 2) * width, means, width, yerr=stds, capsize=3, label=metric_display_name(m)
        )
        ax.bar_label(bars, fmt="%.2f", fontsize=7, padding=2)
    ax.set_xticks(x, labels, fontsize=8)
    low = min(0.0, float(np.nanmin([table[f"{m}_mean"].min() for m in metrics])))
    # Headroom above 1.0 keeps the legend clear of bars and their labels.
    ax.set_ylim(low, 1.2)
    ax.set_yticks([t for t in np.arange(-1.0, 1.01, 0.2) if t >= low - 1e-9])
    ax.set_ylabel("score (mean ± std over folds)")
    ax.axhline(0, color="0.5", linewidth=0.8)
    ax.legend(fontsize=8, ncols=min(k, 4), loc="upper right")
    if title is None:
        n_folds = table.attrs.get("n_folds")
        title = "Backbone selection" + (f" ({n_folds}-fold CV)" if n_folds else "")
    ax.set_title(title)
    return fig


def _project(Z: np.ndarray, method: str, random_state) -> tuple[np.ndarray, str]:
    if method == "auto":
        if importlib.util.find_spec("umap") is not None:
            method = "umap"
        else:
            method = "tsne" if len(Z) <= TSNE_MAX_SAMPLES else "pca"
    Z = StandardScaler().fit_transform(Z)
    if method == "pca":
        return PCA(n_components=2, random_state=random_state).fit_transform(Z), "PCA"
    if method == "tsne":
        # PCA to <= 50 dims first: the standard t-SNE preprocessing, faster and less noisy.
        reduced = PCA(n_components=min(50, *Z.shape), random_state=random_state).fit_transform(Z)
        perplexity = float(min(30.0, max(2.0, (len(Z) - 1) / 3)))
        tsne = TSNE(n_components=2, perplexity=perplexity, init="pca", random_state=random_state)
        # One OpenMP thread: at these sizes threading gains little, and on a busy shared CPU OpenMP's
        # spin-waiting made a 300-point t-SNE 10-25x slower (measured 1.7 s vs 19-44 s on 2 loaded cores).
        with threadpool_limits(limits=1, user_api="openmp"):
            return tsne.fit_transform(reduced), "t-SNE"
    if method == "umap":
        try:
            import umap
        except ImportError as exc:
            raise ImportError("method='umap' needs the umap-learn package: pip install umap-learn") from exc
        seed = random_state if isinstance(random_state, int) else None
        # A seeded UMAP runs on one thread; say so, instead of letting umap warn that it overrode n_jobs.
        n_neighbors = int(min(15, len(Z) - 1))
        reducer = umap.UMAP(
            n_components=2, n_neighbors=n_neighbors, random_state=seed, n_jobs=1 if seed is not None else -1
        )
        return reducer.fit_transform(Z), "UMAP"
    raise ValueError(f"method must be 'auto', 'umap', 'tsne' or 'pca', got {method!r}")


def plot_embedding_projection(
    Z, y, *, method="auto", max_points=5000, random_state=0, ax=None, title=None
) -> Figure:
    """2-D projection of embeddings, one colour (and one scatter artist) per class.

    Parameters
    ----------
    Z : array-like of shape (n_samples, n_features)
        Embeddings; standardised before projecting.
    y : array-like of shape (n_samples,)
        Class labels.
    method : {"auto", "umap", "tsne", "pca"}, default="auto"
        ``"auto"``: UMAP when ``umap-learn`` is installed, else t-SNE up to ``TSNE_MAX_SAMPLES`` samples,
        else PCA.
    max_points : int, default=5000
        Random subsample drawn above this many samples, to keep the projection fast and the plot legible.
    random_state : int, default=0
        Seed of the subsample and of the projection.
    ax : matplotlib Axes, default=None
    title : str, default=None
        Title prefix; the projection method is appended (``"<title>, t-SNE projection"``).

    Returns
    -------
    fig : Figure
    """
    Z = check_array(Z, dtype=np.float64)
    y = np.asarray(y)
    if len(y) != len(Z):
        raise ValueError(f"Z has {len(Z)} rows but y has {len(y)} labels")
    if len(Z) < 3:
        raise ValueError(f"a projection needs at least 3 samples, got {len(Z)}")
    rng = check_random_state(random_state)
    if len(Z) > max_points:
        keep = np.sort(rng.choice(len(Z), size=max_points, replace=False))
        Z, y = Z[keep], y[keep]
    xy, used = _project(Z, method, random_state)
    fig, ax = _figure_and_axes(ax, (5.6, 4.8))
    classes = np.unique(y)
    colors = [f"C{i % 10}" for i in range(len(classes))]
    for cls, color in zip(classes, colors, strict=True):
        mask = y == cls
        ax.scatter(
            xy[mask, 0],
            xy[mask, 1],
            s=10,
            alpha=0.75,
            color=color,
            label=f"{cls} ({mask.sum()})",
            linewidths=0,
        )
    ax.set_xlabel(f"{used} 1")
    ax.set_ylabel(f"{used} 2")
    ax.set_xticks([])
    ax.set_yticks([])
    ax.legend(fontsize=8, markerscale=2, loc="best", title="class (n)", title_fontsize=8)
    ax.set_title(f"{title or 'Embeddings'}, {used} projection")
    return fig


def plot_confusion_matrix(y_true, y_pred, *, labels=None, normalize=None, ax=None, title=None) -> Figure:
    """Confusion matrix (scikit-learn's :class:`~sklearn.metrics.ConfusionMatrixDisplay`).

    Parameters
    ----------
    y_true, y_pred : array-like of shape (n_samples,)
        True and predicted labels (e.g. out-of-fold predictions).
    labels : array-like, default=None
        Class order; default the sorted labels present.
    normalize : {"true", "pred", "all"} or None, default=None
        As in :func:`~sklearn.metrics.confusion_matrix`; ``None`` shows counts.
    ax : matplotlib Axes, default=None
    title : str, default=None

    Returns
    -------
    fig : Figure
    """
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    n_classes = len(np.unique(np.concatenate([y_true, y_pred]))) if labels is None else len(labels)
    size = min(12.0, 3.0 + 0.55 * n_classes)
    fig, ax = _figure_and_axes(ax, (size + 1.0, size))
    display = ConfusionMatrixDisplay.from_predictions(
        y_true,
        y_pred,
        labels=labels,
        normalize=normalize,
        ax=ax,
        colorbar=True,
        cmap="Blues",
        values_format=".2f" if normalize else "d",
        xticks_rotation=45 if n_classes > 4 else "horizontal",
    )
    if not normalize:
        # Counts are integers: a colour bar with ticks at 0.5, 1.5 ... would suggest otherwise.
        display.im_.colorbar.locator = MaxNLocator(integer=True)
        display.im_.colorbar.update_ticks()
    ax.set_title(title or "Confusion matrix" + (f" (normalised over {normalize})" if normalize else ""))
    return fig


def plot_label_efficiency(curve: pd.DataFrame, *, metric=None, ax=None, title=None, label=None) -> Figure:
    """Score versus the number of labelled training samples: a mean line with a ±1 std band.

    The x-axis is the actual number of labelled samples (``n_train``, log scale), each point annotated
    with its labelled fraction; rows with the same ``n_train`` are drawn once, with a ``UserWarning``.

    Parameters
    ----------
    curve : DataFrame
        Output of :func:`skdfl.model_selection.label_efficiency_curve`.
    metric : str, default=None
        Metric to draw; default the first of the curve (balanced accuracy for the default scoring).
    ax : matplotlib Axes, default=None
        Draw several curves (e.g. one per backbone) into one axes by passing it with ``label``.
    title, label : str, default=None

    Returns
    -------
    fig : Figure
    """
    available = table_metrics(curve)
    if not available:
        raise ValueError(
            "curve has no <metric>_mean/<metric>_std columns; pass label_efficiency_curve output"
        )
    metric = available[0] if metric is None else metric
    if metric not in available:
        raise ValueError(f"metric {metric!r} is not in the curve; it has {available}")
    if "n_train" not in curve:
        raise ValueError("curve has no n_train column; pass label_efficiency_curve output")
    # One point per distinct number of labelled samples: fractions that clamp to the same n are the same
    # experiment (older curves, written before label_efficiency_curve merged them, may repeat an n).
    n_train = curve["n_train"].to_numpy(dtype=float)
    distinct, first = np.unique(np.round(n_train, 6), return_index=True)
    if len(distinct) < len(curve):
        warnings.warn(
            f"the curve has {len(curve)} rows but only {len(distinct)} distinct n_train values; rows with "
            "the same number of labelled samples are drawn as one point (their first row)",
            UserWarning,
            stacklevel=2,
        )
    rows = curve.iloc[first]
    n = rows["n_train"].to_numpy(dtype=float)
    frac = rows["fraction"].to_numpy(dtype=float) if "fraction" in rows else None
    mean = rows[f"{metric}_mean"].to_numpy(dtype=float)
    std = rows[f"{metric}_std"].to_numpy(dtype=float)
    fig, ax = _figure_and_axes(ax, (5.6, 4.0))
    (line,) = ax.plot(n, mean, marker="o", label=label)
    ax.fill_between(n, mean - std, mean + std, alpha=0.2, color=line.get_color(), linewidth=0)
    ax.set_xscale("log")
    ax.set_xticks(n, [f"{v:g}" for v in n])
    ax.minorticks_off()
    ax.set_xlabel("labelled training samples")
    ax.set_ylabel(f"{metric_display_name(metric)} (mean ± std)")
    ax.grid(alpha=0.3)
    if frac is not None:
        for x, m, f in zip(n, mean, frac, strict=True):
            ax.annotate(
                f"{100 * f:g}%",
                (x, m),
                textcoords="offset points",
                xytext=(0, -14),
                ha="center",
                fontsize=7,
                color="0.35",
            )
    if label is not None:
        ax.legend(fontsize=8)
    ax.set_title(title or "Label efficiency")
    return fig
