"""Label-efficiency curves: how a head's score grows with the fraction of labelled data (Ciga et al.)."""

from __future__ import annotations

import warnings
from numbers import Integral

import numpy as np
import pandas as pd
from sklearn.base import clone
from sklearn.metrics import check_scoring
from sklearn.model_selection import StratifiedShuffleSplit
from sklearn.utils import check_random_state
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import check_array, check_consistent_length
from tqdm.auto import tqdm

from ..metrics import selection_scoring
from ._proxy import default_head, make_splits

__all__ = ["label_efficiency_curve"]


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


def _merge_clamped_fractions(fractions, orders, min_per_class) -> list[float]:
    """``fractions`` less those that label exactly the same samples as a smaller one, with a warning.

    Within a repeat, a fraction labels a prefix of each class's order, so two fractions with the same
    per-class counts in every split and repeat train on identical sets: one point, not several.
    """
    kept, merged = {}, {}
    for fraction in fractions:
        key = tuple(
            tuple(min(max(min_per_class, int(round(fraction * len(p)))), len(p)) for p in order.values())
            for *_, order in orders
        )
        if key in kept:
            merged.setdefault(kept[key], [kept[key]]).append(fraction)
        else:
            kept[key] = fraction
    for first, group in merged.items():
        n_train = sum(min(max(min_per_class, int(round(first * len(p)))), len(p)) for p in orders[0][3].values())
        warnings.warn(
            f"label fractions {', '.join(f'{f:g}' for f in group)} all give the same {n_train} labelled "
            f"training samples (each class keeps at least min_per_class={min_per_class}); they are merged "
            f"into one point (fraction {first:g}). Use more data or larger fractions for distinct points.",
            UserWarning,
            stacklevel=3,
        )
    return sorted(kept.values())


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
        Fractions of each class of the training split that are labelled. Fractions that label the same
        samples as a smaller one (small classes clamp to ``min_per_class``, rounding) are merged into
        the smaller one's point, with a ``UserWarning``.
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
        One row per distinct labelled set size: ``fraction`` (the smallest requested fraction giving
        it), ``n_train`` (mean labelled samples, the x-axis of
        :func:`~skdfl.plots.plot_label_efficiency`), ``n_runs``,
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
    orders = []  # (split, repeat, seed, per-class shuffled positions), drawn in the same order as before
    for s, (_train, _test) in enumerate(splits):
        y_train = y[_train]
        for r in range(n_repeats):
            seed = int(rng.randint(np.iinfo(np.int32).max))
            perm_rng = np.random.RandomState(seed)
            orders.append(
                (s, r, seed, {c: perm_rng.permutation(np.flatnonzero(y_train == c)) for c in np.unique(y_train)})
            )
    fractions = _merge_clamped_fractions(fractions, orders, min_per_class)
    runs = []
    with tqdm(total=len(orders) * len(fractions), disable=not verbose, desc="label efficiency") as bar:
        for s, r, seed, order in orders:
            train, test = splits[s]
            for fraction in fractions:
                picked = train[_stratified_prefix(fraction, order, min_per_class)]
                estimator = clone(head)
                estimator.set_params(**_seed_params(estimator, seed))
                estimator.fit(Z[picked], y[picked])
                scores = scorer(estimator, Z[test], y[test])
                scores = scores if isinstance(scores, dict) else {"score": scores}
                runs.append({"split": s, "repeat": r, "fraction": fraction, "n_train": len(picked), **scores})
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

