"""skdfl.model_selection: folds, extract-once, the tidy table, the GridSearchCV route and label efficiency."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pandas as pd
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import balanced_accuracy_score, cohen_kappa_score, f1_score
from sklearn.model_selection import GroupKFold, StratifiedKFold
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import FunctionTransformer, StandardScaler
from torch import nn

from skdfl import BackboneEmbedder
from skdfl.model_selection import (
    compare_backbones,
    default_head,
    format_selection_table,
    label_efficiency_curve,
    make_selection_search,
    make_splits,
    search_table,
    selection_summary,
    set_head_params,
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")

METRIC_COLUMNS = [
    f"{m}_{s}"
    for m in ("balanced_accuracy", "cohen_kappa", "f1_weighted", "f1_macro")
    for s in ("mean", "std")
]




class CountingNet(nn.Module):
    """Mean colour -> linear features; records how many images each instance (by tag) embedded."""

    seen: Counter = Counter()

    def __init__(self, dim: int, tag: str):
        super().__init__()
        self.tag = tag
        self.proj = nn.Linear(3, dim)

    def forward(self, x):
        CountingNet.seen[self.tag] += x.shape[0]
        return self.proj(x.mean(dim=(2, 3)))


def _images(n=36, n_classes=3, seed=0):
    """Solid-ish colour images whose class shifts one channel: separable by mean colour."""
    rng = np.random.RandomState(seed)
    y = np.arange(n) % n_classes
    X = rng.randint(0, 120, size=(n, 16, 16, 3)).astype(np.uint8)
    X[..., 0] += (60 * y).astype(np.uint8)[:, None, None]
    return X, np.array(["a", "b", "c", "d"])[y]


def _counting_embedders(**params):
    kw = dict(image_size=16, precision="fp32", verbose=0, **params)
    return {
        "net8": BackboneEmbedder(CountingNet(8, "net8"), **kw),
        "net16": BackboneEmbedder(CountingNet(16, "net16"), **kw),
    }


def _logreg():
    return make_pipeline(StandardScaler(), LogisticRegression(max_iter=200))


# ------------------------------------------------------------------------------------------ splits
def test_grouped_splits_never_split_a_group():
    rng = np.random.RandomState(0)
    y = rng.randint(0, 2, size=120)
    groups = rng.randint(0, 12, size=120)
    splits = make_splits(4, y, groups, random_state=0)
    assert len(splits) == 4
    for train, test in splits:
        assert set(groups[train]).isdisjoint(groups[test])
        assert len(train) + len(test) == 120
    assert sorted(np.concatenate([test for _, test in splits])) == list(range(120))
    # Same seed, same folds: every backbone and head setting is compared on identical data.
    again = make_splits(4, y, groups, random_state=0)
    assert all((a[1] == b[1]).all() for a, b in zip(splits, again, strict=True))


@pytest.mark.filterwarnings("ignore:The groups parameter is ignored")
def test_splits_that_ignore_groups_are_refused():
    y = np.tile([0, 1], 20)
    groups = np.repeat(np.arange(10), 4)
    with pytest.raises(ValueError, match="in both train and test"):
        make_splits(StratifiedKFold(4, shuffle=True, random_state=0), y, groups)
    assert len(make_splits(GroupKFold(5), y, groups)) == 5
    with pytest.raises(ValueError, match="at least 12 distinct groups"):
        make_splits(12, y, groups)
    with pytest.raises(ValueError, match="at least 30 samples of every class"):
        make_splits(30, y)


# ------------------------------------------------------------------------------- compare_backbones
def test_each_backbone_embeds_the_data_once_whatever_the_folds_and_head_settings():
    X, y = _images(36)
    CountingNet.seen.clear()
    table = compare_backbones(
        X,
        y,
        _counting_embedders(),
        head=_logreg(),
        head_params={"C": [0.01, 1.0]},
        report="all",
        cv=3,
        verbose=0,
    )
    # One 1-image probe in fit (to learn the embedding width), then every image exactly once:
    # not once per fold (3) or per head setting (2).
    assert CountingNet.seen == {"net8": len(X) + 1, "net16": len(X) + 1}
    assert len(table) == 4  # 2 backbones x 2 settings
    assert set(table["head_params"]) == {"C=0.01", "C=1.0"}
    assert table["balanced_accuracy_mean"].is_monotonic_decreasing
    assert table["n_folds"].eq(3).all()


def test_table_is_tidy_one_row_per_backbone_best_first():
    X, y = _images(36)
    table, emb = compare_backbones(
        X,
        y,
        _counting_embedders(),
        head=_logreg(),
        head_params={"C": [1e-4, 1.0]},
        cv=3,
        verbose=0,
        return_embeddings=True,
    )
    assert list(table.columns[:2]) == ["backbone", "weights"]
    assert all(c in table for c in METRIC_COLUMNS)
    assert len(table) == 2 and set(table["backbone"]) == {"net8", "net16"}
    assert table["weights"].eq("module").all()
    assert dict(zip(table["backbone"], table["embedding_dim"], strict=True)) == {"net8": 8, "net16": 16}
    assert (table["images_per_s"] > 0).all() and (table["head_fit_s"] > 0).all()
    # report="best": the better of C=1e-4 (near chance on standardised features) and C=1.0.
    assert table["head_params"].eq("C=1.0").all()
    assert table["balanced_accuracy_mean"].iloc[0] >= table["balanced_accuracy_mean"].iloc[1]
    assert emb["net8"].shape == (36, 8) and emb["net16"].shape == (36, 16)
    assert table.attrs["n_samples"] == 36 and table.attrs["grouped"] is False
    md = format_selection_table(table)
    table_lines = [line for line in md.splitlines() if line.startswith("|")]
    assert len(table_lines) == 4 and "±" in md and "| net" in md
    assert f"Selected: {table['backbone'].iloc[0]}" in md


@pytest.mark.filterwarnings("ignore:The groups parameter is ignored")
def test_grouped_compare_backbones_uses_the_given_folds():
    X, y = _images(40, n_classes=2)
    groups = np.repeat(np.arange(10), 4)
    splits = make_splits(5, y, groups, random_state=1)
    table = compare_backbones(
        X, y, _counting_embedders(), groups=groups, head=_logreg(), cv=splits, verbose=0
    )
    assert table.attrs["grouped"] is True and table["n_folds"].eq(5).all()
    with pytest.raises(ValueError, match="in both train and test"):
        compare_backbones(
            X,
            y,
            _counting_embedders(),
            groups=groups,
            head=_logreg(),
            cv=StratifiedKFold(5, shuffle=True, random_state=0),
            verbose=0,
        )


def test_timm_names_with_the_default_proxy_head():
    X, y = _images(24, n_classes=2)
    table = compare_backbones(
        X,
        y,
        ["resnet18"],
        cv=2,
        verbose=0,
        head_params={"max_epochs": 3},
        embedder_params=dict(pretrained=False, image_size=32),
    )
    row = table.iloc[0]
    assert (row["backbone"], row["weights"], row["embedding_dim"]) == ("resnet18", "random-init", 512)
    assert 0.0 <= row["balanced_accuracy_mean"] <= 1.0


def test_compare_backbones_input_errors():
    X, y = _images(12, n_classes=2)
    emb = BackboneEmbedder(CountingNet(4, "e"), image_size=16, verbose=0)
    with pytest.raises(ValueError, match="must be unique"):
        compare_backbones(X, y, [emb, emb], head=_logreg(), cv=2, verbose=0)
    with pytest.raises(ValueError, match="sort_by='auc'"):
        compare_backbones(X, y, [emb], head=_logreg(), cv=2, sort_by="auc", verbose=0)
    with pytest.raises(ValueError, match="report must be"):
        compare_backbones(X, y, [emb], head=_logreg(), cv=2, report="top", verbose=0)
    with pytest.raises(ValueError, match="backbones is empty"):
        compare_backbones(X, y, [], head=_logreg(), cv=2, verbose=0)
    with pytest.raises(ValueError):
        compare_backbones(X, y[:5], [emb], head=_logreg(), cv=2, verbose=0)


def test_set_head_params_routes_short_names_to_the_last_pipeline_step():
    head = set_head_params(default_head(), {"lr": 0.01, "standardscaler__with_mean": False})
    assert head.named_steps["focalheadclassifier"].lr == 0.01
    assert head.named_steps["standardscaler"].with_mean is False
    assert set_head_params(LogisticRegression(), {"C": 3.0}).C == 3.0
    with pytest.raises(ValueError, match="Invalid parameter"):
        set_head_params(LogisticRegression(), {"nope": 1})


# --------------------------------------------------------------------------- GridSearchCV route
def test_grid_search_route_gives_the_same_scores():
    X, y = _images(30)
    splits = make_splits(3, y, random_state=0)
    params = dict(pretrained=False, image_size=32, precision="fp32", verbose=0)
    names = ["resnet18", "mobilenetv3_small_050"]
    table = compare_backbones(X, y, names, head=_logreg(), cv=splits, embedder_params=params, verbose=0)
    search = make_selection_search(names, head=_logreg(), cv=splits, embedder_params=params)
    assert list(search.param_grid) == ["backboneembedder__backbone"]
    search.fit(X, y)
    grid = search_table(search)
    assert grid["backbone"].tolist() == table["backbone"].tolist()
    np.testing.assert_allclose(grid[METRIC_COLUMNS], table[METRIC_COLUMNS], atol=1e-9)
    assert search.best_params_["backboneembedder__backbone"] == table["backbone"].iloc[0]


def test_compare_backbones_metrics_equal_sklearn_on_a_multiclass_task():
    """Issue 11, item 24: on 4 classes, unweighted kappa differs from quadratic/linear-weighted kappa."""
    rng = np.random.RandomState(0)
    y = np.repeat([0, 1, 2, 3], 15)
    Z = rng.normal(size=(60, 3)) + 0.8 * y[:, None]  # overlapping classes: confusions between neighbours
    splits = make_splits(3, y, random_state=0)
    table = compare_backbones(
        Z, y, {"identity": FunctionTransformer()}, head=LogisticRegression(max_iter=500), cv=splits, verbose=0
    )
    per_fold = {"balanced_accuracy": [], "cohen_kappa": [], "f1_weighted": [], "quadratic_kappa": []}
    for train, test in splits:
        pred = LogisticRegression(max_iter=500).fit(Z[train], y[train]).predict(Z[test])
        per_fold["balanced_accuracy"].append(balanced_accuracy_score(y[test], pred))
        per_fold["cohen_kappa"].append(cohen_kappa_score(y[test], pred))
        per_fold["f1_weighted"].append(f1_score(y[test], pred, average="weighted"))
        per_fold["quadratic_kappa"].append(cohen_kappa_score(y[test], pred, weights="quadratic"))
    for metric in ("balanced_accuracy", "cohen_kappa", "f1_weighted"):
        assert table[f"{metric}_mean"].iloc[0] == pytest.approx(np.mean(per_fold[metric]), abs=1e-12)
        assert table[f"{metric}_std"].iloc[0] == pytest.approx(np.std(per_fold[metric]), abs=1e-12)
    # The check can tell the kappas apart on this task.
    assert abs(np.mean(per_fold["quadratic_kappa"]) - np.mean(per_fold["cohen_kappa"])) > 0.05


# ----------------------------------------------------------------------- reference rows and noise
def _noise_features(X):
    return np.random.RandomState(0).normal(size=(len(X), 4))


def test_random_init_rows_are_references_never_selected():
    """Issue 11, item 5: a random-init row that scores highest is labelled and not selected."""
    X, y = _images(36)
    backbones = {
        "resnet18": BackboneEmbedder("resnet18", pretrained=False, image_size=16, precision="fp32", verbose=0),
        "noise": FunctionTransformer(_noise_features),  # trained weights ("custom"), useless features
    }
    table = compare_backbones(X, y, backbones, head=_logreg(), cv=3, verbose=0)
    assert table["backbone"].tolist() == ["resnet18", "noise"]  # ranked by score, reference included
    assert table["weights"].tolist() == ["random-init", "custom"]
    assert table["balanced_accuracy_mean"].iloc[0] > table["balanced_accuracy_mean"].iloc[1] + 0.2
    assert table.attrs["best"] == "noise" and table.attrs["references_above"] == ["resnet18"]
    md = format_selection_table(table)
    assert "| resnet18 (random init) |" in md and "| noise |" in md
    assert "Selected: noise" in md
    assert "random-init reference resnet18 (random init)" in md and "scores above" in md


def _summary_table(means, stds, weights):
    table = pd.DataFrame(
        {
            "backbone": [f"b{i}" for i in range(len(means))],
            "weights": weights,
            "balanced_accuracy_mean": means,
            "balanced_accuracy_std": stds,
        }
    )
    table.attrs["sort_by"] = "balanced_accuracy"
    return table


def test_selection_summary_says_when_the_winner_is_within_noise():
    # 0.80 vs 0.78 with fold stds 0.05: within noise; the random-init row (third) does not matter here.
    close = selection_summary(_summary_table([0.80, 0.78, 0.5], [0.05, 0.03, 0.1],
                                             ["pretrained", "pretrained", "random-init"]))  # fmt: skip
    assert (close.best, close.runner_up, close.within_noise) == ("b0", "b1", True)
    assert "within noise of b1" in close.notes[0] and "0.020" in close.notes[0]
    clear = selection_summary(_summary_table([0.90, 0.78], [0.05, 0.03], ["pretrained", "pretrained"]))
    assert (clear.best, clear.within_noise, clear.notes) == ("b0", False, [])
    # The runner-up may be a reference: a pretrained winner within noise of random weights is worth saying.
    ref = selection_summary(_summary_table([0.80, 0.79], [0.02, 0.02], ["pretrained", "random-init"]))
    assert ref.within_noise and "b1 (random init)" in ref.notes[0]
    # Only references: none selected; the report falls back to the first row, labelled as a reference.
    only = selection_summary(_summary_table([0.7, 0.6], [0.0, 0.0], ["random-init", "random-init"]))
    assert only.best is None and only.best_row == 0 and "no pretrained backbone" in only.notes[0]


# ------------------------------------------------------------------------------ label efficiency
def test_label_efficiency_curve_shape_nesting_and_reproducibility():
    rng = np.random.RandomState(0)
    y = np.repeat(["a", "b", "c"], [60, 40, 20])
    Z = rng.normal(size=(120, 5)) + (y == "a")[:, None] * 1.5 + (y == "c")[:, None] * -1.5
    curve, runs = label_efficiency_curve(
        Z,
        y,
        _logreg(),
        fractions=(1.0, 0.05, 0.5),
        n_repeats=3,
        test_size=0.25,
        random_state=0,
        return_runs=True,
    )
    assert curve["fraction"].tolist() == [0.05, 0.5, 1.0]
    assert curve["n_runs"].tolist() == [3, 3, 3]
    # 90 training samples (45/30/15 per class): 5% keeps round(2.25)=2, round(1.5)=2, max(1, round(.75))=1.
    assert curve["n_train"].tolist() == [5.0, 45.0, 90.0]
    assert all(c in curve for c in METRIC_COLUMNS)
    assert (curve[[c for c in METRIC_COLUMNS if c.endswith("_std")]] >= 0).all().all()
    assert len(runs) == 9 and set(runs["repeat"]) == {0, 1, 2}
    again = label_efficiency_curve(Z, y, _logreg(), fractions=(0.05, 0.5, 1.0), n_repeats=3, random_state=0)
    pd.testing.assert_frame_equal(curve, again)


def test_label_efficiency_with_groups_and_cv():
    rng = np.random.RandomState(1)
    y = np.tile([0, 1], 40)
    groups = np.repeat(np.arange(8), 10)
    Z = rng.normal(size=(80, 3)) + y[:, None]
    curve = label_efficiency_curve(
        Z, y, _logreg(), fractions=(0.2, 1.0), n_repeats=2, groups=groups, cv=4, scoring="balanced_accuracy"
    )
    assert curve["n_runs"].tolist() == [8, 8]  # 4 folds x 2 repeats
    assert list(curve.columns) == ["fraction", "n_train", "n_runs", "score_mean", "score_std"]
    with pytest.raises(ValueError, match="fractions must be in"):
        label_efficiency_curve(Z, y, _logreg(), fractions=(0.0, 1.0))
    with pytest.raises(ValueError, match="n_repeats"):
        label_efficiency_curve(Z, y, _logreg(), n_repeats=0)


def test_label_efficiency_merges_fractions_that_clamp_to_the_same_samples():
    """Issue 11, item 6: 5 % and 10 % of 8 training samples per class are both 1 per class: one point."""
    rng = np.random.RandomState(0)
    y = np.repeat(["a", "b"], 12)
    Z = rng.normal(size=(24, 3)) + (y == "a")[:, None]
    with pytest.warns(UserWarning, match=r"fractions 0\.05, 0\.1 all give the same 2 labelled"):
        curve, runs = label_efficiency_curve(
            Z, y, _logreg(), fractions=(0.05, 0.1, 0.5, 1.0), n_repeats=2, test_size=1 / 3,
            return_runs=True,
        )  # fmt: skip
    assert curve["fraction"].tolist() == [0.05, 0.5, 1.0]
    assert curve["n_train"].tolist() == [2.0, 8.0, 16.0]  # distinct: one point per number of samples
    assert len(runs) == 6 and runs["n_train"].nunique() == 3
