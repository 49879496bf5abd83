"""Distributed Optuna over an RDB storage, on embeddings extracted once to an on-disk store.

Runs offline in about a minute on a laptop (a random-init backbone on the SYNTHETIC tissue patches of
``skdfl.datasets``; use a pretrained backbone and your data for real work)::

    python examples/optuna_distributed.py                      # SQLite file, 3 worker processes

Across machines, point every worker at the same database and a store on a shared filesystem::

    python examples/optuna_distributed.py --storage postgresql://user:pw@db-host/optuna --workers 0
    # then, on each machine (as many processes as you like):
    python examples/optuna_distributed.py worker --storage postgresql://user:pw@db-host/optuna \\
        --store /shared/skdfl-example-store --trials 20

Each worker is an ordinary process: ``optuna.load_study(...).optimize(objective)``. Optuna coordinates
them through the database, and every trial reads the same memory-mapped embeddings (extracted once, never
recomputed).
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

STUDY = "skdfl-head"


def storage_for(url: str):
    """An Optuna storage for ``url``; SQLite gets a generous lock timeout for concurrent writers."""
    import optuna

    if url.startswith("sqlite"):
        return optuna.storages.RDBStorage(url, engine_kwargs={"connect_args": {"timeout": 60}})
    return optuna.storages.RDBStorage(url, heartbeat_interval=60, grace_period=120)  # reaps dead workers


def extract(store_path: Path, n_samples: int) -> None:
    """Embed the synthetic data set once (resumable: re-running skips finished chunks)."""
    from skdfl import BackboneEmbedder
    from skdfl.datasets import make_tissue_patches
    from skdfl.storage import extract_to_store

    X, y = make_tissue_patches(n_samples, random_state=0)  # SYNTHETIC multi-zoom patches
    embedder = BackboneEmbedder(
        "resnet18", pretrained=False, views=["x20", "x5"], image_size=64, precision="fp32", verbose=0
    )
    store = extract_to_store(X, store_path, embedder, chunk_size=256, verbose=1)
    np.save(store_path / "labels.npy", np.asarray(y))  # the store holds embeddings; keep labels beside them
    print(f"store: {store.path} {store.shape}")


def objective(trial, X, y) -> float:
    from sklearn.model_selection import StratifiedKFold, cross_val_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from skdfl.heads import FocalHeadClassifier

    head = FocalHeadClassifier(
        hidden_units=(trial.suggest_categorical("hidden", [32, 128]),),
        noise_std=trial.suggest_float("noise_std", 0.0, 0.5),
        gamma=trial.suggest_float("gamma", 0.0, 3.0),
        lr=trial.suggest_float("lr", 1e-4, 1e-2, log=True),
        max_epochs=15,
        batch_size=64,
        device="cpu",
        random_state=0,
    )
    trial.set_user_attr("worker", f"{socket.gethostname()}:{os.getpid()}")
    cv = StratifiedKFold(3, shuffle=True, random_state=0)
    return cross_val_score(make_pipeline(StandardScaler(), head), X, y, cv=cv, scoring="balanced_accuracy").mean()


def work(storage_url: str, store_path: Path, n_trials: int) -> None:
    """One worker process: load the study and run trials on the memory-mapped store."""
    import optuna
    import torch

    from skdfl.storage import load_store

    torch.set_num_threads(1)  # several workers share the machine's cores
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    X = load_store(store_path).embeddings  # memory-mapped: every process shares the page cache
    y = np.load(store_path / "labels.npy", allow_pickle=True)
    study = optuna.load_study(study_name=STUDY, storage=storage_for(storage_url))
    study.optimize(lambda t: objective(t, X, y), n_trials=n_trials)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("role", nargs="?", choices=("run", "worker"), default="run")
    p.add_argument("--storage", default=None, help="RDB URL (default: sqlite:///<workdir>/optuna.db)")
    p.add_argument("--workdir", type=Path, default=Path("skdfl-example"), help="store and SQLite file")
    p.add_argument("--store", type=Path, default=None, help="store folder (default: <workdir>/store)")
    p.add_argument("--workers", type=int, default=3, help="local worker processes to start (0: none)")
    p.add_argument("--trials", type=int, default=4, help="trials per worker")
    p.add_argument("--n-samples", type=int, default=240)
    args = p.parse_args(argv)
    store = args.store or args.workdir / "store"
    storage = args.storage or f"sqlite:///{(args.workdir / 'optuna.db').resolve()}"

    if args.role == "worker":
        work(storage, store, args.trials)
        return 0

    import optuna

    args.workdir.mkdir(parents=True, exist_ok=True)
    extract(store, args.n_samples)
    optuna.create_study(study_name=STUDY, storage=storage_for(storage), direction="maximize", load_if_exists=True)
    start = time.perf_counter()
    procs = [
        subprocess.Popen([sys.executable, __file__, "worker", "--storage", storage, "--store", str(store),
                          "--trials", str(args.trials)])  # fmt: skip
        for _ in range(args.workers)
    ]
    if any(proc.wait() != 0 for proc in procs):
        print("a worker failed", file=sys.stderr)
        return 1
    study = optuna.load_study(study_name=STUDY, storage=storage_for(storage))
    done = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    workers = {t.user_attrs.get("worker") for t in done}
    print(f"{len(done)} trials by {len(workers)} worker processes in {time.perf_counter() - start:.0f} s")
    print(f"best balanced accuracy {study.best_value:.3f} with {study.best_params}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
