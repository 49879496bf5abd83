"""Backbone comparison through a plain :class:`~sklearn.model_selection.GridSearchCV`.

Simpler to compose than :func:`~skdfl.model_selection.compare_backbones` (the search is one estimator, so
it nests in another cross-validation), but every image is embedded again in every fold.
"""

from __future__ import annotations

from numbers import Integral

import pandas as pd
from sklearn.base import clone
from sklearn.model_selection import GridSearchCV, StratifiedKFold
from sklearn.pipeline import Pipeline

from ..embedder import BackboneEmbedder
from ..metrics import selection_scoring
from ._proxy import backbone_label, default_head, format_head_setting

__all__ = ["make_selection_search", "search_table"]


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
    are given). The scores equal those of :func:`~skdfl.model_selection.compare_backbones` on the same
    folds, but every image is embedded once per fold plus once for the refit, so use this route for small
    sets or when the search must be a single estimator (e.g. nested in another CV); :func:`search_table`
    turns ``cv_results_`` into the same tidy table.

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
            backbone = backbone_label(params.pop("backboneembedder"))
        else:
            backbone = ""
        row = {"backbone": backbone}
        for m in metrics:
            name = "score" if m == "score" else m
            row[f"{name}_mean"] = float(results[f"mean_test_{m}"][i])
            row[f"{name}_std"] = float(results[f"std_test_{m}"][i])
        row["fit_time_s"] = float(results["mean_fit_time"][i])
        if params:
            row["params"] = format_head_setting(params)
        rows.append(row)
    refit = search.refit if isinstance(search.refit, str) else metrics[0]
    return (
        pd.DataFrame(rows).sort_values(f"{refit}_mean", ascending=False, kind="stable").reset_index(drop=True)
    )

