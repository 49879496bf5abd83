"""Head speed: ``FocalHeadClassifier()`` against ``MLPClassifier`` with the same architecture, and a tuning study,
against the code before the speed work (issue 14.3).

Part A fits, interleaved round by round in alternating order, on 4,000 x 1,024 IDC embeddings (Keras
DenseNet-121, standardised on the training rows) taken from the patients of a grouped split, and scores each
model on the held-out patients:

* ``FocalHeadClassifier()`` with its defaults (a linear head);
* ``MLPClassifier`` with the same architecture (``hidden_layer_sizes=()``: one dense layer, a logistic
  regression trained by Adam) and its own defaults, once with numpy's default BLAS threads and once limited to
  one thread (on a machine shared with other jobs multi-threaded BLAS can be much slower; the ratio to the
  faster of the two is reported too), and once with the focal head's L2 penalty (``alpha`` matched to
  ``weight_decay``), a fairer opponent for accuracy;
* the levers the defaults pick from, each changed alone: torch's default thread count instead of one, a fixed
  50-epoch budget instead of the convergence stop, batch 512, full-batch steps;
* the defaults of the code before the speed work (``--old-code``, by default commit ``82eccf9`` unpacked with
  ``git archive``): 512 hidden units, focal loss, no noise or weight decay, ``tol=1e-4``,
  ``n_iter_no_change=10``; fitted in a worker process that imports that code (and also with today's default
  values, which isolates the implementation), next to ``MLPClassifier(hidden_layer_sizes=(512,))``;
* a logistic regression (lbfgs).

Part B (``--study``) runs a ``HeadSearchCV`` study (default search space, Optuna TPE seeded by ``--seed``,
median pruning, 5 patient-grouped folds, ``refit=False``) on all IDC embeddings, once with today's code and
once with the old code, each in its own worker process. To interleave them, the two studies grow in chunks
(``--study-chunk`` trials, resumed from an in-memory Optuna storage kept by each worker, as a study resumes
from a database), alternating which side runs first.

Part C times optimiser steps of the head's module in bf16 autocast against fp32 (``torch.autocast`` on CPU),
for the linear and the 512-unit head. ``HeadSearchCV`` fold batching (stacked weights) is measured by
``bench_fold_batching.py``.

Without ``--embeddings`` the IDC embeddings are computed with the public API (cached under ``results/cache``);
without the data, a synthetic 4,700 x 1,024 problem stands in (said so in the output).

Examples
--------
python benchmarks/bench_head_speed.py --embeddings /work/notes/emb --repeats 5
python benchmarks/bench_head_speed.py --embeddings /work/notes/emb --no-fit --study \
    --out benchmarks/results/head_speed_study.json
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tarfile
import tempfile
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

from skdfl.heads import FocalHeadClassifier, FocalLoss, MLPHead

N_TRAIN = 4000
OLD_COMMIT = "82eccf9"
# Held-out patients: 12 % of the 27 IDC patients leaves more than 4,000 training patches to sample from.
TEST_FRACTION = 0.12
STUDY_NAME = "bench-head-speed"


def load_embeddings(args) -> dict:
    """IDC embeddings, labels and patients, from ``--embeddings``, the data folder, or synthetic."""
    if args.embeddings is not None:
        path = Path(args.embeddings) / "idc_densenet121.npz"
        if not path.is_file():
            sys.exit(f"--embeddings: {path} not found (expected keys X, y, groups)")
        z = np.load(path, allow_pickle=True)
        return {
            "X": z["X"],
            "y": z["y"].astype(str),
            "groups": z["groups"].astype(str),
            "source": f"IDC {path.name}",
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
            "source": f"IDC {record}",
        }
    X, y = make_classification(n_samples=4700, n_features=1024, n_informative=64, flip_y=0.1, random_state=0)
    groups = np.arange(len(y)) % 27
    return {
        "X": X,
        "y": y.astype(str),
        "groups": groups.astype(str),
        "source": "synthetic (no IDC data found)",
    }


def split(data: dict, seed: int):
    """``N_TRAIN`` training rows drawn from most patients; the other patients' rows are the test set."""
    X, y, groups = np.asarray(data["X"], dtype=np.float32), np.asarray(data["y"]), np.asarray(data["groups"])
    train, test = next(
        GroupShuffleSplit(n_splits=1, test_size=TEST_FRACTION, random_state=seed).split(X, y, groups)
    )
    rng = np.random.default_rng(seed)
    if len(train) > N_TRAIN:
        train = np.sort(rng.choice(train, N_TRAIN, replace=False))
    scaler = StandardScaler().fit(X[train])
    return {
        "X": scaler.transform(X[train]).astype(np.float32),
        "y": y[train],
        "X_test": scaler.transform(X[test]).astype(np.float32),
        "y_test": y[test],
        "test_patients": len(np.unique(groups[test])),
    }


def _quiet_fit(model, X, y, blas_threads=None):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        if blas_threads is None:
            return model.fit(X, y)
        with threadpool_limits(limits=blas_threads, user_api="blas"):
            return model.fit(X, y)


def _load() -> list[float]:
    return [round(v, 2) for v in os.getloadavg()]


# ------------------------------------------------------------------------------------------ old code
def old_code_root(args) -> Path | None:
    """A folder holding the old ``skdfl`` package: ``--old-code`` (a folder) or ``git archive OLD_COMMIT``."""
    if args.old_code is not None and Path(args.old_code).is_dir():
        root = Path(args.old_code).resolve()
    else:
        commit = args.old_code or OLD_COMMIT
        root = Path(tempfile.mkdtemp(prefix=f"skdfl-{commit}-"))
        archive = subprocess.run(
            ["git", "-C", str(C.HERE.parent), "archive", commit, "skdfl"], capture_output=True, check=False
        )
        if archive.returncode != 0:  # e.g. not a git checkout: the old-code rows are left out, said so
            print(f"old code {commit} unavailable, its rows are left out: git archive failed: "
                  f"{archive.stderr.decode(errors='replace').strip()}", flush=True)  # fmt: skip
            return None
        with tempfile.TemporaryFile() as tar_file:
            tar_file.write(archive.stdout)
            tar_file.seek(0)
            with tarfile.open(fileobj=tar_file) as tar:
                tar.extractall(root, filter="data")
    if not (root / "skdfl" / "__init__.py").is_file():
        sys.exit(f"--old-code: no skdfl package under {root}")
    return root


class Worker:
    """A process that imports ``skdfl`` from ``code_root`` and fits heads or grows a study on request.

    The fit and study times are measured inside the worker, so the process round trip is not counted.
    """

    def __init__(self, code_root: Path, data_file: Path, label: str):
        env = dict(os.environ, PYTHONPATH=str(code_root), PYTHONWARNINGS="ignore")
        # The working directory must not hold a ``skdfl`` folder, or it would shadow ``code_root``.
        self.process = subprocess.Popen(
            [sys.executable, str(Path(__file__).resolve()), "--worker", str(data_file)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env, cwd=tempfile.gettempdir(),
        )  # fmt: skip
        self.label = label
        hello = self.receive()
        if Path(hello["skdfl"]).resolve().parent != Path(code_root).resolve():
            self.close()
            raise RuntimeError(f"{label} worker imported skdfl from {hello['skdfl']}, not from {code_root}")
        self.skdfl_file = hello["skdfl"]

    def receive(self) -> dict:
        line = self.process.stdout.readline()
        if not line:
            raise RuntimeError(
                f"{self.label} worker exited (status {self.process.poll()}); see its stderr above"
            )
        reply = json.loads(line)
        if "error" in reply:
            raise RuntimeError(f"{self.label} worker: {reply['error']}")
        return reply

    def send(self, **message) -> None:
        self.process.stdin.write(json.dumps(message) + "\n")
        self.process.stdin.flush()

    def request(self, **message) -> dict:
        self.send(**message)
        return self.receive()

    def close(self):
        if self.process.poll() is None:
            self.process.stdin.close()
            self.process.wait(timeout=60)


def _to_json(value):
    """numpy scalars and arrays (e.g. in ``best_params_``) as plain JSON values."""
    return value.tolist() if isinstance(value, (np.generic, np.ndarray)) else repr(value)


def worker_main(data_file: str) -> None:
    """Serve ``fit`` and ``study`` requests (one JSON object a line) on the data in ``data_file``."""
    import traceback

    import skdfl
    from skdfl.heads import FocalHeadClassifier as Head

    replies = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)  # anything the libraries print goes to stderr, keeping stdout for the replies
    warnings.simplefilter("ignore")
    data = dict(np.load(data_file, allow_pickle=False))
    state = {}

    def reply(**message):
        replies.write(json.dumps(message, default=_to_json) + "\n")
        replies.flush()

    def fit(params):
        model = Head(**params)
        start = time.perf_counter()
        model.fit(data["X"], data["y"])
        seconds = time.perf_counter() - start
        accuracy = balanced_accuracy_score(data["y_test"], model.predict(data["X_test"]))
        return {"seconds": seconds, "epochs": int(model.n_iter_), "balanced_accuracy": float(accuracy)}

    def study(n_trials, seed, cv, space="default"):
        import optuna

        from skdfl.model_selection import HeadSearchCV

        search_space = None
        if space == "mlp":  # only the new code has it
            from skdfl.model_selection import mlp_head_search_space as search_space
        storage = state.setdefault(f"storage-{space}", optuna.storages.InMemoryStorage())
        search = HeadSearchCV(
            search_space=search_space, n_trials=n_trials, cv=cv, refit=False, random_state=seed, storage=storage,
            study_name=STUDY_NAME, verbose=0,
        )  # fmt: skip
        start = time.perf_counter()
        search.fit(data["study_X"], data["study_y"], groups=data["study_groups"])
        seconds = time.perf_counter() - start
        trials = search.study_.trials
        best = search.best_trial_
        return {
            "seconds": seconds,
            "trials": len(trials),
            "pruned": sum(t.state.name == "PRUNED" for t in trials),
            "best_score": float(search.best_score_),
            "best_split_scores": best.user_attrs.get("split_scores"),
            "best_number": best.number,
            "best_params": search.best_params_,
            "trial_seconds": [t.duration.total_seconds() if t.duration else None for t in trials],
            "trial_states": [t.state.name for t in trials],
        }

    reply(skdfl=os.path.dirname(skdfl.__file__))
    for line in sys.stdin:
        message = json.loads(line)
        try:
            if message["op"] == "fit":
                reply(**fit(message["params"]))
            elif message["op"] == "study":
                reply(
                    **study(
                        message["n_trials"], message["seed"], message["cv"], message.get("space", "default")
                    )
                )
            else:
                reply(error=f"unknown op {message['op']!r}")
        except Exception:  # the parent prints it and stops
            reply(error=traceback.format_exc())


# ------------------------------------------------------------------------------------------ part A
def interleaved_self_timed(fns: dict, *, repeats: int) -> tuple[dict, list]:
    """Like ``C.interleaved``, for functions that return their own measured seconds (a worker's fit time)."""
    names = list(fns)
    times: dict[str, list[float]] = {n: [] for n in names}
    loads = []
    for r in range(repeats):
        for name in names if r % 2 == 0 else names[::-1]:
            times[name].append(fns[name]())
        loads.append(_load())
        print(f"  round {r + 1}/{repeats} done, load average {loads[-1]}", flush=True)
    return times, loads


def fit_speed(args, data, old_worker) -> tuple[list[dict], dict]:
    d = split(data, args.seed)
    X, y, X_test, y_test = d["X"], d["y"], d["X_test"], d["y_test"]
    default = FocalHeadClassifier(random_state=args.seed)
    hidden = tuple(default.hidden_units)
    # torch's Adam weight_decay adds wd * w to the gradient; scikit-learn's MLP adds alpha * w / batch_size.
    mlp_batch = min(200, len(y))
    same_l2 = float(default.weight_decay) * mlp_batch
    old_defaults = dict(hidden_units=(512,), gamma=2.0, noise_std=0.0, weight_decay=0.0, tol=1e-4,
                        n_iter_no_change=10, min_steps_per_epoch=20, max_epochs=200, batch_size=128,
                        lr=1e-3)  # fmt: skip
    new_values = {k: v for k, v in default.get_params().items() if k in old_defaults}
    new_values["hidden_units"] = list(new_values["hidden_units"])
    models = {
        "focal_default": (default, None),
        "mlp_same_architecture": (MLPClassifier(hidden_layer_sizes=hidden, random_state=args.seed), None),
        "mlp_same_architecture_1_blas_thread": (MLPClassifier(hidden_layer_sizes=hidden, random_state=args.seed), 1),
        "mlp_same_architecture_same_l2": (
            MLPClassifier(hidden_layer_sizes=hidden, alpha=same_l2, random_state=args.seed), None),
        "focal_torch_default_threads": (clone(default).set_params(n_threads=None), None),
        "focal_fixed_50_epochs": (clone(default).set_params(max_epochs=50, n_iter_no_change=51), None),
        # The training budget before issue 14 (batch 128, lr 1e-3, at least 20 steps per epoch).
        "focal_issue12_budget": (clone(default).set_params(batch_size=128, lr=1e-3, min_steps_per_epoch=20), None),
        "focal_batch_512": (clone(default).set_params(batch_size=512), None),
        "focal_batch_512_lr_4x": (clone(default).set_params(batch_size=512, lr=4 * default.lr), None),
        "focal_full_batch": (clone(default).set_params(batch_size=len(y)), None),
        "focal_full_batch_lr_10x": (clone(default).set_params(batch_size=len(y), lr=10 * default.lr), None),
        "focal_old_defaults_new_code": (clone(default).set_params(**old_defaults), None),
        "mlp_512": (MLPClassifier(hidden_layer_sizes=(512,), random_state=args.seed), None),
        "logistic_regression": (LogisticRegression(C=1e-3, max_iter=3000), None),
    }  # fmt: skip
    if args.quick:
        for name in ("focal_batch_512", "focal_full_batch", "focal_torch_default_threads", "mlp_512",
                     "focal_batch_512_lr_4x", "focal_full_batch_lr_10x",
                     "focal_old_defaults_new_code", "mlp_same_architecture_same_l2"):  # fmt: skip
            models.pop(name)
    fitted, runners = {}, {}

    def runner(name):
        model, blas = models[name]

        def run():
            start = time.perf_counter()
            fitted[name] = _quiet_fit(clone(model), X, y, blas)
            return time.perf_counter() - start

        return run

    runners = {name: runner(name) for name in models}
    old_results = {}
    if old_worker is not None:
        for name, params in (("old_code_old_defaults", {}), ("old_code_new_default_values", new_values)):
            params = {**params, "random_state": args.seed}

            def run(name=name, params=params):
                old_results[name] = old_worker.request(op="fit", params=params)
                return old_results[name]["seconds"]

            runners[name] = run
    times, loads = interleaved_self_timed(runners, repeats=args.repeats)
    rows = []
    ref, ref_1 = "mlp_same_architecture", "mlp_same_architecture_1_blas_thread"
    for name in runners:
        if name in fitted:
            model = fitted[name]
            epochs = int(np.max(getattr(model, "n_iter_", 0))) or None
            accuracy = float(balanced_accuracy_score(y_test, model.predict(X_test)))
        else:
            epochs, accuracy = old_results[name]["epochs"], old_results[name]["balanced_accuracy"]
        row = {
            "model": name,
            "fit_s": float(np.median(times[name])),
            "over_mlp": C.median_ratio(times[name], times[ref]),
            "over_mlp_1_thread": C.median_ratio(times[name], times[ref_1]),
            "epochs": epochs,
            "balanced_accuracy": accuracy,
            "times_s": times[name],
        }
        row["over_faster_mlp"] = max(row["over_mlp"], row["over_mlp_1_thread"])
        rows.append(row)
        print(f"  {name:38s} {row['fit_s']:7.2f} s  x{row['over_mlp']:.2f} of MLP, x{row['over_faster_mlp']:.2f} of "
              f"the faster MLP; epochs {row['epochs']}; balanced acc {row['balanced_accuracy']:.3f}", flush=True)  # fmt: skip
    info = {
        "n_train": len(y),
        "n_test": len(y_test),
        "test_patients": d["test_patients"],
        "dim": X.shape[1],
        "hidden_units": hidden,
        "mlp_same_l2_alpha": same_l2,
        "old_defaults": old_defaults,
        "source": data["source"],
        "load_average_after_each_round": loads,
    }
    return rows, info


# ------------------------------------------------------------------------------------------ part B
def study_speed(args, workers: dict, on_chunk=None) -> dict:
    """Grow the two studies chunk by chunk, alternating which side goes first; times are summed per side.

    ``on_chunk(chunks)`` is called after each chunk (to save the partial results of a long run).
    """
    sides = list(workers)
    space = {side: args.study_space if side == "new" else "default" for side in sides}
    targets = list(range(args.study_chunk, args.trials, args.study_chunk)) + [args.trials]
    chunks, last = [], {}
    for i, n_trials in enumerate(targets):
        order = sides if i % 2 == 0 else sides[::-1]
        chunk = {"n_trials": n_trials, "load_average_before": _load()}
        if args.study_parallel:
            # Both sides at once, so that both see the same load; the side that finishes its chunk first
            # leaves the other alone with the cores for the rest of it, which can only favour the slower side.
            for side in order:
                workers[side].send(op="study", n_trials=n_trials, seed=args.seed, cv=5, space=space[side])
            for side in order:
                last[side] = workers[side].receive()
                chunk[f"{side}_s"] = last[side]["seconds"]
        else:
            for side in order:
                last[side] = workers[side].request(
                    op="study", n_trials=n_trials, seed=args.seed, cv=5, space=space[side]
                )
                chunk[f"{side}_s"] = last[side]["seconds"]
        for side in sides:
            chunk[f"{side}_best"] = last[side]["best_score"]
            chunk[f"{side}_pruned"] = last[side]["pruned"]
        chunks.append(chunk)
        if on_chunk is not None:
            on_chunk(chunks)
        print(f"  study to {n_trials} trials: " + ", ".join(f"{s} {chunk[f'{s}_s']:.0f} s" for s in sides)
              + f"; load average {chunk['load_average_before']}", flush=True)  # fmt: skip
    rows = []
    for side in sides:
        r = last[side]
        split_scores = np.asarray(r["best_split_scores"], dtype=float)
        durations = [s for s in r["trial_seconds"] if s is not None]
        rows.append({
            "code": side if space[side] == "default" else f"{side}, {space[side]}_head_search_space",
            "trials": r["trials"],
            "pruned": r["pruned"],
            "study_s": float(sum(c[f"{side}_s"] for c in chunks)),
            "median_trial_s": float(np.median(durations)),
            "best_balanced_accuracy": r["best_score"],
            "best_fold_std": float(split_scores.std(ddof=1)),
            "best_trial": r["best_number"],
            "best_params": r["best_params"],
            "trial_seconds": r["trial_seconds"],
            "trial_states": r["trial_states"],
        })  # fmt: skip
    if len(rows) == 1:  # the new code alone (--study-sides new)
        return {"rows": rows, "chunks": chunks}
    new, old = rows[0], rows[1]
    speedup = old["study_s"] / new["study_s"]
    chunk_ratios = [c[f"{sides[1]}_s"] / c[f"{sides[0]}_s"] for c in chunks]
    for row in rows:
        row["speedup_vs_old"] = old["study_s"] / row["study_s"]
    print(f"  speed-up {speedup:.2f}x (median of chunk ratios {np.median(chunk_ratios):.2f}x); best CV balanced "
          f"accuracy new {new['best_balanced_accuracy']:.3f} vs old {old['best_balanced_accuracy']:.3f}", flush=True)  # fmt: skip
    return {
        "rows": rows,
        "chunks": chunks,
        "speedup": speedup,
        "median_chunk_speedup": float(np.median(chunk_ratios)),
    }


# ------------------------------------------------------------------------------------------ part D
def config_speed(args, workers: dict) -> list[dict]:
    """One fit per configuration of a study's random start-up trials, in both workers, alternating order.

    The first trials of a TPE study are drawn at random from the search space, so with the same seed both
    studies of part B fit exactly these configurations: this separates the time per epoch from the number
    of epochs the convergence test lets each code run.
    """
    import optuna

    from skdfl.model_selection import head_search_space

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.TPESampler(seed=args.seed))
    configs = []

    def draw(trial):
        configs.append(head_search_space(trial))
        return 0.0

    study.optimize(draw, n_trials=args.configs)
    rows = []
    for i, params in enumerate(configs):
        params = {**params, "hidden_units": list(params["hidden_units"]), "random_state": args.seed}
        row = {"config": i, "hidden_units": str(tuple(params["hidden_units"])), "max_epochs": params["max_epochs"],
               "lr": params["lr"], "noise_std": params["noise_std"]}  # fmt: skip
        for side in ("new", "old") if i % 2 == 0 else ("old", "new"):
            r = workers[side].request(op="fit", params=params)
            row.update({f"{side}_s": r["seconds"], f"{side}_epochs": r["epochs"],
                        f"{side}_s_per_epoch": r["seconds"] / r["epochs"],
                        f"{side}_balanced_accuracy": r["balanced_accuracy"]})  # fmt: skip
        row["old_over_new"] = row["old_s"] / row["new_s"]
        row["load_average"] = _load()
        rows.append(row)
        print(f"  config {i} {row['hidden_units']:>12s} max_epochs {row['max_epochs']:3d}: new {row['new_s']:.1f} s "
              f"/ {row['new_epochs']} epochs, old {row['old_s']:.1f} s / {row['old_epochs']} epochs", flush=True)  # fmt: skip
    return rows


# ------------------------------------------------------------------------------------------ part C
def bf16_steps(args, n_steps: int) -> list[dict]:
    """ms per optimiser step of ``MLPHead`` + ``FocalLoss`` + Adam, fp32 vs bf16 autocast, one torch thread."""
    rows = []
    generator = torch.Generator().manual_seed(args.seed)
    X = torch.randn(N_TRAIN, 1024, generator=generator)
    y = torch.randint(0, 2, (N_TRAIN,), generator=generator)
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for hidden in ((), (512,)):

            def run(dtype, hidden=hidden):
                torch.manual_seed(args.seed)
                module = MLPHead(1024, 2, hidden_units=hidden, noise_std=1.0)
                criterion = FocalLoss(gamma=0.0)
                optimizer = torch.optim.Adam(module.parameters(), lr=1e-3, weight_decay=0.1)
                order = torch.randperm(N_TRAIN)
                start = time.perf_counter()
                for step in range(n_steps):
                    rows_ = order[(step * 128) % (N_TRAIN - 128) :][:128]
                    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype is torch.bfloat16):
                        loss = criterion(module(X[rows_]), y[rows_])
                    optimizer.zero_grad()
                    loss.float().backward()
                    optimizer.step()
                return (time.perf_counter() - start) / n_steps * 1e3

            times, _ = interleaved_self_timed(
                {"fp32": lambda run=run: run(torch.float32), "bf16": lambda run=run: run(torch.bfloat16)},
                repeats=min(args.repeats, 3),
            )
            rows.append({
                "hidden_units": str(hidden),
                "fp32_ms_per_step": float(np.median(times["fp32"])),
                "bf16_ms_per_step": float(np.median(times["bf16"])),
                "bf16_over_fp32": C.median_ratio(times["bf16"], times["fp32"]),
            })  # fmt: skip
    finally:
        torch.set_num_threads(previous)
    return rows


# -------------------------------------------------------------------------------------------- main
def main():
    if len(sys.argv) == 3 and sys.argv[1] == "--worker":
        worker_main(sys.argv[2])
        return
    p = C.parser("head_speed", __doc__)
    p.add_argument("--embeddings", type=Path, default=None, help="folder holding idc_densenet121.npz")
    p.add_argument("--repeats", type=int, default=None, help="interleaved rounds (default 5, 1 with --quick)")
    p.add_argument("--no-fit", action="store_true", help="skip part A (head fits)")
    p.add_argument("--study", action="store_true", help="run part B (HeadSearchCV study, new vs old code)")
    p.add_argument("--trials", type=int, default=None, help="study trials (default 50, 4 with --quick)")
    p.add_argument("--study-chunk", type=int, default=10, help="trials per interleaved chunk of the studies")
    p.add_argument(
        "--study-parallel",
        action="store_true",
        help="run each chunk of the two studies at the same time (one process each) instead of one after the other",
    )
    p.add_argument(
        "--study-space",
        choices=["default", "mlp"],
        default="default",
        help="search space of the new code's study: head_search_space or mlp_head_search_space (hidden layers)",
    )
    p.add_argument(
        "--study-sides",
        choices=["both", "new"],
        default="both",
        help="part B with the old code interleaved (both), or the new code alone (new)",
    )
    p.add_argument("--no-bf16", action="store_true", help="skip part C (bf16 autocast step times)")
    p.add_argument(
        "--configs",
        type=int,
        default=0,
        help="part D: fit the first N (random start-up) configurations of the study once with each code",
    )
    p.add_argument(
        "--old-code",
        default=None,
        help=f"folder holding the old skdfl package, or a git commit (default {OLD_COMMIT})",
    )
    args = p.parse_args()
    args.repeats = args.repeats or (1 if args.quick else 5)
    args.trials = args.trials or (4 if args.quick else 50)
    C.quiet_warnings()
    t_start = time.perf_counter()
    load_start = _load()
    data = load_embeddings(args)
    print(f"embeddings: {data['source']}, {np.shape(data['X'])}; torch threads {torch.get_num_threads()}; "
          f"load average {load_start}", flush=True)  # fmt: skip
    old_root = old_code_root(args)
    tables, results = [], {"load_average_start": load_start}
    with tempfile.TemporaryDirectory() as tmp:
        data_file = Path(tmp) / "data.npz"
        d = split(data, args.seed)
        np.savez(data_file, X=d["X"], y=d["y"], X_test=d["X_test"], y_test=d["y_test"],
                 study_X=np.asarray(data["X"], dtype=np.float32), study_y=np.asarray(data["y"]),
                 study_groups=np.asarray(data["groups"]))  # fmt: skip
        workers = {}
        try:
            if old_root is not None:
                workers["old"] = Worker(old_root, data_file, f"old code ({args.old_code or OLD_COMMIT})")
            if not args.no_fit:
                print("\nPart A: head fits, interleaved", flush=True)
                rows, info = fit_speed(args, data, workers.get("old"))
                t1 = C.md_table(rows, [
                    ("model", "model", ""), ("fit_s", "fit s (median)", ".2f"),
                    ("over_mlp", "/ MLP (default BLAS threads)", ".2f"),
                    ("over_mlp_1_thread", "/ MLP (1 BLAS thread)", ".2f"),
                    ("epochs", "epochs", "d"), ("balanced_accuracy", "balanced acc (held-out patients)", ".3f"),
                ])  # fmt: skip
                title = (f"{info['n_train']} x {info['dim']} {info['source']} ({info['n_test']} test patches of "
                         f"{info['test_patients']} patients), hidden_units={info['hidden_units']}")  # fmt: skip
                print(f"\n### Head fit time, interleaved x{args.repeats}: {title}\n\n{t1}", flush=True)
                tables.append(t1)
                results.update(fit=rows, fit_info=info)
            if args.configs and "old" in workers:
                print(f"\nPart D: the study's first {args.configs} configurations, one fit each", flush=True)
                workers["new"] = Worker(C.HERE.parent, data_file, "new code")
                configs = config_speed(args, workers)
                t4 = C.md_table(configs, [
                    ("config", "config", "d"), ("hidden_units", "hidden_units", ""), ("max_epochs", "max_epochs", "d"),
                    ("lr", "lr", ".4f"), ("new_epochs", "epochs (new)", "d"), ("old_epochs", "epochs (old)", "d"),
                    ("new_s_per_epoch", "s/epoch (new)", ".2f"), ("old_s_per_epoch", "s/epoch (old)", ".2f"),
                    ("old_over_new", "old / new time", ".2f"),
                    ("new_balanced_accuracy", "bal. acc (new)", ".3f"), ("old_balanced_accuracy", "bal. acc (old)", ".3f"),
                ])  # fmt: skip
                total = sum(r["old_s"] for r in configs) / sum(r["new_s"] for r in configs)
                print(f"\n{t4}\n\nold / new total time: {total:.2f}", flush=True)
                tables.append(t4)
                results["configs"] = {"rows": configs, "old_over_new_total": total}
            if args.study and "old" not in workers and args.study_sides == "both":
                print("Part B needs the old code; skipped", flush=True)
            elif args.study:
                print(f"\nPart B: {args.trials}-trial HeadSearchCV studies, new vs old code", flush=True)
                if "new" not in workers:
                    workers["new"] = Worker(C.HERE.parent, data_file, "new code")

                def save_partial(chunks):
                    C.write_result(args, "head_speed", config={"partial": "study still running"},
                                   results={**results, "study_chunks_so_far": chunks}, tables=tables,
                                   device="cpu", seconds=time.perf_counter() - t_start)  # fmt: skip

                sides = {"new": workers["new"]}
                if args.study_sides == "both":
                    sides["old"] = workers["old"]
                study = study_speed(args, sides, save_partial)
                t2 = C.md_table(study["rows"], [
                    ("code", "code", ""), ("trials", "trials", "d"), ("pruned", "pruned", "d"),
                    ("study_s", "study s", ".0f"), ("speedup_vs_old", "speed-up", ".2f"),
                    ("median_trial_s", "median trial s", ".1f"),
                    ("best_balanced_accuracy", "best CV balanced acc", ".3f"),
                    ("best_fold_std", "its fold std", ".3f"),
                ])  # fmt: skip
                print(f"\n### {args.trials}-trial HeadSearchCV study, 5 patient-grouped folds, "
                      f"{len(data['y'])} x {np.shape(data['X'])[1]}\n\n{t2}", flush=True)  # fmt: skip
                tables.append(t2)
                results["study"] = study
        finally:
            for worker in workers.values():
                worker.close()
    if not args.no_bf16:
        print(
            "\nPart C: bf16 autocast vs fp32, ms per optimiser step (batch 128, 1 torch thread)", flush=True
        )
        bf16 = bf16_steps(args, n_steps=50 if args.quick else 300)
        t3 = C.md_table(bf16, [
            ("hidden_units", "hidden_units", ""), ("fp32_ms_per_step", "fp32 ms/step", ".2f"),
            ("bf16_ms_per_step", "bf16 autocast ms/step", ".2f"), ("bf16_over_fp32", "bf16 / fp32 time", ".2f"),
        ])  # fmt: skip
        print(f"\n{t3}", flush=True)
        tables.append(t3)
        results["bf16"] = bf16
    results["load_average_end"] = _load()
    config = {
        "defaults": {k: v for k, v in FocalHeadClassifier().get_params().items() if k != "callbacks"},
        "old_code": str(args.old_code or OLD_COMMIT),
        "old_code_skdfl": workers["old"].skdfl_file if "old" in workers else None,
        "bf16": "part C: autocast step times of the head's module; FocalHeadClassifier has no bf16 option",
        "fold_batching": "see bench_fold_batching.py",
    }
    C.write_result(args, "head_speed", config=config, results=results, tables=tables, device="cpu",
                   seconds=time.perf_counter() - t_start)  # fmt: skip


if __name__ == "__main__":
    main()
