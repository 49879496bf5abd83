"""Backbone comparison on the proxy task: embed once per backbone, cross-validate heads on the embeddings.

The DFL paper chooses its backbone with a proxy task: embed a labelled evaluation set with every
candidate backbone, train a single dense softmax layer with focal loss, Adam and Gaussian input noise on
the embeddings, and compare balanced accuracy, Cohen's kappa and weighted F1 (its Table 1).
:func:`compare_backbones` does exactly that, extracting each backbone's embeddings **once** and
cross-validating heads on the embedding matrix.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping

import numpy as np
import pandas as pd
from sklearn.base import clone
from sklearn.model_selection import ParameterGrid, cross_validate
from sklearn.utils import _safe_indexing
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import _num_samples, check_consistent_length
from tqdm.auto import tqdm

from ..embedder import BackboneEmbedder
from ..metrics import selection_scoring
from ._proxy import (
    backbone_label,
    default_head,
    format_head_setting,
    make_splits,
    set_head_params,
    weights_label,
)
from ._tables import selection_summary

__all__ = ["compare_backbones"]


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
        resolved.append((str(name) if name is not None else backbone_label(embedder), embedder))
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
        ``sort_by`` and the verdict of :func:`selection_summary`: ``best`` (the best row that is not a
        random-init reference; ``None`` if all are), ``runner_up``, ``within_noise`` and
        ``references_above``. Random-init rows are ranked by score like the others but are reference
        rows, never ``best``.
    embeddings : dict name -> ndarray of shape (n_samples, n_features)
        Only with ``return_embeddings=True``.

    Examples
    --------
    >>> from skdfl.datasets import make_tissue_patches
    >>> from skdfl.model_selection import compare_backbones
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
            row = {"backbone": name, "weights": weights_label(embedder)}
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
                row["head_params"] = format_head_setting(setting)
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
    summary = selection_summary(table, sort_by=sort_by)
    table.attrs.update(
        best=summary.best, runner_up=summary.runner_up, within_noise=summary.within_noise,
        references_above=summary.references_above,
    )  # fmt: skip
    return (table, embeddings) if return_embeddings else table

