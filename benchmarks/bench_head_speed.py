"""Head and tuning speed: FocalHeadClassifier fit time, and a 50-trial Optuna study on cached embeddings.

Part A times ``FocalHeadClassifier`` (512 hidden units, batch 128, Adam) on 10,000 x 2,048 float32
embeddings, interleaved with scikit-learn's ``MLPClassifier`` doing the same arithmetic (one 512-unit
hidden layer, Adam, batch 128, the same number of epochs, no early stopping) as a reference point for
the overhead of skorch/torch. The values are Gaussian with a linear label rule: fit time does not depend on
what the numbers are.

Part B runs ``skdfl.model_selection.HeadSearchCV`` (Optuna TPE + median pruning, skdfl's default search space,
3-fold patient-grouped CV, no refit) for 50 trials (20 with ``--quick``) on real IDC embeddings from the ablation cache.
"""

from __future__ import annotations

import time
import warnings

import _common as C
import numpy as np

from skdfl.heads import FocalHeadClassifier


def fit_speed(args, device) -> dict:
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.neural_network import MLPClassifier

    rng = np.random.default_rng(args.seed)
    n, d = 10_000, 2048
    X = rng.standard_normal((n, d), dtype=np.float32)
    y = (X[:, :16].sum(1) > 0).astype(int)
    epochs = 5 if args.quick else 50
    focal = FocalHeadClassifier(max_epochs=epochs, device=device, random_state=args.seed)
    mlp = MLPClassifier(hidden_layer_sizes=(512,), batch_size=128, max_iter=epochs, n_iter_no_change=epochs + 1,
                        tol=0.0, random_state=args.seed)

    def fit_mlp():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            mlp.fit(X, y)

    times = C.interleaved({"focal": lambda: focal.fit(X, y), "sklearn_mlp": fit_mlp},
                          repeats=1, warmup=0, device=device)
    t_focal = float(np.median(times["focal"]))
    row = {
        "n": n, "dim": d, "epochs": epochs,
        "focal_fit_s": t_focal,
        "focal_s_per_epoch": t_focal / epochs,
        "focal_fit_s_50_epochs": t_focal / epochs * 50,
        "sklearn_mlp_fit_s": float(np.median(times["sklearn_mlp"])),
        "focal_over_sklearn": C.median_ratio(times["focal"], times["sklearn_mlp"]),
        "samples_per_s": n * epochs / t_focal,
        "times_s": times,
    }
    print(f"  FocalHead {epochs} epochs: {t_focal:.1f} s ({row['focal_s_per_epoch']:.2f} s/epoch), "
          f"sklearn MLP {row['sklearn_mlp_fit_s']:.1f} s", flush=True)
    return row


def optuna_speed(args, device, root) -> dict:
    import optuna

    from skdfl.model_selection import HeadSearchCV

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    n = 800 if args.quick else None
    idc = C.load_idc(root, n=n, seed=args.seed)
    spec = C.main_backbone()
    # Same cache entry as bench_ablations (RGB + gray); the RGB half is the standard DFL input.
    Z, rec = C.embed_cached(idc["path"].tolist(), "idc-main-rgbgray", device=device,
                            colors=["rgb", "gray"], **C.embedder_kwargs(spec))
    Z = Z[:, : Z.shape[1] // 2]
    y, groups = idc["label"].to_numpy(), idc["patient"].to_numpy()
    search = HeadSearchCV(n_trials=args.trials, cv=3, refit=False, random_state=args.seed)
    with C.Stopwatch() as sw:
        search.fit(Z, y, groups=groups)
    states = [t.state.name for t in search.study_.trials]
    durations = [t.duration.total_seconds() for t in search.study_.trials if t.duration is not None]
    row = {
        "n": len(Z), "dim": Z.shape[1], "trials": len(states), "pruned": states.count("PRUNED"),
        "complete": states.count("COMPLETE"), "study_s": sw.seconds,
        "median_trial_s": float(np.median(durations)), "best_balanced_accuracy": float(search.best_score_),
        "best_params": search.best_params_, "embedding": rec, "backbone": spec["label"],
    }
    # What the same study would cost if every trial re-embedded the images instead of reading the cache.
    if not rec["cache_hit"]:
        row["extraction_s"] = rec["seconds"]
    print(f"  Optuna {row['trials']} trials: {sw.seconds:.0f} s, best balanced acc {row['best_balanced_accuracy']:.3f}",
          flush=True)
    return row


def main():
    p = C.parser("head_speed", __doc__)
    p.add_argument("--trials", type=int, default=None, help="Optuna trials (default 20 quick, 50 full)")
    args = p.parse_args()
    C.quiet_warnings()
    t_start = time.perf_counter()
    root, device = C.data_root(args), C.device_of(args)
    args.trials = args.trials or (20 if args.quick else 50)
    a = fit_speed(args, device)
    b = optuna_speed(args, device, root)
    t1 = C.md_table([a], [
        ("n", "samples", "d"), ("dim", "dims", "d"), ("epochs", "epochs timed", "d"),
        ("focal_fit_s", "FocalHead fit s", ".1f"), ("focal_s_per_epoch", "s / epoch", ".2f"),
        ("focal_fit_s_50_epochs", "FocalHead s for 50 epochs", ".1f"),
        ("sklearn_mlp_fit_s", "sklearn MLPClassifier s (same epochs)", ".1f"),
        ("focal_over_sklearn", "FocalHead / sklearn time", ".2f"),
    ])  # fmt: skip
    t2 = C.md_table([b], [
        ("backbone", "embeddings", ""), ("n", "samples", "d"), ("dim", "dims", "d"), ("trials", "trials", "d"),
        ("pruned", "pruned", "d"), ("study_s", "study wall s", ".0f"), ("median_trial_s", "median trial s", ".1f"),
        ("best_balanced_accuracy", "best CV balanced acc", ".3f"),
    ])  # fmt: skip
    print("\n### FocalHeadClassifier fit time (10k x 2048 embeddings)\n")
    print(t1)
    print(f"\n### {args.trials}-trial Optuna study (HeadSearchCV) on cached IDC embeddings\n")
    print(t2)
    config = {"fit": "FocalHeadClassifier defaults (512 hidden, batch 128, Adam 1e-3), 10k x 2048 Gaussian",
              "search": "HeadSearchCV defaults: head_search_space, TPE, MedianPruner, cv=3 grouped, refit=False"}
    C.write_result(args, "head_speed", config=config, results={"fit": a, "optuna": b}, tables=[t1, t2],
                   device=device, seconds=time.perf_counter() - t_start)


if __name__ == "__main__":
    main()
