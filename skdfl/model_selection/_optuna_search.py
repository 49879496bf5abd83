"""Optuna tuning of a focal-loss head on (cached) embeddings, as a scikit-learn search estimator.

:class:`HeadSearchCV` follows the shape of scikit-learn's ``*SearchCV`` (``fit``, ``best_params_``,
``best_score_``, ``best_estimator_``, ``cv_results_``, ``predict``/``predict_proba`` delegation) and
adds what Optuna is for: a TPE sampler seeded by ``random_state``, per-fold pruning (a setting that is
bad on the first folds stops there), and a study stored in memory, in an SQLite file or in any RDB URL,
so a search resumes after the process stops and several processes can work on one study.

Why not ``OptunaSearchCV``: in Optuna 5 it lives in the separate ``optuna-integration`` package (not a
dependency of skdfl), it takes a dict of distributions rather than a search-space function (so no
conditional parameters such as "dropout only with a hidden layer" and no tuple-valued ``hidden_units``),
and its pruning needs ``partial_fit``; pruning between cross-validation folds is what suits heads that
train in seconds.
"""

from __future__ import annotations

import contextlib
import inspect
import os
import time
import warnings
from numbers import Integral
from pathlib import Path

import numpy as np
import optuna
from optuna.trial import FixedTrial, TrialState
from sklearn.base import BaseEstimator, ClassifierMixin, MetaEstimatorMixin, clone
from sklearn.metrics import check_scoring
from sklearn.utils import _safe_indexing
from sklearn.utils.metaestimators import available_if
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import _num_samples, check_is_fitted, indexable
from tqdm.auto import tqdm

from ._proxy import default_head, make_splits, set_head_params

__all__ = [
    "DEFAULT_STUDY_NAME",
    "HIDDEN_UNITS_CHOICES",
    "STALE_TRIAL_RETRIES",
    "HeadSearchCV",
    "head_search_space",
    "mlp_head_search_space",
]

#: Study name used with a persistent ``storage`` when ``study_name`` is not given, so that running the
#: same script again resumes the same study.
DEFAULT_STUDY_NAME = "skdfl-head-search"

#: Hidden-layer choices of :func:`mlp_head_search_space`. Optuna categorical choices must be scalars, so the
#: study records these names and the search space maps them to ``hidden_units`` tuples.
HIDDEN_UNITS_CHOICES = {
    "linear": (),
    "256": (256,),
    "512": (512,),
    "1024": (1024,),
    "512-256": (512, 256),
}

_FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)


def head_search_space(trial) -> dict:
    """Default search space: the linear :class:`~skdfl.heads.FocalHeadClassifier` on standardised embeddings.

    ======================  ===========================================================
    ``lr``                  log-uniform in [3e-4, 1e-2] (Adam)
    ``weight_decay``        log-uniform in [1e-3, 1] (the class default, 0.1, in the middle)
    ``noise_std``           uniform in [0, 2] (input Gaussian noise, in feature std units)
    ``gamma``               uniform in [0, 3] (focal loss; 0 is cross-entropy)
    ``hidden_units``        ``()``, fixed
    ======================  ===========================================================

    The linear head is the default head because on new patients it scored at least as well as heads with a
    hidden layer (``benchmarks/bench_defaults.py``), and a trial of it costs a fraction of one with a hidden
    layer; :func:`mlp_head_search_space` searches hidden layers too. Neither space searches ``max_epochs``: the
    head's convergence test (``tol``, ``n_iter_no_change``) ends each fit, so a trial pays only for the epochs
    its setting needs.

    Parameters
    ----------
    trial : optuna.trial.Trial or FixedTrial

    Returns
    -------
    params : dict
        ``FocalHeadClassifier`` parameters (routed to the last step of a Pipeline head by
        :func:`skdfl.model_selection.set_head_params`).
    """
    return {"hidden_units": (), **_optimisation_params(trial, lr_low=3e-4, weight_decay_low=1e-3)}


def _optimisation_params(trial, *, lr_low, weight_decay_low) -> dict:
    """The parameters both spaces search: Adam's learning rate and weight decay, input noise, focal gamma."""
    return {
        "lr": trial.suggest_float("lr", lr_low, 1e-2, log=True),
        "weight_decay": trial.suggest_float("weight_decay", weight_decay_low, 1.0, log=True),
        "noise_std": trial.suggest_float("noise_std", 0.0, 2.0),
        "gamma": trial.suggest_float("gamma", 0.0, 3.0),
    }


def mlp_head_search_space(trial) -> dict:
    """Search space with hidden layers: :func:`head_search_space` plus the architecture and dropout.

    ======================  ===========================================================
    ``hidden_units``        one of :data:`HIDDEN_UNITS_CHOICES` (``()`` is the paper's linear
                            proxy head, ``(512,)`` its task head)
    ``dropout``             uniform in [0, 0.5], only with hidden layers (else 0)
    ``lr``                  log-uniform in [1e-4, 1e-2] (Adam)
    ``weight_decay``        log-uniform in [1e-5, 1] (hidden layers usually want less than
                            the linear head)
    ``noise_std``           uniform in [0, 2]
    ``gamma``               uniform in [0, 3]
    ======================  ===========================================================

    A trial with a hidden layer costs several times one of the linear head (the matrix products, not the
    per-step overhead, dominate it on CPU); pass ``search_space=mlp_head_search_space`` to
    :class:`HeadSearchCV` when a non-linear head is worth that.

    Parameters
    ----------
    trial : optuna.trial.Trial or FixedTrial

    Returns
    -------
    params : dict
        ``FocalHeadClassifier`` parameters.
    """
    hidden = trial.suggest_categorical("hidden_units", list(HIDDEN_UNITS_CHOICES))
    hidden_units = HIDDEN_UNITS_CHOICES[hidden]
    return {
        "hidden_units": hidden_units,
        # Dropout acts after hidden layers only: searching it for the linear head would waste trials.
        "dropout": trial.suggest_float("dropout", 0.0, 0.5) if hidden_units else 0.0,
        **_optimisation_params(trial, lr_low=1e-4, weight_decay_low=1e-5),
    }


def _resolve_storage(storage):
    """``None`` (in memory), an Optuna storage, an RDB URL, or a path to an SQLite file."""
    if storage is None or isinstance(storage, optuna.storages.BaseStorage):
        return storage
    if isinstance(storage, os.PathLike) or (isinstance(storage, str) and "://" not in storage):
        path = Path(os.fspath(storage)).expanduser().resolve()
        path.parent.mkdir(parents=True, exist_ok=True)
        return f"sqlite:///{path}"
    if isinstance(storage, str):
        return storage
    raise TypeError(
        f"storage must be None, an RDB URL such as 'sqlite:///search.db', a path to an SQLite file or an "
        f"optuna storage, got {type(storage).__name__}"
    )


#: Times a trial left RUNNING by a killed process is retried (re-queued with the same parameters).
STALE_TRIAL_RETRIES = 2


def _heartbeat_storage(url: str, heartbeat_interval: int):
    """An ``RDBStorage`` whose trials beat every ``heartbeat_interval`` s; on the next run, a trial silent for
    two intervals (its process was killed) is marked FAIL and re-queued by Optuna's retry callback."""
    retry_class = getattr(optuna.storages, "RetryHeartbeatStaleTrialCallback", None)
    if retry_class is None:  # Optuna < 4.9
        retry_class = optuna.storages.RetryFailedTrialCallback
    keyword = (
        "heartbeat_stale_trial_callback"
        if "heartbeat_stale_trial_callback" in inspect.signature(optuna.storages.RDBStorage).parameters
        else "failed_trial_callback"
    )
    with warnings.catch_warnings():  # the heartbeat is flagged experimental; it is what we want here
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return optuna.storages.RDBStorage(
            url,
            heartbeat_interval=int(heartbeat_interval),
            grace_period=2 * int(heartbeat_interval),
            **{keyword: retry_class(max_retry=STALE_TRIAL_RETRIES)},
        )


@contextlib.contextmanager
def _optuna_verbosity(verbose: int):
    """Optuna's own log lines (study created, every trial) only at ``verbose >= 2``; restored after."""
    previous = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.INFO if verbose >= 2 else optuna.logging.WARNING)
    try:
        yield
    finally:
        optuna.logging.set_verbosity(previous)


class _ProgressCallback:
    """A tqdm bar over this fit's trials, showing the study's best score so far."""

    def __init__(self, bar):
        self.bar = bar

    def __call__(self, study, trial):
        if trial.state not in _FINISHED and trial.state != TrialState.FAIL:
            return
        self.bar.update(1)
        try:
            self.bar.set_postfix(best=f"{study.best_value:.4f}", refresh=False)
        except ValueError:  # no completed trial yet (all pruned or failed)
            pass


def _estimator_has(attr):
    def check(self):
        if hasattr(self, "best_estimator_"):
            return hasattr(self.best_estimator_, attr)
        estimator = self.estimator if self.estimator is not None else default_head()
        return hasattr(estimator, attr)

    return check


class HeadSearchCV(MetaEstimatorMixin, ClassifierMixin, BaseEstimator):
    """Optuna search of head hyper-parameters by cross-validation, with pruning and resumable storage.

    Parameters
    ----------
    estimator : classifier, default=None
        The head to tune; default :func:`skdfl.model_selection.default_head` (``StandardScaler`` +
        ``FocalHeadClassifier``). Cloned for every fold.
    search_space : callable, default=None
        ``trial -> dict`` of parameters for ``estimator`` (short names reach the last step of a Pipeline,
        see :func:`skdfl.model_selection.set_head_params`); default :func:`head_search_space` (the linear head;
        :func:`mlp_head_search_space` adds hidden layers). It must draw
        every value from ``trial.suggest_*`` so that a trial's parameters can be rebuilt from the study.
    n_trials : int or None, default=20
        Finished (complete or pruned) trials the **study** should hold. Re-fitting on a persistent study
        that already holds some runs only the missing ones (resume); parallel processes sharing the study
        stop together once it is reached. ``None``: run until ``timeout``.
    timeout : float, default=None
        Stop starting new trials after this many seconds of this ``fit``.
    cv : int, splitter or iterable of splits, default=5
        See :func:`skdfl.model_selection.make_splits`; an int is stratified k-fold, grouped when ``fit``
        gets ``groups``.
    scoring : str or callable, default="balanced_accuracy"
        A single scikit-learn scorer, maximised.
    storage : None, str, path or optuna storage, default=None
        ``None``: in memory. A URL (``"sqlite:///search.db"``, ``"postgresql://..."``) or a path to an
        SQLite file: persistent and shareable between processes. An ``optuna.storages`` instance is
        used as is (e.g. a ``JournalStorage`` for many processes on one file system).
    heartbeat_interval : int or None, default=60
        With a URL or SQLite path ``storage``: seconds between the heartbeats of a running trial. When a
        process is killed, its trial stays RUNNING; the next ``fit`` on the study marks it FAIL once it
        has been silent for ``2 * heartbeat_interval`` s and re-queues its parameters
        (:data:`STALE_TRIAL_RETRIES` times at most), Optuna's heartbeat with its retry callback. ``None``
        disables it.
    study_name : str, default=None
        Study to create or resume; default :data:`DEFAULT_STUDY_NAME` with a persistent storage.
    sampler : optuna sampler, default=None
        Default ``TPESampler(seed=random_state + number of trials already in the study)``: reproducible,
        and a resumed study does not replay the seeds (and parameters) of its first trials.
    pruner : optuna pruner, default=None
        Default ``MedianPruner(n_startup_trials=5)``: from the sixth trial on, a trial whose running mean
        fold score is below the median of earlier trials at the same fold stops. Pass
        ``optuna.pruners.NopPruner()`` to disable pruning.
    refit : bool, default=True
        Refit the best parameters on all the data as ``best_estimator_``.
    n_jobs : int, default=1
        Trials run in parallel threads of this process (``study.optimize(n_jobs=...)``). For processes,
        start several ``fit`` on one persistent storage, each with a different ``random_state``.
    catch : tuple of exception types, default=()
        Exceptions that mark a trial failed instead of stopping the search (e.g. ``(FloatingPointError,)``).
    random_state : int or None, default=0
        Seed of the default sampler, of the fold shuffling of an int ``cv`` and of the default head.
    verbose : int, default=1
        ``0``: silent, Optuna's INFO log lines included (its logging level is restored after ``fit``).
        ``1``: a progress bar over this fit's trials with the best score so far. ``>= 2``: also Optuna's
        log line for every trial.

    Attributes
    ----------
    study_ : optuna.study.Study
        The study (all its trials, including those of earlier runs).
    best_trial_ : optuna.trial.FrozenTrial
    best_params_ : dict
        Estimator parameters of the best trial (as given to ``set_params``, e.g. tuple ``hidden_units``).
    best_score_ : float
        Mean cross-validated score of the best trial.
    best_index_ : int
        Number of the best trial in the study.
    best_estimator_ : estimator
        Refitted on all data (``refit=True`` only).
    cv_results_ : dict of ndarray
        One entry per finished trial of the study: ``number``, ``state``, ``params``,
        ``split<k>_test_score`` (NaN after pruning), ``mean_test_score``, ``std_test_score`` (NaN for
        pruned trials, whose scores cover only some folds) and ``rank_test_score``;
        ``pandas.DataFrame(cv_results_)`` is a table.
    n_trials_ : int
        Finished trials in the study after this fit.
    n_splits_ : int
        Number of cross-validation folds.
    scorer_ : callable
    refit_time_ : float
        Seconds spent refitting ``best_estimator_``.
    classes_ : ndarray
        Classes of ``best_estimator_``.

    Examples
    --------
    >>> from sklearn.datasets import make_classification
    >>> from skdfl.model_selection import HeadSearchCV
    >>> Z, y = make_classification(200, n_features=16, random_state=0)
    >>> search = HeadSearchCV(n_trials=3, cv=3, storage=None).fit(Z, y)  # doctest: +SKIP
    >>> search.best_params_["hidden_units"]  # doctest: +SKIP
    (512,)
    """

    def __init__(
        self,
        estimator=None,
        *,
        search_space=None,
        n_trials=20,
        timeout=None,
        cv=5,
        scoring="balanced_accuracy",
        storage=None,
        heartbeat_interval=60,
        study_name=None,
        sampler=None,
        pruner=None,
        refit=True,
        n_jobs=1,
        catch=(),
        random_state=0,
        verbose=1,
    ):
        self.estimator = estimator
        self.search_space = search_space
        self.n_trials = n_trials
        self.timeout = timeout
        self.cv = cv
        self.scoring = scoring
        self.storage = storage
        self.heartbeat_interval = heartbeat_interval
        self.study_name = study_name
        self.sampler = sampler
        self.pruner = pruner
        self.refit = refit
        self.n_jobs = n_jobs
        self.catch = catch
        self.random_state = random_state
        self.verbose = verbose

    # ------------------------------------------------------------------------------- validation
    def _check_params(self):
        if self.n_trials is None and self.timeout is None:
            raise ValueError("n_trials and timeout are both None: the search would never stop")
        if self.n_trials is not None and not (isinstance(self.n_trials, Integral) and self.n_trials >= 1):
            raise ValueError(f"n_trials must be a positive integer or None, got {self.n_trials!r}")
        if self.timeout is not None and not self.timeout > 0:
            raise ValueError(f"timeout must be positive or None, got {self.timeout!r}")
        if self.heartbeat_interval is not None and not (
            isinstance(self.heartbeat_interval, Integral) and self.heartbeat_interval >= 1
        ):
            raise ValueError(
                f"heartbeat_interval must be a positive integer (seconds) or None, got {self.heartbeat_interval!r}"
            )
        if not (isinstance(self.n_jobs, Integral) and (self.n_jobs >= 1 or self.n_jobs == -1)):
            raise ValueError(f"n_jobs must be a positive integer or -1, got {self.n_jobs!r}")
        if self.random_state is not None and not isinstance(self.random_state, Integral):
            # The seed is offset by the study's trial count on resume, so it must be an int.
            raise ValueError(f"random_state must be an int or None, got {type(self.random_state).__name__}")
        if isinstance(self.scoring, (dict, list, tuple, set)):
            raise ValueError("HeadSearchCV optimises a single metric: scoring must be a str or a callable")
        if self.search_space is not None and not callable(self.search_space):
            raise TypeError("search_space must be a callable trial -> dict of estimator parameters")

    def _create_study(self, signature: dict) -> optuna.study.Study:
        storage = _resolve_storage(self.storage)
        if isinstance(storage, str) and self.heartbeat_interval is not None:
            storage = _heartbeat_storage(storage, self.heartbeat_interval)
        study_name = self.study_name
        if study_name is None and storage is not None:
            study_name = DEFAULT_STUDY_NAME
        pruner = self.pruner if self.pruner is not None else optuna.pruners.MedianPruner(n_startup_trials=5)
        study = optuna.create_study(
            storage=storage,
            sampler=self.sampler,
            pruner=pruner,
            study_name=study_name,
            direction="maximize",
            load_if_exists=True,
        )
        if study.direction != optuna.study.StudyDirection.MAXIMIZE:
            raise ValueError(
                f"study {study.study_name!r} in this storage minimises its objective; HeadSearchCV maximises "
                "scores. Use another study_name"
            )
        # Mixing trials scored on other data or folds would make best_score_ meaningless.
        previous = {k[len("skdfl_") :]: v for k, v in study.user_attrs.items() if k.startswith("skdfl_")}
        if previous:
            differ = {k: (previous.get(k), v) for k, v in signature.items() if previous.get(k) != v}
            if differ:
                details = ", ".join(f"{k}: stored {a!r}, now {b!r}" for k, (a, b) in differ.items())
                raise ValueError(
                    f"study {study.study_name!r} was run on a different problem ({details}); resume it with "
                    "the same data, cv and scoring, or use another study_name"
                )
        else:
            for key, value in signature.items():
                study.set_user_attr(f"skdfl_{key}", value)
        if self.sampler is None:
            seed = None if self.random_state is None else int(self.random_state) + len(study.trials)
            study.sampler = optuna.samplers.TPESampler(seed=seed)
        return study

    # ------------------------------------------------------------------------------------- fit
    def fit(self, X, y, groups=None):
        """Run (or resume) the study, then refit the best parameters on all data.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
            Embeddings (or whatever ``estimator`` accepts).
        y : array-like of shape (n_samples,)
            Class labels.
        groups : array-like of shape (n_samples,), default=None
            Patients/slides for grouped folds.

        Returns
        -------
        self : HeadSearchCV
        """
        self._check_params()
        X, y, groups = indexable(X, y, groups)
        y = np.asarray(y)
        check_classification_targets(y)
        estimator = default_head(self.random_state) if self.estimator is None else self.estimator
        search_space = head_search_space if self.search_space is None else self.search_space
        scorer = check_scoring(estimator, scoring=self.scoring)
        splits = make_splits(self.cv, y, groups, random_state=self.random_state)
        signature = {
            "n_samples": int(_num_samples(X)),
            "n_splits": len(splits),
            "classes": [str(c) for c in np.unique(y)],
            "scoring": str(self.scoring) if isinstance(self.scoring, str) else repr(self.scoring),
        }
        with _optuna_verbosity(self.verbose):  # creating a study logs at INFO level
            study = self._create_study(signature)

        def objective(trial):
            params = search_space(trial)
            scores = []
            for k, (train, test) in enumerate(splits):
                model = set_head_params(clone(estimator), params)
                model.fit(_safe_indexing(X, train), y[train])
                scores.append(float(scorer(model, _safe_indexing(X, test), y[test])))
                trial.set_user_attr("split_scores", scores)
                # The running mean is what the pruner compares: steadier than a single fold's score.
                trial.report(float(np.mean(scores)), step=k)
                if k < len(splits) - 1 and trial.should_prune():
                    raise optuna.TrialPruned(f"pruned after fold {k + 1}/{len(splits)}")
            return float(np.mean(scores))

        n_finished = sum(t.state in _FINISHED for t in study.trials)
        remaining = None if self.n_trials is None else self.n_trials - n_finished
        if remaining is None or remaining > 0:
            callbacks = []
            if self.n_trials is not None:
                # Other processes may be filling the same study: stop when it holds n_trials in total.
                callbacks.append(optuna.study.MaxTrialsCallback(self.n_trials, states=_FINISHED))
            with (
                _optuna_verbosity(self.verbose),
                tqdm(total=remaining, desc="HeadSearchCV", unit="trial", disable=not self.verbose) as bar,
            ):
                study.optimize(
                    objective,
                    n_trials=remaining,
                    timeout=self.timeout,
                    n_jobs=self.n_jobs,
                    catch=tuple(self.catch),
                    callbacks=[*callbacks, _ProgressCallback(bar)],
                )

        completed = [t for t in study.trials if t.state == TrialState.COMPLETE]
        if not completed:
            raise RuntimeError(
                f"no trial of study {study.study_name!r} completed (states: "
                f"{sorted({t.state.name for t in study.trials})}); check the estimator and search space"
            )
        self.study_ = study
        self.scorer_ = scorer
        self.n_splits_ = len(splits)
        self.best_trial_ = study.best_trial
        self.best_params_ = search_space(FixedTrial(self.best_trial_.params, self.best_trial_.number))
        self.best_score_ = float(self.best_trial_.value)
        self.best_index_ = int(self.best_trial_.number)
        self.cv_results_ = self._cv_results(study, search_space, len(splits))
        self.n_trials_ = len(self.cv_results_["number"])
        if self.refit:
            start = time.perf_counter()
            self.best_estimator_ = set_head_params(clone(estimator), self.best_params_).fit(X, y)
            self.refit_time_ = time.perf_counter() - start
            if hasattr(self.best_estimator_, "n_features_in_"):
                self.n_features_in_ = self.best_estimator_.n_features_in_
        return self

    @staticmethod
    def _cv_results(study, search_space, n_splits: int) -> dict:
        trials = [t for t in study.trials if t.state in _FINISHED]
        splits = np.full((len(trials), n_splits), np.nan)
        for i, t in enumerate(trials):
            done = t.user_attrs.get("split_scores", [])
            splits[i, : len(done)] = done
        complete = np.array([t.state == TrialState.COMPLETE for t in trials], dtype=bool)
        mean = np.where(complete, np.nanmean(np.where(complete[:, None], splits, 0.0), axis=1), np.nan)
        std = np.where(complete, np.nanstd(np.where(complete[:, None], splits, 0.0), axis=1), np.nan)
        # Pruned trials rank after every complete one (their partial scores are not comparable).
        order = np.argsort(np.where(complete, -mean, np.inf), kind="stable")
        rank = np.empty(len(trials), dtype=int)
        rank[order] = np.arange(1, len(trials) + 1)
        results = {
            "number": np.array([t.number for t in trials], dtype=int),
            "state": np.array([t.state.name for t in trials], dtype=object),
            "params": np.array([search_space(FixedTrial(t.params, t.number)) for t in trials], dtype=object),
        }
        for k in range(n_splits):
            results[f"split{k}_test_score"] = splits[:, k]
        results.update(mean_test_score=mean, std_test_score=std, rank_test_score=rank)
        return results

    def trials_dataframe(self):
        """The study's trials as a DataFrame (:meth:`optuna.study.Study.trials_dataframe`)."""
        check_is_fitted(self, "study_")
        return self.study_.trials_dataframe()

    # ------------------------------------------------------------------------------ delegation
    @property
    def classes_(self):
        check_is_fitted(self, "best_estimator_")
        return self.best_estimator_.classes_

    @available_if(_estimator_has("predict"))
    def predict(self, X):
        """Predict with ``best_estimator_``."""
        check_is_fitted(self, "best_estimator_")
        return self.best_estimator_.predict(X)

    @available_if(_estimator_has("predict_proba"))
    def predict_proba(self, X):
        """Class probabilities of ``best_estimator_``."""
        check_is_fitted(self, "best_estimator_")
        return self.best_estimator_.predict_proba(X)

    @available_if(_estimator_has("predict_log_proba"))
    def predict_log_proba(self, X):
        """Log class probabilities of ``best_estimator_``."""
        check_is_fitted(self, "best_estimator_")
        return self.best_estimator_.predict_log_proba(X)

    @available_if(_estimator_has("decision_function"))
    def decision_function(self, X):
        """Decision function of ``best_estimator_``."""
        check_is_fitted(self, "best_estimator_")
        return self.best_estimator_.decision_function(X)

    def score(self, X, y, sample_weight=None):
        """``scoring`` of ``best_estimator_`` on ``(X, y)`` (not accuracy, unless that is ``scoring``)."""
        check_is_fitted(self, "best_estimator_")
        if sample_weight is not None:
            return self.scorer_(self.best_estimator_, X, y, sample_weight=sample_weight)
        return self.scorer_(self.best_estimator_, X, y)
