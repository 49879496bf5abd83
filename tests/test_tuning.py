"""skdfl.model_selection.HeadSearchCV: search space, search estimator, pruning, resuming a stored study."""

from __future__ import annotations

import contextlib
import logging
import sqlite3
import subprocess
import sys
import textwrap
import time
import warnings

import numpy as np
import optuna
import pandas as pd
import pytest
from optuna.trial import TrialState
from sklearn.datasets import make_classification
from sklearn.dummy import DummyClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler

from skdfl.heads import FocalHeadClassifier
from skdfl.model_selection import HIDDEN_UNITS_CHOICES, HeadSearchCV, head_search_space, mlp_head_search_space

pytestmark = pytest.mark.usefixtures("one_torch_thread")

optuna.logging.set_verbosity(optuna.logging.WARNING)


@pytest.fixture(scope="module")
def data():
    return make_classification(150, n_features=10, n_informative=4, random_state=0)


def logreg():
    return Pipeline([("scale", StandardScaler()), ("clf", LogisticRegression(max_iter=300))])


def c_space(trial):
    return {"C": trial.suggest_float("C", 1e-4, 1e2, log=True)}


def _finished(study):
    return [t for t in study.trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]


def test_head_search_space_draws_valid_linear_heads_without_an_epoch_budget():
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    for _ in range(25):
        trial = study.ask()
        params = head_search_space(trial)
        assert set(params) == {"lr", "weight_decay", "hidden_units", "noise_std", "gamma"}
        FocalHeadClassifier(**params)._validate_params()  # sklearn's constraints accept every sampled value
        assert params["hidden_units"] == () and "hidden_units" not in trial.params
        assert 3e-4 <= params["lr"] <= 1e-2 and 1e-3 <= params["weight_decay"] <= 1.0
        study.tell(trial, 0.5)
    # The class default weight decay lies inside the searched range, with room on both sides.
    drawn = [t.params["weight_decay"] for t in study.trials]
    assert min(drawn) < FocalHeadClassifier().weight_decay < max(drawn)


def test_mlp_head_search_space_gives_valid_focal_head_params():
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    seen_hidden = set()
    for _ in range(25):
        trial = study.ask()
        params = mlp_head_search_space(trial)
        assert set(params) == {"lr", "weight_decay", "hidden_units", "dropout", "noise_std", "gamma"}
        FocalHeadClassifier(**params)._validate_params()
        assert params["hidden_units"] in HIDDEN_UNITS_CHOICES.values()
        assert 1e-4 <= params["lr"] <= 1e-2
        if params["hidden_units"] == ():
            assert params["dropout"] == 0.0 and "dropout" not in trial.params
        seen_hidden.add(params["hidden_units"])
        study.tell(trial, 0.5)
    assert () in seen_hidden and len(seen_hidden) >= 3


def test_search_estimator_shape_and_reproducibility(data):
    X, y = data
    search = HeadSearchCV(logreg(), search_space=c_space, n_trials=6, cv=3, random_state=0).fit(X, y)
    results = pd.DataFrame(search.cv_results_)
    assert len(results) == search.n_trials_ == 6
    assert search.best_score_ == pytest.approx(results["mean_test_score"].max())
    assert results.loc[results["rank_test_score"] == 1, "number"].item() == search.best_index_
    assert search.best_params_ == {"C": search.best_trial_.params["C"]}
    assert search.best_estimator_.named_steps["clf"].C == search.best_params_["C"]
    np.testing.assert_array_equal(search.classes_, [0, 1])
    assert search.predict_proba(X[:4]).shape == (4, 2)
    np.testing.assert_array_equal(search.predict(X), search.best_estimator_.predict(X))
    assert 0.5 < search.score(X, y) <= 1.0
    assert len(search.trials_dataframe()) == 6
    # Fixed seed: the same trials again.
    again = HeadSearchCV(logreg(), search_space=c_space, n_trials=6, cv=3, random_state=0).fit(X, y)
    np.testing.assert_allclose(again.cv_results_["mean_test_score"], search.cv_results_["mean_test_score"])


def test_default_focal_head_and_search_space(data):
    X, y = data

    def quick_space(trial):  # the real space, capped to 2 epochs to keep the test fast
        return {**mlp_head_search_space(trial), "max_epochs": 2}

    search = HeadSearchCV(search_space=quick_space, n_trials=2, cv=2, random_state=0).fit(X, y)
    assert isinstance(search.best_params_["hidden_units"], tuple)
    head = search.best_estimator_.named_steps["focalheadclassifier"]
    assert head.hidden_units == search.best_params_["hidden_units"] and head.max_epochs == 2
    assert search.predict_proba(X[:3]).shape == (3, 2)

    # The default space: linear heads whose drawn settings reach the fitted head, stopped by convergence.
    search = HeadSearchCV(n_trials=2, cv=2, random_state=0).fit(X, y)
    head = search.best_estimator_.named_steps["focalheadclassifier"]
    assert head.hidden_units == () and head.lr == search.best_params_["lr"]
    assert head.weight_decay == search.best_params_["weight_decay"]
    assert head.n_iter_ < head.max_epochs


def test_bad_settings_are_pruned_after_one_fold(tmp_path, data):
    X, y = data
    storage = f"sqlite:///{tmp_path / 'prune.db'}"
    # Two good trials first (the pruner's start-up), then two hopeless ones.
    study = optuna.create_study(storage=storage, study_name="p", direction="maximize")
    for kind in ("good", "good", "bad", "bad"):
        study.enqueue_trial({"kind": kind})

    def space(trial):
        good = trial.suggest_categorical("kind", ["good", "bad"]) == "good"
        return {"clf": LogisticRegression() if good else DummyClassifier(strategy="most_frequent")}

    search = HeadSearchCV(
        logreg(),
        search_space=space,
        n_trials=4,
        cv=4,
        storage=storage,
        study_name="p",
        pruner=optuna.pruners.MedianPruner(n_startup_trials=2),
    ).fit(X, y)
    states = search.cv_results_["state"].tolist()
    assert states == ["COMPLETE", "COMPLETE", "PRUNED", "PRUNED"]
    assert np.isnan(search.cv_results_["split1_test_score"][2:]).all()  # stopped after the first fold
    assert not np.isnan(search.cv_results_["split0_test_score"]).any()
    assert search.best_index_ in (0, 1)


RESUME_SCRIPT = textwrap.dedent(
    """
    import sys
    from sklearn.datasets import make_classification
    from sklearn.linear_model import LogisticRegression
    from skdfl.model_selection import HeadSearchCV

    def space(trial):
        return {"C": trial.suggest_float("C", 1e-4, 1e2, log=True)}

    X, y = make_classification(150, n_features=10, n_informative=4, random_state=0)
    HeadSearchCV(LogisticRegression(), search_space=space, n_trials=10_000, cv=3,
                 storage=sys.argv[1], study_name="resume").fit(X, y)
    """
)


def _n_finished_in_db(db) -> int:
    """Finished trials, read with plain sqlite3: opening the storage with optuna while the worker is
    creating its tables races on ``CREATE TABLE``."""
    if not db.exists():
        return 0
    try:
        with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=1)) as con:
            (n,) = con.execute("SELECT count(*) FROM trials WHERE state IN ('COMPLETE', 'PRUNED')").fetchone()
        return n
    except sqlite3.OperationalError:  # tables not created yet, or the database is locked
        return 0


def test_sqlite_study_resumes_after_the_process_is_killed(tmp_path, data):
    X, y = data
    db = tmp_path / "search.db"
    script = tmp_path / "worker.py"
    script.write_text(RESUME_SCRIPT)
    proc = subprocess.Popen(
        [sys.executable, str(script), str(db)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    storage = f"sqlite:///{db}"
    try:
        deadline = time.monotonic() + 240
        while True:
            assert proc.poll() is None, proc.stderr.read().decode()
            if _n_finished_in_db(db) >= 3:
                break
            assert time.monotonic() < deadline, "the worker did not finish 3 trials in time"
            time.sleep(0.2)
    finally:
        proc.kill()
        proc.wait()

    before = optuna.load_study(study_name="resume", storage=storage)
    done = {t.number: (t.params, t.value) for t in _finished(before)}
    assert len(done) >= 3
    target = len(done) + 3
    search = HeadSearchCV(
        LogisticRegression(),
        search_space=c_space,
        n_trials=target,
        cv=3,
        storage=str(db),
        study_name="resume",
    ).fit(X, y)
    after = _finished(search.study_)
    assert len(after) == search.n_trials_ == target
    # Earlier trials are kept untouched, and the new ones do not replay their parameters.
    assert {t.number: (t.params, t.value) for t in after if t.number in done} == done
    values_c = [t.params["C"] for t in after]
    assert len(set(values_c)) == len(values_c)
    # Fitting again with the same target does no new work.
    HeadSearchCV(
        LogisticRegression(),
        search_space=c_space,
        n_trials=target,
        cv=3,
        storage=str(db),
        study_name="resume",
    ).fit(X, y)
    assert len(_finished(optuna.load_study(study_name="resume", storage=storage))) == target
    # The stored study belongs to this problem: other data is refused instead of mixed in.
    with pytest.raises(ValueError, match="different problem"):
        HeadSearchCV(
            LogisticRegression(),
            search_space=c_space,
            n_trials=target + 1,
            cv=3,
            storage=str(db),
            study_name="resume",
        ).fit(X[:100], y[:100])


def test_parameter_errors(data):
    X, y = data
    with pytest.raises(ValueError, match="never stop"):
        HeadSearchCV(logreg(), search_space=c_space, n_trials=None).fit(X, y)
    with pytest.raises(ValueError, match="single metric"):
        HeadSearchCV(logreg(), search_space=c_space, scoring={"a": "accuracy"}).fit(X, y)
    with pytest.raises(ValueError, match="n_trials"):
        HeadSearchCV(logreg(), search_space=c_space, n_trials=0).fit(X, y)
    search = HeadSearchCV(logreg(), search_space=c_space)
    assert search.get_params()["n_trials"] == 20 and not hasattr(search, "study_")


class _Records(logging.Handler):
    def __init__(self):
        super().__init__(logging.DEBUG)
        self.messages = []

    def emit(self, record):
        self.messages.append(record.getMessage())


@contextlib.contextmanager
def _optuna_messages(verbosity):
    """Optuna's log messages (its logger does not propagate to the root), at a given starting verbosity."""
    records, logger, previous = _Records(), logging.getLogger("optuna"), optuna.logging.get_verbosity()
    logger.addHandler(records)
    optuna.logging.set_verbosity(verbosity)
    try:
        yield records.messages
    finally:
        logger.removeHandler(records)
        optuna.logging.set_verbosity(previous)


def test_progress_bar_with_best_score_and_verbose_0_silences_everything(tmp_path, data, capsys):
    """Issue 11, item 9: a bar with the best score; verbose=0 also silences Optuna's INFO lines."""
    X, y = data
    with _optuna_messages(optuna.logging.INFO) as messages:
        search = HeadSearchCV(logreg(), search_space=c_space, n_trials=3, cv=3, storage=tmp_path / "a.db",
                              verbose=0).fit(X, y)  # fmt: skip
        assert optuna.logging.get_verbosity() == optuna.logging.INFO  # the user's level is restored
    assert messages == [] and capsys.readouterr().err == ""
    assert len(_finished(search.study_)) == 3

    with _optuna_messages(optuna.logging.INFO) as messages:
        search = HeadSearchCV(logreg(), search_space=c_space, n_trials=3, cv=3, storage=tmp_path / "b.db",
                              verbose=1).fit(X, y)  # fmt: skip
    err = capsys.readouterr().err
    assert messages == []  # verbose=1: the bar only
    assert "HeadSearchCV" in err and "3/3" in err and "trial" in err
    assert f"best={search.best_score_:.4f}" in err

    with _optuna_messages(optuna.logging.WARNING) as messages:
        HeadSearchCV(logreg(), search_space=c_space, n_trials=2, cv=3, storage=tmp_path / "c.db",
                     verbose=2).fit(X, y)  # fmt: skip
        assert optuna.logging.get_verbosity() == optuna.logging.WARNING
    assert any("A new study created" in m for m in messages)
    assert sum("finished with value" in m for m in messages) == 2


@pytest.mark.filterwarnings("ignore:Heartbeat of storage is supposed to be used")
def test_stale_running_trial_of_a_killed_run_is_failed_and_retried(tmp_path, data):
    """Issue 11, item 9: a trial left RUNNING (its process killed mid-trial) does not stay RUNNING."""
    X, y = data
    db = tmp_path / "stale.db"
    # What a killed run leaves behind: a RUNNING trial with parameters and a last heartbeat, then silence.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        storage = optuna.storages.RDBStorage(f"sqlite:///{db}", heartbeat_interval=1, grace_period=2)
    study = optuna.create_study(storage=storage, study_name="s", direction="maximize")
    killed = study.ask()
    c_killed = killed.suggest_float("C", 1e-4, 1e2, log=True)
    storage.record_heartbeat(killed._trial_id)
    del storage, study
    # Longer than the grace period (2 x heartbeat_interval) by more than a second: SQLite's CURRENT_TIMESTAMP,
    # which Optuna compares, has whole seconds, so 2.5 s can read as exactly 2 s (not stale).
    time.sleep(3.5)

    search = HeadSearchCV(logreg(), search_space=c_space, n_trials=3, cv=3, storage=db, study_name="s",
                          heartbeat_interval=1, verbose=0).fit(X, y)  # fmt: skip
    trials = optuna.load_study(study_name="s", storage=f"sqlite:///{db}").trials
    assert trials[killed.number].state == TrialState.FAIL
    assert not [t for t in trials if t.state == TrialState.RUNNING]
    # The retry callback re-queued the killed trial's parameters, and this fit ran them.
    retried = [t for t in trials if t.system_attrs.get("failed_trial") == killed.number]
    assert len(retried) == 1 and retried[0].state == TrialState.COMPLETE
    assert retried[0].params["C"] == pytest.approx(c_killed)
    assert len(_finished(search.study_)) == 3
    with pytest.raises(ValueError, match="heartbeat_interval"):
        HeadSearchCV(logreg(), search_space=c_space, heartbeat_interval=0).fit(X, y)
