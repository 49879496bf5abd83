"""Backbone selection on a proxy task, and label-efficiency curves.

The DFL paper chooses its backbone with a proxy task: embed a labelled evaluation set with every
candidate backbone, train a single dense softmax layer with focal loss, Adam and Gaussian input noise on
the embeddings, and compare balanced accuracy, Cohen's kappa and weighted F1 (its Table 1).
:func:`compare_backbones` does exactly that, extracting each backbone's embeddings **once** and
cross-validating heads on the embedding matrix; :func:`make_selection_search` is the same comparison
through a plain :class:`~sklearn.model_selection.GridSearchCV` (simpler to compose, but it re-embeds the
images in every fold). :func:`label_efficiency_curve` measures how a head's score grows with the
fraction of labelled training data (Ciga et al.).
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping
from numbers import Integral

import numpy as np
import pandas as pd
from sklearn.base import clone
from sklearn.metrics import check_scoring
from sklearn.model_selection import (
    GridSearchCV,
    ParameterGrid,
    StratifiedGroupKFold,
    StratifiedKFold,
    StratifiedShuffleSplit,
    cross_validate,
)
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.utils import _safe_indexing, check_random_state
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import _num_samples, check_array, check_consistent_length
from torch import nn
from tqdm.auto import tqdm

from .embedder import BackboneEmbedder
from .metrics import SELECTION_METRICS, selection_scoring

__all__ = [
    "PROXY_NOISE_STD",
    "compare_backbones",
    "default_head",
    "format_selection_table",
    "label_efficiency_curve",
    "make_selection_search",
    "make_splits",
    "search_table",
    "set_head_params",
]

#: Input-noise std of the default proxy head, on standardised embeddings. Mild on purpose: the proxy
#: task ranks backbones, and heavy noise would mostly measure how well a backbone tolerates it.
PROXY_NOISE_STD = 0.1

_DISPLAY_NAMES = {
    "balanced_accuracy": "balanced acc.",
    "cohen_kappa": "Cohen's kappa",
    "f1_weighted": "weighted F1",
    "f1_macro": "macro F1",
}


# ----------------------------------------------------------------------------------------- helpers
def default_head(random_state=0) -> Pipeline:
    """The paper's proxy head: ``StandardScaler`` then a single dense softmax layer with focal loss.

    ``FocalHeadClassifier(hidden_units=(), noise_std=PROXY_NOISE_STD, gamma=2.0)`` trained with Adam.
    The scaler comes first because the Gaussian noise std is meant relative to unit-variance features,
    which makes one setting comparable across backbones whose raw feature scales differ by orders of
    magnitude.

    Parameters
    ----------
    random_state : int or None, default=0
        Seed of the head's weight initialisation, shuffling and noise.

    Returns
    -------
    head : Pipeline
        Steps ``standardscaler`` and ``focalheadclassifier``.
    """
    from .heads import FocalHeadClassifier

    return make_pipeline(
        StandardScaler(),
        FocalHeadClassifier(hidden_units=(), noise_std=PROXY_NOISE_STD, gamma=2.0, random_state=random_state),
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


def _expand_settings(head_params) -> list[dict]:
    """``None`` | dict | list of dicts -> list of settings. In a dict, list values are grid axes."""
    if head_params is None:
        return [{}]
    specs = [head_params] if isinstance(head_params, Mapping) else list(head_params)
    settings: list[dict] = []
    for spec in specs:
        if not isinstance(spec, Mapping):
            raise TypeError(f"head_params must be a dict or a list of dicts, got an item {spec!r}")
        grid = {k: (v if isinstance(v, list) else [v]) for k, v in spec.items()}
        empty = [k for k, v in grid.items() if len(v) == 0]
        if empty:
            raise ValueError(f"head_params: empty list of values for {empty}")
        settings.extend(dict(s) for s in ParameterGrid(grid))
    return settings or [{}]


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


def _weights_label(embedder) -> str:
    if not isinstance(embedder, BackboneEmbedder):
        return "custom"
    if embedder.checkpoint_path is not None:
        return "checkpoint"
    if isinstance(embedder.backbone, nn.Module):
        return "module"
    return "pretrained" if embedder.pretrained else "random-init"


def _backbone_label(embedder) -> str:
    backbone = getattr(embedder, "backbone", None)
    if isinstance(backbone, str):
        return backbone
    return type(backbone if backbone is not None else embedder).__name__


def _resolve_backbones(backbones, embedder_params: Mapping | None) -> list[tuple[str, object]]:
    params = dict(embedder_params or {})
    if isinstance(backbones, (str, BackboneEmbedder)):
        backbones = [backbones]
    items = list(backbones.items()) if isinstance(backbones, Mapping) else [(None, b) for b in backbones]
    if not items:
        raise ValueError("backbones is empty: give at least one backbone name or embedder")
    resolved = []
    for name, spec in items:
        if isinstance(spec, str):
            embedder = BackboneEmbedder(spec, **params)
        elif hasattr(spec, "fit") and hasattr(spec, "transform"):
            # Instances keep their own parameters; embedder_params only configures names.
            embedder = clone(spec)
        else:
            raise TypeError(
                "a backbone must be a name, a BackboneEmbedder or a transformer with fit/transform, "
                f"got {spec!r}"
            )
        resolved.append((str(name) if name is not None else _backbone_label(embedder), embedder))
    names = [n for n, _ in resolved]
    duplicated = sorted({n for n in names if names.count(n) > 1})
    if duplicated:
        raise ValueError(
            f"backbone names must be unique, {duplicated} appear(s) twice; pass a dict name -> embedder"
        )
    return resolved


def _with_context(exc: Exception, message: str) -> Exception:
    """``exc``'s type with ``message`` (so callers can still catch ValueError, FileNotFoundError...)."""
    try:
        return type(exc)(message)
    except Exception:  # an exception class with a custom constructor
        return RuntimeError(message)


def _extract(name: str, embedder, X, *, verbose: int) -> tuple[np.ndarray, float]:
    """Fit ``embedder`` and embed all of ``X`` once, with a progress bar named after the backbone."""
    n = _num_samples(X)
    if "verbose" in embedder.get_params():
        embedder.set_params(verbose=0)  # our own bar replaces the embedder's unnamed one
    try:
        embedder.fit(X)
    except Exception as exc:
        hint = ""
        if (
            isinstance(exc, (OSError, RuntimeError))
            and getattr(embedder, "pretrained", False)
            and getattr(embedder, "checkpoint_path", None) is None
        ):
            hint = (
                " (are its pretrained weights available offline? pretrained=False gives a random-init "
                "baseline)"
            )
        raise _with_context(exc, f"backbone {name!r}{hint}: {exc}") from exc
    # Chunks of a few batches: fine-grained progress for a negligible per-call overhead.
    chunk = max(1, int(getattr(embedder, "batch_size", 32)) * 4)
    parts = []
    start = time.perf_counter()
    with tqdm(total=n, desc=name, unit="img", disable=not verbose, leave=True) as bar:
        for lo in range(0, n, chunk):
            idx = np.arange(lo, min(lo + chunk, n))
            parts.append(np.asarray(embedder.transform(_safe_indexing(X, idx)), dtype=np.float32))
            bar.update(len(idx))
    seconds = time.perf_counter() - start
    return np.concatenate(parts, axis=0), seconds


def _fmt_setting(setting: Mapping) -> str:
    return ", ".join(f"{k}={v!r}" for k, v in sorted(setting.items())) or "default"


# ------------------------------------------------------------------------------- compare_backbones
def compare_backbones(
    X,
    y,
    backbones,
    *,
    groups=None,
    head=None,
    head_params=None,
    report="best",
    cv=5,
    scoring=None,
    sort_by="balanced_accuracy",
    embedder_params=None,
    random_state=0,
    n_jobs=None,
    verbose=1,
    return_embeddings=False,
):
    """Rank backbones on a proxy task: embed once per backbone, cross-validate heads on the embeddings.

    Every backbone embeds all of ``X`` exactly once; the embedding matrix is then reused by every fold
    and every head setting. This does not leak labels into the test folds: the backbone is frozen and
    never sees ``y``, so each sample's embedding is the same whichever fold it lands in. Only the head
    (including its ``StandardScaler``) is fitted per fold, on the training part only. All backbones and
    head settings are evaluated on the same folds.

    Parameters
    ----------
    X : images
        Anything :class:`~skdfl.BackboneEmbedder` accepts: an ``(n, H, W, 3)`` array, a list of paths or
        arrays, or a DataFrame with one column per view source.
    y : array-like of shape (n_samples,)
        Class labels.
    backbones : str, BackboneEmbedder, sequence of those, or dict name -> (str or embedder)
        Names build ``BackboneEmbedder(name, **embedder_params)``. Embedder instances (any transformer)
        are cloned and keep their own parameters. Dict keys name the table rows.
    groups : array-like of shape (n_samples,), default=None
        Patient or slide of every sample. Folds are then grouped: no group is split across train and
        test (checked for any ``cv``).
    head : classifier, default=None
        Head trained on the embeddings; default :func:`default_head` (the paper's proxy head:
        ``StandardScaler`` + single-layer ``FocalHeadClassifier`` with noise). Any scikit-learn
        classifier or pipeline works.
    head_params : dict or list of dict, default=None
        Head settings to evaluate on every backbone's (shared) embeddings. In a dict, list values are
        grid axes (``{"lr": [1e-3, 1e-2], "gamma": 2.0}`` is two settings); a list of dicts is the union.
        Keys are routed by :func:`set_head_params` (short names reach the last step of a Pipeline).
    report : {"best", "all"}, default="best"
        ``"best"``: one row per backbone, its best head setting by ``sort_by`` (selected on the same CV
        scores, so with many settings the winner's score is optimistically biased). ``"all"``: one row
        per backbone and setting.
    cv : int, splitter or iterable of splits, default=5
        See :func:`make_splits`: an int is stratified k-fold, grouped when ``groups`` are given.
    scoring : dict, default=None
        Name -> scorer; default :func:`skdfl.metrics.selection_scoring` (balanced accuracy, Cohen's
        kappa, weighted F1, macro F1).
    sort_by : str, default="balanced_accuracy"
        Scoring key the rows are sorted by (mean over folds, best first).
    embedder_params : dict, default=None
        Keyword arguments of :class:`~skdfl.BackboneEmbedder` for backbones given by name, e.g.
        ``dict(pretrained=False, image_size=224, views=["x20"], colors=["rgb", "gray"],
        precision="bf16", batch_size=64)``.
    random_state : int, default=0
        Seed of the default head and of the fold shuffling of an int ``cv``.
    n_jobs : int, default=None
        Parallel folds in :func:`~sklearn.model_selection.cross_validate` (torch heads already use
        several threads; more jobs rarely help on a CPU).
    verbose : int, default=1
        ``>= 1``: one progress bar per backbone while embedding.
    return_embeddings : bool, default=False
        Also return the embeddings, so plots and further analyses do not embed again.

    Returns
    -------
    table : DataFrame
        One row per backbone (per setting with ``report="all"``), best first, with columns
        ``backbone``, ``weights`` (``pretrained``/``random-init``/``checkpoint``/``module``/``custom``),
        ``<metric>_mean`` and ``<metric>_std`` over folds (population std, ``ddof=0``, as in
        ``GridSearchCV``'s ``std_test_score``), ``embedding_dim``, ``images_per_s`` (samples embedded
        per second, all views of a sample; excludes loading the model), ``extract_s``, ``head_fit_s``
        (mean fit time of the head per fold), ``n_folds``, and ``head_params`` when several settings
        were evaluated. ``table.attrs`` holds ``n_samples``, ``n_classes``, ``n_folds``, ``grouped``,
        ``sort_by``.
    embeddings : dict name -> ndarray of shape (n_samples, n_features)
        Only with ``return_embeddings=True``.

    Examples
    --------
    >>> from skdfl.datasets import make_tissue_patches
    >>> from skdfl.selection import compare_backbones
    >>> X, y = make_tissue_patches(40, patch_size=32, random_state=0)
    >>> table = compare_backbones(X[["x20"]], y, ["resnet18", "efficientnet_b0"], cv=2, verbose=0,
    ...                           embedder_params=dict(pretrained=False, image_size=32))
    >>> table.columns[:4].tolist()
    ['backbone', 'weights', 'balanced_accuracy_mean', 'balanced_accuracy_std']
    """
    if report not in ("best", "all"):
        raise ValueError(f"report must be 'best' or 'all', got {report!r}")
    if isinstance(X, (str, bytes)):
        raise ValueError("X is a single path; pass one image (path or array) per sample")
    n = _num_samples(X)
    check_consistent_length(X, y, *(() if groups is None else (groups,)))
    y = np.asarray(y)
    if y.ndim != 1:
        raise ValueError(f"y must be one-dimensional, got shape {y.shape}")
    check_classification_targets(y)
    groups = None if groups is None else np.asarray(groups)
    scoring = selection_scoring() if scoring is None else dict(scoring)
    if sort_by not in scoring:
        raise ValueError(f"sort_by={sort_by!r} is not a scoring key; keys are {list(scoring)}")
    embedders = _resolve_backbones(backbones, embedder_params)
    splits = make_splits(cv, y, groups, random_state=random_state)
    base_head = default_head(random_state) if head is None else head
    settings = _expand_settings(head_params)

    rows, embeddings = [], {}
    for name, embedder in embedders:
        Z, seconds = _extract(name, embedder, X, verbose=verbose)
        if return_embeddings:
            embeddings[name] = Z
        candidates = []
        for setting in settings:
            estimator = set_head_params(clone(base_head), setting)
            result = cross_validate(
                estimator, Z, y, cv=splits, scoring=scoring, n_jobs=n_jobs, error_score="raise"
            )
            row = {"backbone": name, "weights": _weights_label(embedder)}
            for key in scoring:
                fold_scores = np.asarray(result[f"test_{key}"], dtype=float)
                row[f"{key}_mean"] = float(fold_scores.mean())
                row[f"{key}_std"] = float(fold_scores.std())
            row.update(
                embedding_dim=int(Z.shape[1]),
                images_per_s=n / seconds if seconds > 0 else math.inf,
                extract_s=seconds,
                head_fit_s=float(np.mean(result["fit_time"])),
                n_folds=len(splits),
            )
            if len(settings) > 1:
                row["head_params"] = _fmt_setting(setting)
            candidates.append(row)
        if report == "best":
            candidates = [max(candidates, key=lambda r: r[f"{sort_by}_mean"])]
        rows.extend(candidates)
        if verbose:
            best = max(candidates, key=lambda r: r[f"{sort_by}_mean"])
            tqdm.write(
                f"{name}: {sort_by} {best[f'{sort_by}_mean']:.3f} ± {best[f'{sort_by}_std']:.3f}, "
                f"{best['images_per_s']:.1f} img/s"
            )

    table = pd.DataFrame(rows)
    # Stable sort: ties keep the order the backbones were given in.
    table = table.sort_values(f"{sort_by}_mean", ascending=False, kind="stable").reset_index(drop=True)
    table.attrs.update(
        n_samples=n,
        n_classes=len(np.unique(y)),
        n_folds=len(splits),
        grouped=groups is not None,
        sort_by=sort_by,
    )
    return (table, embeddings) if return_embeddings else table


def format_selection_table(table: pd.DataFrame, *, digits=3) -> str:
    """Markdown rendering of a selection table: ``mean ± std`` cells, throughput and head time.

    Parameters
    ----------
    table : DataFrame
        Output of :func:`compare_backbones` (or :func:`search_table`).
    digits : int, default=3
        Decimals of the scores.

    Returns
    -------
    markdown : str
        A GitHub-flavoured Markdown table, one line per row, best first as in ``table``.
    """
    metrics = _selection_metric_columns(table)
    headers, columns = ["backbone"], [table["backbone"].astype(str)]
    if "weights" in table:
        headers.append("weights")
        columns.append(table["weights"].astype(str))
    if "head_params" in table:
        headers.append("head")
        columns.append(table["head_params"].astype(str))
    for m in metrics:
        headers.append(_DISPLAY_NAMES.get(m, m))
        columns.append(
            pd.Series(
                [
                    f"{a:.{digits}f} ± {b:.{digits}f}"
                    for a, b in zip(table[f"{m}_mean"], table[f"{m}_std"], strict=True)
                ],
                index=table.index,
            )
        )
    extra = [
        ("embedding_dim", "dim", "{:d}"),
        ("images_per_s", "img/s", "{:.1f}"),
        ("head_fit_s", "head fit (s)", "{:.2f}"),
        ("fit_time_s", "fit time (s)", "{:.1f}"),
    ]
    for col, header, fmt in extra:
        if col in table:
            headers.append(header)
            columns.append(table[col].map(lambda v, f=fmt: f.format(v)))
    aligns = ["---" if h in ("backbone", "weights", "head") else "---:" for h in headers]
    lines = ["| " + " | ".join(headers) + " |", "| " + " | ".join(aligns) + " |"]
    for i in range(len(table)):
        lines.append("| " + " | ".join(str(c.iloc[i]).replace("|", "\\|") for c in columns) + " |")
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------- the GridSearchCV route
def make_selection_search(
    backbones,
    *,
    head=None,
    cv=5,
    scoring=None,
    refit="balanced_accuracy",
    embedder_params=None,
    random_state=0,
    n_jobs=None,
    verbose=0,
):
    """The backbone comparison as a plain :class:`~sklearn.model_selection.GridSearchCV`.

    The pipeline is ``BackboneEmbedder -> head`` (the default head's ``StandardScaler`` and
    ``FocalHeadClassifier`` become steps ``standardscaler`` and ``focalheadclassifier``) and the grid is
    ``{"backboneembedder__backbone": names}`` (or ``{"backboneembedder": embedders}`` when instances
    are given). The scores equal :func:`compare_backbones`' on the same folds, but every image is
    embedded once per fold plus once for the refit, so use this route for small sets or when the search
    must be a single estimator (e.g. nested in another CV); :func:`search_table` turns ``cv_results_``
    into the same tidy table.

    Parameters
    ----------
    backbones : sequence of str or BackboneEmbedder
        Candidates.
    head : classifier, default=None
        Default :func:`default_head`. A Pipeline head is flattened into the search pipeline.
    cv : int, splitter or iterable of splits, default=5
        An int is ``StratifiedKFold(cv, shuffle=True, random_state=random_state)``. For patient-grouped
        folds pass ``StratifiedGroupKFold(...)`` and call ``fit(X, y, groups=patients)``.
    scoring : dict, default=None
        Default :func:`skdfl.metrics.selection_scoring`.
    refit : str or False, default="balanced_accuracy"
        Scoring key used to pick and refit ``best_estimator_``.
    embedder_params : dict, default=None
        ``BackboneEmbedder`` keyword arguments for the names (progress bars off unless given).
    random_state : int, default=0
        Seed of the default head and of an int ``cv``.
    n_jobs, verbose : passed to ``GridSearchCV``.

    Returns
    -------
    search : GridSearchCV
        Unfitted.
    """
    params = {"verbose": 0, **dict(embedder_params or {})}
    specs = [backbones] if isinstance(backbones, (str, BackboneEmbedder)) else list(backbones)
    if not specs:
        raise ValueError("backbones is empty: give at least one backbone name or embedder")
    head = default_head(random_state) if head is None else clone(head)
    head_steps = list(head.steps) if isinstance(head, Pipeline) else [(type(head).__name__.lower(), head)]
    if all(isinstance(s, str) for s in specs):
        first = BackboneEmbedder(specs[0], **params)
        grid = {"backboneembedder__backbone": specs}
    else:
        embedders = [BackboneEmbedder(s, **params) if isinstance(s, str) else clone(s) for s in specs]
        first = embedders[0]
        grid = {"backboneembedder": embedders}
    pipeline = Pipeline([("backboneembedder", first), *head_steps])
    if isinstance(cv, Integral) and not isinstance(cv, bool):
        cv = StratifiedKFold(n_splits=cv, shuffle=True, random_state=random_state)
    return GridSearchCV(
        pipeline,
        grid,
        scoring=selection_scoring() if scoring is None else scoring,
        refit=refit,
        cv=cv,
        n_jobs=n_jobs,
        verbose=verbose,
        error_score="raise",
    )


def search_table(search) -> pd.DataFrame:
    """Tidy, best-first table from a fitted :func:`make_selection_search` (or any ``GridSearchCV``).

    Columns: ``backbone``, ``<metric>_mean``/``<metric>_std`` for every scoring key, ``fit_time_s``
    (mean fit time per fold of the whole pipeline, embedding included) and ``params`` for other grid keys.
    """
    results = getattr(search, "cv_results_", None)
    if results is None:
        raise ValueError("search is not fitted: call search.fit(X, y) first")
    metrics = [k[len("mean_test_") :] for k in results if k.startswith("mean_test_")]
    rows = []
    for i, params in enumerate(results["params"]):
        params = dict(params)
        if "backboneembedder__backbone" in params:
            backbone = str(params.pop("backboneembedder__backbone"))
        elif "backboneembedder" in params:
            backbone = _backbone_label(params.pop("backboneembedder"))
        else:
            backbone = ""
        row = {"backbone": backbone}
        for m in metrics:
            name = "score" if m == "score" else m
            row[f"{name}_mean"] = float(results[f"mean_test_{m}"][i])
            row[f"{name}_std"] = float(results[f"std_test_{m}"][i])
        row["fit_time_s"] = float(results["mean_fit_time"][i])
        if params:
            row["params"] = _fmt_setting(params)
        rows.append(row)
    refit = search.refit if isinstance(search.refit, str) else metrics[0]
    return (
        pd.DataFrame(rows).sort_values(f"{refit}_mean", ascending=False, kind="stable").reset_index(drop=True)
    )


# ------------------------------------------------------------------------ label efficiency
def _seed_params(estimator, seed: int) -> dict:
    """Every ``random_state`` parameter of ``estimator`` (nested ones included) set to ``seed``."""
    return {
        k: seed
        for k in estimator.get_params(deep=True)
        if k == "random_state" or k.endswith("__random_state")
    }


def _stratified_prefix(fraction: float, order: dict, min_per_class: int) -> np.ndarray:
    """Positions (into the training split) of the first ``fraction`` of each class's shuffled order."""
    keep = []
    for positions in order.values():
        k = max(min_per_class, int(round(fraction * len(positions))))
        keep.append(positions[: min(k, len(positions))])
    return np.sort(np.concatenate(keep))


def label_efficiency_curve(
    Z,
    y,
    head=None,
    *,
    fractions=(0.05, 0.1, 0.2, 0.5, 1.0),
    n_repeats=5,
    groups=None,
    cv=None,
    test_size=0.25,
    scoring=None,
    min_per_class=1,
    random_state=0,
    return_runs=False,
    verbose=0,
):
    """Score of a head versus the fraction of labelled training data (Ciga et al.), mean and std.

    The test split(s) are fixed; for every repeat, each class of the training split is shuffled once and
    the first ``fraction`` of it is labelled, so within a repeat smaller label sets are subsets of
    larger ones (a smoother, paired curve). Each repeat also reseeds the head (every ``random_state``
    parameter), so the spread at ``fraction=1.0`` is the head's own seed variance.

    Parameters
    ----------
    Z : array-like of shape (n_samples, n_features)
        Embeddings (e.g. from :func:`compare_backbones` with ``return_embeddings=True``).
    y : array-like of shape (n_samples,)
        Class labels.
    head : classifier, default=None
        Default :func:`default_head`.
    fractions : sequence of float in (0, 1], default=(0.05, 0.1, 0.2, 0.5, 1.0)
        Fractions of each class of the training split that are labelled.
    n_repeats : int, default=5
        Subsamples (and head seeds) per fraction and split.
    groups : array-like of shape (n_samples,), default=None
        Patients: the test split(s) hold out whole patients. Subsampling of the training split is per
        image, stratified by class.
    cv : int, splitter or iterable of splits, default=None
        ``None``: one held-out split of ``test_size`` (``StratifiedShuffleSplit``, or with groups the
        first fold of ``StratifiedGroupKFold(round(1 / test_size))`` whose test part holds every
        class). Otherwise every test fold of :func:`make_splits` is used and the runs are pooled.
    test_size : float, default=0.25
        Held-out proportion when ``cv=None``.
    scoring : str or dict, default=None
        Default :func:`skdfl.metrics.selection_scoring` (all four selection metrics).
    min_per_class : int, default=1
        Labelled samples kept per class even at the smallest fractions, so every class is seen.
    random_state : int, default=0
        Seed of the splits, the subsamples and the head seeds.
    return_runs : bool, default=False
        Also return the per-run table.
    verbose : int, default=0
        ``>= 1``: a progress bar over runs.

    Returns
    -------
    curve : DataFrame
        One row per fraction: ``fraction``, ``n_train`` (mean labelled samples), ``n_runs``,
        ``<metric>_mean`` and ``<metric>_std`` (``ddof=0``).
    runs : DataFrame
        Only with ``return_runs=True``: ``split``, ``repeat``, ``fraction``, ``n_train`` and the scores.
    """
    Z = check_array(Z, dtype=None, ensure_2d=True)
    y = np.asarray(y)
    check_consistent_length(Z, y, *(() if groups is None else (groups,)))
    check_classification_targets(y)
    fractions = sorted({float(f) for f in fractions})
    if not fractions or fractions[0] <= 0 or fractions[-1] > 1:
        raise ValueError(f"fractions must be in (0, 1], got {fractions}")
    if not (isinstance(n_repeats, Integral) and n_repeats >= 1):
        raise ValueError(f"n_repeats must be a positive integer, got {n_repeats!r}")
    if not (isinstance(min_per_class, Integral) and min_per_class >= 1):
        raise ValueError(f"min_per_class must be a positive integer, got {min_per_class!r}")
    groups = None if groups is None else np.asarray(groups)
    if cv is None:
        if not 0 < test_size < 1:
            raise ValueError(f"test_size must be in (0, 1), got {test_size}")
        if groups is not None:
            n_folds = max(2, int(round(1 / test_size)))
            candidates = make_splits(n_folds, y, groups, random_state=random_state)
            # With few patients a grouped fold can miss a class, which makes per-class scores undefined;
            # take the first fold whose test part holds every class.
            n_classes = len(np.unique(y))
            complete = [s for s in candidates if len(np.unique(y[s[1]])) == n_classes]
            if not complete:
                raise ValueError(
                    f"no grouped held-out split of test_size={test_size} contains every class; pass cv= "
                    "with fewer folds or more patients"
                )
            splits = complete[:1]
        else:
            sss = StratifiedShuffleSplit(n_splits=1, test_size=test_size, random_state=random_state)
            splits = list(sss.split(Z, y))
    else:
        splits = make_splits(cv, y, groups, random_state=random_state)

    head = default_head(random_state) if head is None else head
    scoring = selection_scoring() if scoring is None else scoring
    scorer = check_scoring(head, scoring=scoring)
    rng = check_random_state(random_state)
    runs = []
    with tqdm(
        total=len(splits) * n_repeats * len(fractions), disable=not verbose, desc="label efficiency"
    ) as bar:
        for s, (train, test) in enumerate(splits):
            y_train = y[train]
            for r in range(n_repeats):
                seed = int(rng.randint(np.iinfo(np.int32).max))
                perm_rng = np.random.RandomState(seed)
                order = {c: perm_rng.permutation(np.flatnonzero(y_train == c)) for c in np.unique(y_train)}
                for fraction in fractions:
                    picked = train[_stratified_prefix(fraction, order, min_per_class)]
                    estimator = clone(head)
                    estimator.set_params(**_seed_params(estimator, seed))
                    estimator.fit(Z[picked], y[picked])
                    scores = scorer(estimator, Z[test], y[test])
                    scores = scores if isinstance(scores, dict) else {"score": scores}
                    runs.append(
                        {"split": s, "repeat": r, "fraction": fraction, "n_train": len(picked), **scores}
                    )
                    bar.update(1)
    runs = pd.DataFrame(runs)
    metrics = [c for c in runs.columns if c not in ("split", "repeat", "fraction", "n_train")]
    grouped = runs.groupby("fraction", sort=True)
    curve = pd.DataFrame({"fraction": fractions})
    curve["n_train"] = grouped["n_train"].mean().to_numpy()
    curve["n_runs"] = grouped.size().to_numpy()
    for m in metrics:
        curve[f"{m}_mean"] = grouped[m].mean().to_numpy()
        curve[f"{m}_std"] = grouped[m].std(ddof=0).to_numpy()
    return (curve, runs) if return_runs else curve


def _selection_metric_columns(table: pd.DataFrame) -> list[str]:
    """Metric names with ``_mean``/``_std`` columns in ``table``, selection metrics first."""
    names = [c[: -len("_mean")] for c in table.columns if c.endswith("_mean") and c[:-5] + "_std" in table]
    return sorted(
        names, key=lambda m: (SELECTION_METRICS.index(m) if m in SELECTION_METRICS else 99, names.index(m))
    )
