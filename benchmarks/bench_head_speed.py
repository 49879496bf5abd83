"""Head speed: ``FocalHeadClassifier()`` against ``MLPClassifier`` with the same architecture (issue 14.3).

Part A fits, interleaved round by round in alternating order, on 4,000 x 1,024 IDC embeddings (Keras
DenseNet-121, standardised; training patients only) and scores each model on held-out patients:

* ``FocalHeadClassifier()`` with its defaults;
* ``MLPClassifier`` with the same hidden layers and its own defaults (Adam, batch 200, ``tol=1e-4``,
  ``n_iter_no_change=10``), once with numpy's default BLAS threads and once limited to one thread, since on
  a machine shared with other jobs multi-threaded BLAS can be much slower (the ratio is taken against the
  faster of the two);
* the levers the defaults pick from, each changed alone: torch's default thread count instead of one, a
  fixed 50-epoch budget instead of the convergence stop (the old behaviour), batch 512;
* the old defaults (512 hidden units, 50 one-pass epochs, no regularisation) and a logistic regression.

Without ``--embeddings`` the IDC embeddings are computed with the public API (cached under
``results/cache``); without the data, a synthetic 4,700 x 1,024 problem stands in (said so in the output).

Part B (``--study``) times a ``HeadSearchCV`` study (Optuna TPE + median pruning, patient-grouped CV) on the
same embeddings.

bf16 is not measured: torch reports no native bf16 on the CPUs this was written on, where emulated bf16 is
slower than fp32; batched training of a search's folds (``torch.func.vmap``) is not implemented.
"""

from __future__ import annotations

import time
import warnings
from pathlib import Path

import _common as C
import numpy as np
import torch
from sklearn.base import clone
from sklearn.datasets import make_classification
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import balanced_accuracy_score
from sklearn.model_selection import GroupShuffleSplit
from sklearn.neural_network import MLPClassifier
from sklearn.preprocessing import StandardScaler
from threadpoolctl import threadpool_limits

from skdfl.heads import FocalHeadClassifier

N_TRAIN = 4000


def load_embeddings(args) -> dict:
    """IDC embeddings, labels and patients, from ``--embeddings``, the data folder, or synthetic."""
    if args.embeddings is not None:
        z = np.load(Path(args.embeddings) / "idc_densenet121.npz", allow_pickle=True)
        return {
            "X": z["X"],
            "y": z["y"].astype(str),
            "groups": z["groups"].astype(str),
            "source": "idc (npz)",
        }
    root = Path(args.data_dir) if args.data_dir is not None else None
    try:
        root = C.data_root(args) if root is None or root.is_dir() else None
    except SystemExit:
        root = None
    if root is not None and (root / "breast_idc_patches").is_dir():
        idc = C.load_idc(root)
        spec = C.main_backbone(allow_random=False)
        Z, record = C.embed_cached(
            idc["path"].tolist(), "idc-defaults", device=args.device, **C.embedder_kwargs(spec)
        )
        return {
            "X": Z,
            "y": idc["label"].to_numpy(),
            "groups": idc["patient"].to_numpy(),
            "source": f"idc {record}",
        }
    X, y = make_classification(n_samples=4700, n_features=1024, n_informative=64, flip_y=0.1, random_state=0)
    groups = np.arange(len(y)) % 27
    return {"X": X, "y": y, "groups": groups, "source": "synthetic (no IDC data found)"}


def split(data: dict, seed: int):
    """4,000 training rows from ~85 % of the patients; the other patients are the test set."""
    X, y, groups = np.asarray(data["X"], dtype=np.float32), data["y"], data["groups"]
    train, test = next(GroupShuffleSplit(n_splits=1, test_size=0.15, random_state=seed).split(X, y, groups))
    rng = np.random.default_rng(seed)
    if len(train) > N_TRAIN:
        train = np.sort(rng.choice(train, N_TRAIN, replace=False))
    scaler = StandardScaler().fit(X[train])
    return (
        scaler.transform(X[train]).astype(np.float32),
        y[train],
        scaler.transform(X[test]).astype(np.float32),
        y[test],
    )


def _quiet_fit(model, X, y, blas_threads=None):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        if blas_threads is None:
            return model.fit(X, y)
        with threadpool_limits(limits=blas_threads, user_api="blas"):
            return model.fit(X, y)


def fit_speed(args, data) -> tuple[list[dict], dict]:
    X, y, X_test, y_test = split(data, args.seed)
    default = FocalHeadClassifier(random_state=args.seed)
    hidden = tuple(default.hidden_units)
    old = dict(hidden_units=(512,), max_epochs=50, min_steps_per_epoch=1, n_iter_no_change=51, noise_std=0.0,
               weight_decay=0.0, dropout=0.0, feature_dropout=0.0, mixup_alpha=0.0)  # fmt: skip
    models = {
        "focal_default": (default, None),
        "mlp_same_architecture": (MLPClassifier(hidden_layer_sizes=hidden, random_state=args.seed), None),
        "mlp_same_architecture_1_blas_thread": (MLPClassifier(hidden_layer_sizes=hidden, random_state=args.seed), 1),
        "focal_torch_default_threads": (clone(default).set_params(n_threads=None), None),
        "focal_fixed_50_epochs": (clone(default).set_params(max_epochs=50, n_iter_no_change=51, min_steps_per_epoch=1), None),
        "focal_batch_512": (clone(default).set_params(batch_size=512), None),
        "focal_old_defaults": (clone(default).set_params(**old), None),
        "logistic_regression": (LogisticRegression(C=0.01, max_iter=3000), None),
    }  # fmt: skip
    if args.quick:
        for name in ("focal_batch_512", "focal_old_defaults", "focal_torch_default_threads"):
            models.pop(name)
    fitted = {}

    def runner(name):
        model, blas = models[name]

        def run():
            fitted[name] = _quiet_fit(clone(model), X, y, blas)

        return run

    times = C.interleaved({name: runner(name) for name in models}, repeats=args.repeats, warmup=0)
    rows = []
    ref = "mlp_same_architecture"
    for name in models:
        model = fitted[name]
        row = {
            "model": name,
            "fit_s": float(np.median(times[name])),
            "over_mlp": C.median_ratio(times[name], times[ref]),
            "over_mlp_1_thread": C.median_ratio(times[name], times[f"{ref}_1_blas_thread"]),
            "epochs": int(getattr(model, "n_iter_", 0)) or None,
            "balanced_accuracy": float(balanced_accuracy_score(y_test, model.predict(X_test))),
            "times_s": times[name],
        }
        row["over_faster_mlp"] = max(row["over_mlp"], row["over_mlp_1_thread"])
        rows.append(row)
        print(f"  {name:38s} {row['fit_s']:7.2f} s  x{row['over_faster_mlp']:.2f} of the faster MLP  "
              f"epochs {row['epochs']}  balanced acc {row['balanced_accuracy']:.3f}", flush=True)  # fmt: skip
    info = {
        "n_train": len(y),
        "n_test": len(y_test),
        "dim": X.shape[1],
        "hidden_units": hidden,
        "source": data["source"],
    }
    return rows, info


def study_speed(args, data) -> dict:
    import optuna

    try:
        from skdfl.model_selection import HeadSearchCV
    except ImportError:  # the package before its model_selection subpackage
        from skdfl.tuning import HeadSearchCV

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    X = StandardScaler().fit_transform(np.asarray(data["X"], dtype=np.float32)).astype(np.float32)
    search = HeadSearchCV(n_trials=args.trials, cv=5, refit=False, random_state=args.seed)
    with C.Stopwatch() as sw:
        search.fit(X, data["y"], groups=data["groups"])
    states = [t.state.name for t in search.study_.trials]
    durations = [t.duration.total_seconds() for t in search.study_.trials if t.duration is not None]
    row = {"trials": len(states), "pruned": states.count("PRUNED"), "study_s": sw.seconds,
           "median_trial_s": float(np.median(durations)), "best_balanced_accuracy": float(search.best_score_),
           "best_params": search.best_params_}  # fmt: skip
    print(
        f"  HeadSearchCV {row['trials']} trials: {sw.seconds:.0f} s, best {row['best_balanced_accuracy']:.3f}"
    )
    return row


def main():
    p = C.parser("head_speed", __doc__)
    p.add_argument("--embeddings", type=Path, default=None, help="folder holding idc_densenet121.npz")
    p.add_argument("--repeats", type=int, default=None, help="interleaved rounds (default 3, 1 with --quick)")
    p.add_argument("--study", action="store_true", help="also time a HeadSearchCV study (part B)")
    p.add_argument("--trials", type=int, default=None, help="study trials (default 50, 10 with --quick)")
    args = p.parse_args()
    args.repeats = args.repeats or (1 if args.quick else 3)
    args.trials = args.trials or (10 if args.quick else 50)
    C.quiet_warnings()
    t_start = time.perf_counter()
    data = load_embeddings(args)
    print(
        f"embeddings: {data['source']}, {np.shape(data['X'])}; torch threads {torch.get_num_threads()}",
        flush=True,
    )
    rows, info = fit_speed(args, data)
    t1 = C.md_table(rows, [
        ("model", "model", ""), ("fit_s", "fit s (median)", ".2f"),
        ("over_mlp", "/ MLP (BLAS default threads)", ".2f"), ("over_mlp_1_thread", "/ MLP (1 BLAS thread)", ".2f"),
        ("epochs", "epochs", "d"), ("balanced_accuracy", "balanced acc (held-out patients)", ".3f"),
    ])  # fmt: skip
    title = f"{info['n_train']} x {info['dim']} {info['source']}, hidden_units={info['hidden_units']}"
    print(f"\n### Head fit time, interleaved x{args.repeats}: {title}\n")
    print(t1)
    tables, results = [t1], {"fit": rows, "fit_info": info}
    if args.study:
        results["study"] = study_speed(args, data)
        t2 = C.md_table([results["study"]], [
            ("trials", "trials", "d"), ("pruned", "pruned", "d"), ("study_s", "study s", ".0f"),
            ("median_trial_s", "median trial s", ".1f"), ("best_balanced_accuracy", "best CV balanced acc", ".3f"),
        ])  # fmt: skip
        print(f"\n### {args.trials}-trial HeadSearchCV study, 5 patient-grouped folds\n")
        print(t2)
        tables.append(t2)
    config = {"defaults": {k: v for k, v in FocalHeadClassifier().get_params().items() if k != "callbacks"},
              "bf16": "not measured (no native bf16 reported by torch on the development CPUs)",
              "vmap_fold_batching": "not implemented"}  # fmt: skip
    C.write_result(args, "head_speed", config=config, results=results, tables=tables, device="cpu",
                   seconds=time.perf_counter() - t_start)  # fmt: skip


if __name__ == "__main__":
    main()
