"""FocalHeadClassifier defaults chosen on new patients: patient-grouped CV on real embeddings (issue 12.1).

Every configuration is scored by balanced accuracy on patients the head never saw (``StratifiedGroupKFold``,
5 folds, reshuffled per seed; CRC has no patient ids and uses plain stratified folds as a sanity check). All
configurations see the same folds, so comparisons are paired per (seed, fold): the tables give the mean
difference, how often one side won, and a Wilcoxon signed-rank p-value.

Stages (``--stage``):

``screen``
    Selection seeds (0, 1). For the linear head (``hidden_units=()``) and the one-hidden-layer head
    (``(512,)``), one factor at a time from a plain base (no noise, no weight decay, no dropout, training-loss
    convergence stop): noise level, weight decay, dropout, feature dropout, mixup, early stopping (split by
    patient), training budget. Also the noise scaling on raw (unstandardised) embeddings.
``combine``
    Selection seeds: combinations of the factors that helped in ``screen``.
``final``
    Fresh report seeds (2, 3, 4), which played no part in the choice: old defaults, the new defaults
    (``StandardScaler + FocalHeadClassifier()``, no tuning), a logistic regression with ``C`` tuned by inner
    patient-grouped CV, each perturbation alone on top of the new defaults, and the best combination.

Embeddings: the Keras DenseNet-121 (``densenet121.keras_in1k``, skdfl's default embedder settings), computed
with the public API and cached under ``benchmarks/results/cache`` (``$SKDFL_BENCH_CACHE``), or read from
``--embeddings DIR`` holding ``{idc,breakhis,crc}_densenet121.npz`` (keys ``X``, ``y``, ``groups``). BreakHis
patient ids that differ only by a letter suffix (``14-22549AB``, ``14-22549CD``, ``14-22549G``) are one
patient number with several slides; they are grouped together, the stricter choice.

Each fit is stored in ``results/cache/defaults_runs.jsonl`` as it finishes: an interrupted run resumes, and
a later stage reuses the earlier ones' fits.
"""

from __future__ import annotations

import hashlib
import json
import re
import time
import warnings
from pathlib import Path

import _common as C
import numpy as np
from joblib import Parallel, delayed
from scipy import stats
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import balanced_accuracy_score
from sklearn.model_selection import GridSearchCV, StratifiedGroupKFold, StratifiedKFold
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from skdfl.heads import FocalHeadClassifier

SELECTION_SEEDS = (0, 1)
REPORT_SEEDS = (2, 3, 4)
N_FOLDS = 5
LR_C_GRID = [1e-4, 1e-3, 1e-2, 1e-1, 1.0]
# The defaults of skdfl up to this benchmark: 512 hidden units, no regularisation, 50 one-pass epochs.
OLD_DEFAULTS = dict(
    hidden_units=(512,), noise_std=0.0, noise_scale="absolute", weight_decay=0.0, dropout=0.0, max_epochs=50,
    min_steps_per_epoch=1, n_iter_no_change=51, early_stopping=False,
)  # fmt: skip
# The plain base the screen varies one factor at a time from.
PLAIN = dict(
    noise_std=0.0, weight_decay=0.0, dropout=0.0, feature_dropout=0.0, mixup_alpha=0.0, early_stopping=False
)
ARCHITECTURES = {"linear": (), "mlp512": (512,)}


# ------------------------------------------------------------------------------------------ configs
def head(arch: str, scaler: bool = True, **params) -> dict:
    return {"kind": "head", "scaler": scaler, "params": {"hidden_units": ARCHITECTURES[arch], **params}}


def screen_configs() -> dict[str, dict]:
    configs = {
        "lr_tuned": {"kind": "lr_tuned"},
        "old_defaults": {"kind": "head", "scaler": True, "params": OLD_DEFAULTS},
    }
    for arch in ARCHITECTURES:
        base = {**PLAIN}
        configs[f"{arch}/plain"] = head(arch, **base)
        for noise in (0.3, 1.0, 2.0):
            configs[f"{arch}/noise={noise}"] = head(arch, **{**base, "noise_std": noise})
        for wd in (1e-3, 1e-2) if arch == "linear" else (1e-3,):
            configs[f"{arch}/wd={wd}"] = head(arch, **{**base, "weight_decay": wd})
        if arch != "linear":
            configs[f"{arch}/dropout=0.5"] = head(arch, **{**base, "dropout": 0.5})
        configs[f"{arch}/feature_dropout=0.1"] = head(arch, **{**base, "feature_dropout": 0.1})
        configs[f"{arch}/mixup=0.2"] = head(arch, **{**base, "mixup_alpha": 0.2})
        configs[f"{arch}/early_stopping"] = head(arch, **{**base, "early_stopping": True})
    # Noise scaling on raw embeddings (no StandardScaler): per feature, isotropic at the same total power, or
    # in input units (the old behaviour).
    for scale in ("feature", "global", "absolute"):
        configs[f"raw/linear/noise=1.0,{scale}"] = head(
            "linear", scaler=False, **{**PLAIN, "noise_std": 1.0, "noise_scale": scale}
        )
    configs["raw/linear/plain"] = head("linear", scaler=False, **PLAIN)
    return configs


# Filled in from the screen (see the module docstring and the README table): the levels that helped.
COMBINE = {
    "linear": [
        dict(noise_std=0.3, weight_decay=1e-3),
        dict(noise_std=0.3, weight_decay=1e-2),
        dict(noise_std=1.0, weight_decay=1e-3),
        dict(noise_std=0.3, weight_decay=1e-3, feature_dropout=0.1),
        dict(noise_std=0.3, weight_decay=1e-3, mixup_alpha=0.2),
    ],
    "mlp512": [
        dict(noise_std=0.3, weight_decay=1e-3),
        dict(noise_std=0.3, weight_decay=1e-3, dropout=0.5),
        dict(noise_std=1.0, weight_decay=1e-3, dropout=0.5),
        dict(noise_std=0.3, weight_decay=1e-2, dropout=0.5),
        dict(noise_std=0.3, weight_decay=1e-3, dropout=0.5, feature_dropout=0.1),
        dict(noise_std=0.3, weight_decay=1e-3, dropout=0.5, mixup_alpha=0.2),
    ],
}


def _label(params: dict) -> str:
    return ",".join(f"{k}={v}" for k, v in params.items())


def combine_configs() -> dict[str, dict]:
    configs = {}
    for arch, combos in COMBINE.items():
        for params in combos:
            configs[f"{arch}/{_label(params)}"] = head(arch, **{**PLAIN, **params})
    return configs


def final_configs() -> dict[str, dict]:
    defaults = FocalHeadClassifier().get_params()
    arch_default = "linear" if defaults["hidden_units"] == () else "mlp512"
    other = "mlp512" if arch_default == "linear" else "linear"
    configs = {
        "lr_tuned": {"kind": "lr_tuned"},
        "old_defaults": {"kind": "head", "scaler": True, "params": OLD_DEFAULTS},
        "new_defaults": {"kind": "head", "scaler": True, "params": {}},
        "new_defaults_no_scaler": {"kind": "head", "scaler": False, "params": {}},
        f"new_defaults_{other}": head(other),
    }
    # Each perturbation alone on top of the new defaults' other settings, then all of them.
    alone = {"noise_std": 0.3, "feature_dropout": 0.1, "mixup_alpha": 0.2}
    off = {k: 0.0 for k in alone}
    for key, value in alone.items():
        configs[f"{arch_default}/only {key}={value}"] = head(arch_default, **{**off, key: value})
    configs[f"{arch_default}/no perturbation"] = head(arch_default, **off)
    configs[f"{arch_default}/all perturbations"] = head(arch_default, **alone)
    return configs


# ---------------------------------------------------------------------------------------------- data
def _breakhis_patient(patient: str) -> str:
    return re.sub(r"[A-Za-z]+$", "", str(patient))


def load_embeddings(args, name: str) -> dict:
    if args.embeddings is not None:
        path = Path(args.embeddings) / f"{name}_densenet121.npz"
        if not path.is_file():
            raise SystemExit(f"--embeddings: {path} not found")
        z = np.load(path, allow_pickle=True)
        X, y, groups = z["X"].astype(np.float32), z["y"].astype(str), z["groups"].astype(str)
        source = str(path)
    else:
        root = C.data_root(args)
        frame = {"idc": C.load_idc, "breakhis": C.load_breakhis, "crc": C.load_crc}[name](root)
        spec = C.main_backbone(allow_random=False)
        X, record = C.embed_cached(
            frame["path"].tolist(), f"{name}-defaults", device=args.device, **C.embedder_kwargs(spec)
        )
        X, y = X.astype(np.float32), frame["label"].astype(str).to_numpy()
        groups = (
            frame["patient"].astype(str).to_numpy()
            if "patient" in frame
            else np.arange(len(frame)).astype(str)
        )
        source = f"BackboneEmbedder({spec['backbone']}) on {root}: {record}"
    if name == "breakhis":
        groups = np.array([_breakhis_patient(g) for g in groups])
    if name == "crc":
        groups = None  # tiles of unknown patients: plain stratified folds
    fingerprint = hashlib.sha256(X.tobytes() + y.astype("U").tobytes()).hexdigest()[:12]
    return {"name": name, "X": X, "y": y, "groups": groups, "source": source, "fingerprint": fingerprint}


def folds(data: dict, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    X, y, groups = data["X"], data["y"], data["groups"]
    if groups is None:
        n_splits = min(N_FOLDS, int(np.bincount(np.unique(y, return_inverse=True)[1]).min()))
        return list(StratifiedKFold(n_splits, shuffle=True, random_state=seed).split(X, y))
    return list(StratifiedGroupKFold(N_FOLDS, shuffle=True, random_state=seed).split(X, y, groups))


# --------------------------------------------------------------------------------------- evaluation
def build(config: dict, seed: int):
    if config["kind"] == "lr_tuned":
        return GridSearchCV(
            make_pipeline(StandardScaler(), LogisticRegression(max_iter=3000)),
            {"logisticregression__C": LR_C_GRID}, scoring="balanced_accuracy", cv=3,
        )  # fmt: skip
    estimator = FocalHeadClassifier(**config["params"], random_state=seed, device="cpu")
    return make_pipeline(StandardScaler(), estimator) if config["scaler"] else make_pipeline(estimator)


def fit_and_score(config: dict, data: dict, seed: int, train: np.ndarray, test: np.ndarray) -> dict:
    X, y, groups = data["X"], data["y"], data["groups"]
    model = build(config, seed)
    fit_params = {}
    if groups is not None:
        if config["kind"] == "lr_tuned":
            inner = StratifiedGroupKFold(3, shuffle=True, random_state=seed)
            model.set_params(cv=list(inner.split(X[train], y[train], groups[train])))
        elif config["params"].get("early_stopping"):
            fit_params["focalheadclassifier__groups"] = groups[train]
    t0 = time.perf_counter()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            model.fit(X[train], y[train], **fit_params)
        except ValueError as exc:  # e.g. early stopping on a training fold too small to split
            return {"balanced_accuracy": None, "error": str(exc), "fit_s": None, "n_iter": None}
    fit_s = time.perf_counter() - t0
    pred = model.predict(X[test])
    head_ = model[-1] if config["kind"] == "head" else None
    return {
        "balanced_accuracy": float(balanced_accuracy_score(y[test], pred)),
        "fit_s": fit_s,
        "n_iter": None if head_ is None else int(head_.n_iter_),
        "convergence_warning": any("max_epochs" in str(w.message) for w in caught),
        "error": None,
        "best_C": model.best_params_["logisticregression__C"] if config["kind"] == "lr_tuned" else None,
    }


def _resolved(config: dict) -> dict:
    """The config with the head's parameters in full, so that a change of skdfl's defaults changes the key."""
    if config["kind"] != "head":
        return config
    defaults = {k: v for k, v in FocalHeadClassifier().get_params().items() if k != "callbacks"}
    return {**config, "params": {**defaults, **config["params"]}}


def _task_key(data: dict, config: dict, seed: int, fold: int) -> str:
    blob = json.dumps(
        {"data": data["fingerprint"], "config": _resolved(config), "seed": seed, "fold": fold},
        sort_keys=True,
        default=str,
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:20]


def _run_task(config, data, seed, fold, train, test):
    import torch

    torch.set_num_threads(1)  # one thread per worker (FocalHeadClassifier's default; joblib limits LR's BLAS)
    return fit_and_score(config, data, seed, train, test)


def run_configs(configs: dict, datasets: list[dict], seeds, store: Path, n_jobs: int) -> list[dict]:
    done = {}
    if store.is_file():
        for line in store.read_text().splitlines():
            if line.strip():
                record = json.loads(line)
                done[record["key"]] = record
    tasks = []
    for data in datasets:
        for seed in seeds:
            for fold, (train, test) in enumerate(folds(data, seed)):
                for name, config in configs.items():
                    key = _task_key(data, config, seed, fold)
                    if key not in done:
                        tasks.append((key, name, config, data, seed, fold, train, test))
    print(f"  {len(tasks)} fits to run ({sum(1 for _ in done)} cached)", flush=True)
    store.parent.mkdir(parents=True, exist_ok=True)
    results = Parallel(n_jobs=n_jobs, return_as="generator_unordered", verbose=0)(
        delayed(lambda t: (t, _run_task(t[2], t[3], t[4], t[5], t[6], t[7])))(task) for task in tasks
    )
    with store.open("a") as fh:
        for i, (task, result) in enumerate(results, 1):
            key, name, config, data, seed, fold = task[:6]
            record = {
                "key": key,
                "dataset": data["name"],
                "config": name,
                "seed": seed,
                "fold": fold,
                **result,
            }
            done[key] = record
            fh.write(json.dumps(record) + "\n")
            fh.flush()
            if i % 20 == 0 or i == len(tasks):
                print(f"  {i}/{len(tasks)} fits done", flush=True)
    rows = []
    for data in datasets:
        for seed in seeds:
            for fold in range(len(folds(data, seed))):
                for name, config in configs.items():
                    record = dict(done[_task_key(data, config, seed, fold)])
                    record["config"] = name
                    rows.append(record)
    return rows


# ---------------------------------------------------------------------------------------- reporting
def paired(rows: list[dict], dataset: str, name: str, reference: str) -> dict:
    def scores(config):
        return {
            (r["seed"], r["fold"]): r["balanced_accuracy"]
            for r in rows
            if r["dataset"] == dataset and r["config"] == config and r["balanced_accuracy"] is not None
        }

    a, b = scores(name), scores(reference)
    keys = sorted(set(a) & set(b))
    diff = np.array([a[k] - b[k] for k in keys])
    if len(diff) == 0:
        return {}
    nonzero = diff[diff != 0]
    p = float(stats.wilcoxon(nonzero).pvalue) if len(nonzero) >= 2 else 1.0
    return {"mean": float(diff.mean()), "sd": float(diff.std(ddof=1)) if len(diff) > 1 else 0.0,
            "wins": int((diff > 0).sum()), "losses": int((diff < 0).sum()), "n": len(diff), "p": p}  # fmt: skip


def summarise(rows: list[dict], configs: dict, datasets: list[str]) -> list[dict]:
    table = []
    for dataset in datasets:
        for name in configs:
            every = [r for r in rows if r["dataset"] == dataset and r["config"] == name]
            mine = [r for r in every if r["balanced_accuracy"] is not None]
            if not mine:
                if every:
                    table.append({"dataset": dataset, "config": name, "n": 0, "bacc": f"error: {every[0]['error']}"})
                continue
            bacc = np.array([r["balanced_accuracy"] for r in mine])
            iters = [r["n_iter"] for r in mine if r["n_iter"] is not None]
            row = {
                "dataset": dataset, "config": name, "n": len(mine),
                "bacc": f"{bacc.mean():.3f} ± {bacc.std(ddof=1):.3f}", "bacc_mean": float(bacc.mean()),
                "fit_s": float(np.median([r["fit_s"] for r in mine])),
                "epochs": float(np.median(iters)) if iters else None,
                "warned": sum(r["convergence_warning"] for r in mine),
                "failed": len(every) - len(mine),
            }  # fmt: skip
            for ref in ("lr_tuned", "old_defaults"):
                d = paired(rows, dataset, name, ref)
                if d and name != ref:
                    row[f"vs_{ref}"] = (
                        f"{d['mean']:+.3f} ± {d['sd']:.3f} ({d['wins']}/{d['losses']}, p={d['p']:.2g})"
                    )
                    row[f"vs_{ref}_mean"] = d["mean"]
            table.append(row)
    return table


COLUMNS = [
    ("dataset", "data", ""), ("config", "configuration", ""), ("n", "folds", "d"), ("bacc", "balanced acc", ""),
    ("vs_lr_tuned", "Δ vs tuned LR (wins/losses, p)", ""), ("vs_old_defaults", "Δ vs old defaults (wins/losses, p)", ""),
    ("epochs", "epochs (median)", ".0f"), ("fit_s", "fit s (median)", ".1f"), ("warned", "ConvergenceWarnings", "d"),
    ("failed", "failed fits", "d"),
]  # fmt: skip


def main():
    p = C.parser("defaults", __doc__)
    p.add_argument(
        "--embeddings", type=Path, default=None, help="folder of {idc,breakhis,crc}_densenet121.npz"
    )
    p.add_argument("--stage", choices=["screen", "combine", "final"], default="final")
    p.add_argument("--datasets", nargs="*", default=None, help="default: idc breakhis (+ crc in final)")
    p.add_argument(
        "--seeds", type=int, nargs="*", default=None, help="default: 0 1 (screen, combine), 2 3 4 (final)"
    )
    p.add_argument("--n-jobs", type=int, default=2, help="parallel fits (each on one thread)")
    p.add_argument(
        "--only", nargs="*", default=None, help="run only the configurations whose name contains one of these"
    )
    args = p.parse_args()
    if args.out == C.RESULTS / "defaults.json" and args.stage != "final":
        args.out = C.RESULTS / f"defaults_{args.stage}.json"
    C.quiet_warnings()
    t_start = time.perf_counter()
    configs = {"screen": screen_configs, "combine": combine_configs, "final": final_configs}[args.stage]()
    if args.stage == "combine":
        configs = {
            "lr_tuned": {"kind": "lr_tuned"},
            "old_defaults": {"kind": "head", "scaler": True, "params": OLD_DEFAULTS},
            **configs,
        }
    if args.only:
        configs = {
            k: v
            for k, v in configs.items()
            if any(s in k for s in args.only) or k in ("lr_tuned", "old_defaults")
        }
    names = args.datasets or (["idc", "breakhis", "crc"] if args.stage == "final" else ["idc", "breakhis"])
    seeds = args.seeds or (list(REPORT_SEEDS) if args.stage == "final" else list(SELECTION_SEEDS))
    if args.quick:
        seeds = seeds[:1]
    datasets = [load_embeddings(args, name) for name in names]
    for data in datasets:
        patients = "no groups" if data["groups"] is None else f"{len(set(data['groups']))} patients"
        print(f"{data['name']}: {data['X'].shape}, {len(set(data['y']))} classes, {patients}", flush=True)
    rows = run_configs(configs, datasets, seeds, C.CACHE / "defaults_runs.jsonl", args.n_jobs)
    table = summarise(rows, configs, names)
    md = C.md_table(table, COLUMNS)
    print(
        f"\n### FocalHeadClassifier defaults, stage {args.stage}: seeds {seeds} x {N_FOLDS} patient-grouped folds\n"
    )
    print(md)
    config = {
        "stage": args.stage, "seeds": seeds, "folds": N_FOLDS, "lr_C_grid": LR_C_GRID,
        "embeddings": {d["name"]: d["source"] for d in datasets},
        "configs": configs, "new_defaults": {k: v for k, v in FocalHeadClassifier().get_params().items() if k != "callbacks"},
    }  # fmt: skip
    C.write_result(
        args,
        "defaults",
        config=config,
        results={"table": table, "fits": rows},
        tables=[md],
        device="cpu",
        seconds=time.perf_counter() - t_start,
    )


if __name__ == "__main__":
    main()
