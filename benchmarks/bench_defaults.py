"""FocalHeadClassifier defaults chosen on new patients: patient-grouped CV on real embeddings (issue 12.1).

Every configuration is scored by balanced accuracy on patients the head never saw (``StratifiedGroupKFold``,
5 folds, reshuffled per seed; CRC has no patient ids and uses plain stratified folds as a sanity check). All
configurations see the same folds, so comparisons are paired per (seed, fold): the tables give the mean
difference, how often one side won, and a Wilcoxon signed-rank p-value.

Stages (``--stage``), as run to choose the defaults (``--seeds`` and ``--datasets`` narrow a run):

``screen``
    Selection seeds. For the linear head (``hidden_units=()``) and the one-hidden-layer head (``(512,)``), one
    factor at a time from a plain base (no noise, no weight decay, no dropout, training-loss convergence
    stop): noise level, weight decay, dropout, feature dropout, mixup, early stopping split by patient; and
    the noise scaling on raw (unstandardised) embeddings. Run on IDC with seed 0 and BreakHis with seeds 0-3.
``combine``
    Selection seeds (IDC 0-1, BreakHis 0-3): combinations of what helped in ``screen``, a stronger weight
    decay (the tuned logistic regression picks ``C=1e-3`` on IDC), cross-entropy vs focal loss, and the
    training budget (``tol``, ``n_iter_no_change``, ``min_steps_per_epoch``).
``final``
    Fresh report seeds (2, 3, 4), which played no part in the choice, on IDC, BreakHis and CRC: old defaults,
    the new defaults (``StandardScaler + FocalHeadClassifier()``, no tuning), a logistic regression with ``C``
    tuned by inner patient-grouped CV, single departures from the defaults, the noise scaling without
    ``StandardScaler``, each feature-space perturbation alone, and all of them together.
``speed``
    Report seeds, IDC, BreakHis and CRC: the training budget of the defaults. The budget chosen in ``final``
    (batch 128, ``lr=1e-3``, at least 20 steps per epoch) against fewer, larger optimiser steps (batch 256 or
    512 with the learning rate scaled up, at least 10 or 20 steps per epoch) and a shorter convergence test,
    to pick the fastest setting that scores the same (issue 14.3): batch 256, ``lr=2e-3``,
    ``min_steps_per_epoch=10``, now the defaults. Checked again on the selection seeds (``--seeds 0 1``).
``images``
    Image-space augmentation on the report seeds, the same patient-grouped folds, every head with the new
    defaults: the dihedral bank (training draws one of the 8 flips/rotations per sample per epoch,
    ``FocalHeadClassifier(bank_size=8)``, plain test image), dihedral test-time averaging alone (plain
    training, mean of the 8 embeddings at test), both, the mean at training and test, an HED stain-jitter bank
    and a scale-jitter bank (the plain image + one draw each: ``K = 2``), Macenko and Reinhard stain
    normalisation (training and test), all three banks together (``K = 10``) with and without test-time
    averaging; against the new defaults on the plain embeddings, the tuned logistic regression, and the
    tuned logistic regression on the dihedral mean (the fair baseline for test-time averaging). Embeddings
    come from ``BackboneEmbedder(augmentations=..., colors=..., cache=results/cache/embeddings)`` with skdfl's
    default embedder settings (every (image, colour, augmentation) one cache entry, the plain image shared),
    and the wall time of each extraction is kept in ``results/cache/defaults_images_cost.json`` for the cost
    table. IDC uses a subset of ``--idc-subset`` (540) images stratified by patient x label, all 27 patients
    (the full set under 12 embeddings per image is 5-10 hours on this machine); BreakHis all 107 images.
    ``--embed-only`` extracts without fitting.

Commands that produced ``results/defaults.json`` (the ``final`` table)::

    python benchmarks/bench_defaults.py --embeddings /work/notes/emb --stage screen --datasets breakhis --seeds 0 1 2 3
    python benchmarks/bench_defaults.py --embeddings /work/notes/emb --stage screen --datasets idc --seeds 0
    python benchmarks/bench_defaults.py --embeddings /work/notes/emb --stage combine --datasets breakhis --seeds 0 1 2 3
    python benchmarks/bench_defaults.py --embeddings /work/notes/emb --stage combine --datasets idc --seeds 0 1
    nice -n 10 python benchmarks/bench_defaults.py --embeddings /work/notes/emb --stage final --n-jobs 2

and ``results/defaults_images.json`` (the ``images`` tables; extraction first, then the fits)::

    nice -n 10 python benchmarks/bench_defaults.py --stage images --embed-only --datasets idc --variants dihedral
    nice -n 10 python benchmarks/bench_defaults.py --stage images --embed-only --datasets idc --variants macenko reinhard
    nice -n 10 python benchmarks/bench_defaults.py --stage images --embed-only --datasets breakhis \\
        --variants dihedral macenko reinhard
    nice -n 10 python benchmarks/bench_defaults.py --stage images --embed-only --datasets breakhis \\
        --variants hed_jitter scale_jitter
    nice -n 10 python benchmarks/bench_defaults.py --stage images --embed-only --datasets idc \\
        --variants hed_jitter scale_jitter
    nice -n 10 python benchmarks/bench_defaults.py --stage images --n-jobs 2

Embeddings: the Keras DenseNet-121 (``densenet121.keras_in1k``, skdfl's default embedder settings), computed
with the public API and cached under ``benchmarks/results/cache`` (``$SKDFL_BENCH_CACHE``), or read from
``--embeddings DIR`` holding ``{idc,breakhis,crc}_densenet121.npz`` (keys ``X``, ``y``, ``groups``). BreakHis
patient ids that differ only by a letter suffix (``14-22549AB``, ``14-22549CD``, ``14-22549G``) are one
patient number with several slides; they are grouped together, the stricter choice.

Each fit is stored in ``results/cache/defaults_runs.jsonl`` as it finishes, keyed by the data, the full head
parameters and a fingerprint of ``skdfl.heads``' source: an interrupted run resumes, a later stage reuses the
earlier ones' fits, and a change of the training code re-runs them.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
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

from skdfl.augment import average_blocks
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


# Filled in from the screen (IDC seed 0, BreakHis seeds 0-3): noise at 1-2 feature standard deviations helped
# the linear head on both; the tuned logistic regression chose C=1e-3 on IDC, i.e. an L2 penalty near 0.3 per
# sample, far above the weight decays screened; nothing helped the 512-unit head clearly.
COMBINE = {
    "linear": [
        dict(noise_std=1.0),
        dict(noise_std=2.0),
        dict(noise_std=1.0, weight_decay=1e-2),
        dict(noise_std=2.0, weight_decay=1e-2),
        dict(weight_decay=0.1),
        dict(weight_decay=0.3),
        dict(noise_std=1.0, weight_decay=0.1),
        dict(noise_std=2.0, gamma=0.0),
        dict(noise_std=1.0, weight_decay=0.1, gamma=0.0),
        dict(noise_std=3.0),
        dict(noise_std=2.0, feature_dropout=0.1),
        dict(noise_std=2.0, early_stopping=True),
        # The training budget, on the best regularisation above.
        dict(noise_std=1.0, weight_decay=0.1, tol=1e-3, n_iter_no_change=5),
        dict(noise_std=1.0, weight_decay=0.1, tol=3e-3, n_iter_no_change=3),
        dict(noise_std=1.0, weight_decay=0.1, min_steps_per_epoch=1),
        dict(noise_std=1.0, weight_decay=0.1, gamma=0.0, tol=1e-3, n_iter_no_change=5),
    ],
    "mlp512": [
        dict(),
        dict(noise_std=1.0, dropout=0.5, weight_decay=1e-3),
        dict(dropout=0.5, weight_decay=1e-2),
        dict(noise_std=2.0, dropout=0.5, weight_decay=1e-2),
    ],
}


def _label(params: dict) -> str:
    return ",".join(f"{k}={v}" for k, v in params.items()) or "plain"


def combine_configs() -> dict[str, dict]:
    configs = {}
    for arch, combos in COMBINE.items():
        for params in combos:
            configs[f"{arch}/{_label(params)}"] = head(arch, **{**PLAIN, **params})
    return configs


def final_configs() -> dict[str, dict]:
    def defaults(scaler=True, **params):
        return {"kind": "head", "scaler": scaler, "params": params}

    return {
        "lr_tuned": {"kind": "lr_tuned"},
        "old_defaults": {"kind": "head", "scaler": True, "params": OLD_DEFAULTS},
        "new_defaults": defaults(),
        # The noise scaling without StandardScaler.
        "new_defaults, no scaler": defaults(scaler=False),
        "new_defaults, no scaler, noise_scale=global": defaults(scaler=False, noise_scale="global"),
        "new_defaults, no scaler, noise_scale=absolute": defaults(scaler=False, noise_scale="absolute"),
        # Single departures from the defaults.
        "new_defaults, gamma=2 (focal)": defaults(gamma=2.0),
        "new_defaults, hidden_units=(512,)": defaults(hidden_units=(512,)),
        "new_defaults, early_stopping (by patient)": defaults(early_stopping=True),
        "new_defaults, budget tol=1e-4 n_iter_no_change=10": defaults(tol=1e-4, n_iter_no_change=10),
        # Each feature-space perturbation alone (on the defaults' other settings), then all together.
        "no perturbation": defaults(noise_std=0.0),
        "only noise (= new_defaults)": defaults(),
        "only feature_dropout=0.1": defaults(noise_std=0.0, feature_dropout=0.1),
        "only mixup_alpha=0.2": defaults(noise_std=0.0, mixup_alpha=0.2),
        "noise + feature_dropout + mixup": defaults(feature_dropout=0.1, mixup_alpha=0.2),
    }


def images_configs() -> dict[str, dict]:
    """Image-space augmentation on new patients; every head has the new defaults."""

    def on(embeddings, train, test, kind="head", **params):
        config = {"kind": kind, "embeddings": embeddings, "train": train, "test": test}
        return config if kind == "lr_tuned" else {**config, "scaler": True, "params": params}

    return {
        "lr_tuned": on("plain", "plain", "plain", kind="lr_tuned"),
        "lr_tuned, dihedral mean (train + test)": on("dihedral", "mean", "mean", kind="lr_tuned"),
        "old_defaults": on("plain", "plain", "plain", **OLD_DEFAULTS),
        "new_defaults": on("plain", "plain", "plain"),
        "dihedral bank (plain test)": on("dihedral", "bank", "plain"),
        "dihedral TTA only (plain train)": on("dihedral", "plain", "mean"),
        "dihedral bank + TTA": on("dihedral", "bank", "mean"),
        "dihedral mean (train + test)": on("dihedral", "mean", "mean"),
        "hed_jitter bank": on("hed_jitter", "bank", "plain"),
        "scale_jitter bank": on("scale_jitter", "bank", "plain"),
        "Macenko (train + test)": on("macenko", "plain", "plain"),
        "Reinhard (train + test)": on("reinhard", "plain", "plain"),
        "all banks (dihedral+hed+scale)": on("all banks", "bank", "plain"),
        "all banks + TTA": on("all banks", "bank", "mean"),
    }


IMAGES_REFERENCES = ("new_defaults", "lr_tuned", "lr_tuned, dihedral mean (train + test)")


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


# ------------------------------------------------------------------------------- image-space variants
# BackboneEmbedder settings of each image-space variant (skdfl's default embedder otherwise). Output blocks are
# augmentation-major and block 0 of every augmented variant is the plain image, one shared cache entry.
IMAGE_VARIANTS = {
    "plain": {},
    "dihedral": dict(augmentations="dihedral"),  # 8 blocks: the plain image and its 7 flips/rotations
    "macenko": dict(colors=["macenko"]),
    "reinhard": dict(colors=["reinhard"]),
    "hed_jitter": dict(augmentations=["hed_jitter"]),  # 2 blocks: plain + 1 stain-jitter draw
    "scale_jitter": dict(augmentations=["scale_jitter"]),  # 2 blocks: plain + 1 zoom draw
}
# The IDC subset of the images stage (the full set x 12 embeddings per image is 5-10 h on 2 shared cores):
# stratified by patient x label, every one of the 27 patients kept.
IDC_IMAGES_SUBSET = 540
EMBEDDING_DIM = 1024  # DenseNet-121


def image_frame(args, name: str) -> tuple[object, np.ndarray, np.ndarray | None]:
    root = C.data_root(args)
    if name == "idc":
        frame = C.load_idc(root, n=args.idc_subset, seed=0)
    else:
        frame = {"breakhis": C.load_breakhis, "crc": C.load_crc}[name](root)
    y = frame["label"].astype(str).to_numpy()
    groups = None
    if name == "idc":
        groups = frame["patient"].astype(str).to_numpy()
    elif name == "breakhis":
        groups = np.array([_breakhis_patient(g) for g in frame["patient"].astype(str)])
    return frame, y, groups


def _cost_file() -> Path:
    return C.CACHE / "defaults_images_cost.json"


def embed_variants(args, name: str, variants) -> dict:
    """Embed ``name``'s images under each image-space variant through one skdfl embedding cache.

    The cache (``BackboneEmbedder(cache=...)``) keys every (image, colour, augmentation), so the plain block
    shared by all variants is embedded once and a rerun embeds nothing. The wall time of each call that
    computed something is added to ``defaults_images_cost.json`` next to the cache.
    """
    from skdfl import BackboneEmbedder, EmbeddingCache

    frame, y, groups = image_frame(args, name)
    paths = frame["path"].tolist()
    spec = C.main_backbone(allow_random=False)
    costs = json.loads(_cost_file().read_text()) if _cost_file().is_file() else {}
    out = {}
    for variant in variants:
        cache = EmbeddingCache(C.CACHE / "embeddings")
        embedder = BackboneEmbedder(
            **C.embedder_kwargs(spec), **IMAGE_VARIANTS[variant], cache=cache, device=args.device, verbose=1
        )
        embedder.fit(paths[:1])
        t0 = time.perf_counter()
        X = embedder.transform(paths).astype(np.float32)
        seconds = time.perf_counter() - t0
        key = f"{name}/{variant}"
        if cache.misses:  # something was embedded: add its wall time to the record
            cost = costs.setdefault(key, {"seconds": 0.0, "embedded": 0, "runs": []})
            cost["seconds"] = round(cost["seconds"] + seconds, 1)
            cost["embedded"] += cache.misses
            cost["runs"].append(
                {
                    "seconds": round(seconds, 1),
                    "embedded": cache.misses,
                    "load_average_1m": round(os.getloadavg()[0], 2),
                }
            )
            cost.update(images=len(paths), blocks=X.shape[1] // EMBEDDING_DIM)
            _cost_file().parent.mkdir(parents=True, exist_ok=True)
            _cost_file().write_text(json.dumps(costs, indent=2) + "\n")
        print(f"{key}: {X.shape}, {cache.misses} embedded in {seconds:.0f} s", flush=True)
        out[variant] = X
    return {"frame": frame, "y": y, "groups": groups, "variants": out, "costs": costs}


def load_image_variants(args, name: str, variants) -> dict:
    """The images stage's data: every variant's embeddings (from the cache), ``X`` the plain block."""
    embedded = embed_variants(args, name, ["plain", *(v for v in variants if v != "plain")])
    out = dict(embedded["variants"])
    banks = [v for v in ("dihedral", "hed_jitter", "scale_jitter") if v in out]
    if len(banks) == 3:  # one bank of every augmentation: the plain block once, then each one's draws
        out["all banks"] = np.hstack([out["dihedral"]] + [out[v][:, EMBEDDING_DIM:] for v in banks[1:]])
    y = embedded["y"]

    def fingerprint(X):
        return hashlib.sha256(X.tobytes() + y.astype("U").tobytes()).hexdigest()[:12]

    return {
        "name": name, "X": out["plain"], "y": y, "groups": embedded["groups"], "variants": out,
        "fingerprint": fingerprint(out["plain"]), "fingerprints": {k: fingerprint(X) for k, X in out.items()},
        "source": f"BackboneEmbedder(densenet121.keras_in1k, {len(y)} images), cache {C.CACHE / 'embeddings'}",
        "costs": {f"{name}/{v}": embedded["costs"][f"{name}/{v}"] for v in out if f"{name}/{v}" in embedded["costs"]},
    }  # fmt: skip


def cost_table(datasets: list[dict]) -> list[dict]:
    """Extraction cost of each variant: its wall time per embedding, and K x the plain extraction."""
    rows = []
    for data in datasets:
        for key, cost in data["costs"].items():
            per_embedding = cost["seconds"] / cost["embedded"]
            rows.append({
                "variant": key, "blocks": cost["blocks"], "images": cost["images"], "embedded": cost["embedded"],
                "seconds": cost["seconds"], "s_per_embedding": per_embedding,
                "plain_s": per_embedding * cost["images"], "full_s": per_embedding * cost["images"] * cost["blocks"],
                "load": max(r["load_average_1m"] for r in cost["runs"]),
            })  # fmt: skip
    return rows


COST_COLUMNS = [
    ("variant", "data/variant", ""), ("blocks", "K (blocks)", "d"), ("images", "images", "d"),
    ("embedded", "embeddings computed", "d"), ("seconds", "wall s", ".0f"), ("s_per_embedding", "s / embedding", ".2f"),
    ("plain_s", "plain extraction s (1 block)", ".0f"), ("full_s", "variant from scratch s (K blocks)", ".0f"),
    ("load", "load avg (1 min, max)", ".1f"),
]  # fmt: skip


def folds(data: dict, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    X, y, groups = data["X"], data["y"], data["groups"]
    if groups is None:
        n_splits = min(N_FOLDS, int(np.bincount(np.unique(y, return_inverse=True)[1]).min()))
        return list(StratifiedKFold(n_splits, shuffle=True, random_state=seed).split(X, y))
    return list(StratifiedGroupKFold(N_FOLDS, shuffle=True, random_state=seed).split(X, y, groups))


# --------------------------------------------------------------------------------------- evaluation
def design(config: dict, data: dict) -> tuple[np.ndarray, np.ndarray, int | None]:
    """The training and test matrices of ``config`` (all rows), and the head's ``bank_size``.

    Image-space configs name the variant's embeddings (``n x K*d``, augmentation-major) and how training
    and test read them: ``"plain"`` (block 0), ``"mean"`` (the mean of the K blocks: test-time averaging) or
    ``"bank"`` (all K blocks, for ``FocalHeadClassifier(bank_size=K)``, which then predicts from block 0, or
    from the mean of the blocks with ``test_time_augmentation=True``).
    """
    if "embeddings" not in config:
        return data["X"], data["X"], None
    X = data["variants"][config["embeddings"]]
    n_blocks = X.shape[1] // EMBEDDING_DIM
    views = {"plain": X[:, :EMBEDDING_DIM], "mean": average_blocks(X, n_blocks), "bank": X}
    if config["train"] == "bank":
        return X, X, n_blocks
    return views[config["train"]], views[config["test"]], None


def build(config: dict, seed: int, bank_size: int | None = None):
    if config["kind"] == "lr_tuned":
        return GridSearchCV(
            make_pipeline(StandardScaler(), LogisticRegression(max_iter=3000)),
            {"logisticregression__C": LR_C_GRID}, scoring="balanced_accuracy", cv=3,
        )  # fmt: skip
    params = dict(config["params"])
    if bank_size is not None:
        params.update(bank_size=bank_size, test_time_augmentation=config["test"] == "mean")
    estimator = FocalHeadClassifier(**params, random_state=seed, device="cpu")
    return make_pipeline(StandardScaler(), estimator) if config["scaler"] else make_pipeline(estimator)


def fit_and_score(config: dict, data: dict, seed: int, train: np.ndarray, test: np.ndarray) -> dict:
    y, groups = data["y"], data["groups"]
    X, X_test, bank_size = design(config, data)
    model = build(config, seed, bank_size)
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
    pred = model.predict(X_test[test])
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


@functools.cache
def _heads_code() -> str:
    """Fingerprint of skdfl.heads' source, so that a change of the training code invalidates cached fits."""
    import skdfl.heads

    digest = hashlib.sha256()
    for path in sorted(Path(skdfl.heads.__file__).parent.glob("*.py")):
        digest.update(path.read_bytes())
    return digest.hexdigest()[:12]


def _task_key(data: dict, config: dict, seed: int, fold: int) -> str:
    code = _heads_code() if config["kind"] == "head" else None
    blob = json.dumps(
        {
            "data": data["fingerprint"],
            "embeddings": data.get("fingerprints", {}).get(config.get("embeddings")),
            "config": _resolved(config),
            "code": code,
            "seed": seed,
            "fold": fold,
        },
        sort_keys=True,
        default=str,
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:20]


def _run_task(config, data, seed, fold, train, test):
    import torch

    torch.set_num_threads(1)  # one thread per worker (FocalHeadClassifier's default; joblib limits LR's BLAS)
    return fit_and_score(config, data, seed, train, test)


def _available(config: dict, data: dict) -> bool:
    """Whether ``data`` holds the embeddings ``config`` is fitted on (an image-space variant may be missing)."""
    return "embeddings" not in config or config["embeddings"] in data.get("variants", {})


def run_configs(configs: dict, datasets: list[dict], seeds, store: Path, n_jobs: int) -> list[dict]:
    done = {}
    if store.is_file():
        for line in store.read_text().splitlines():
            if line.strip():
                record = json.loads(line)
                done[record["key"]] = record
    tasks, scheduled = [], set()
    for data in datasets:
        for seed in seeds:
            for fold, (train, test) in enumerate(folds(data, seed)):
                for name, config in configs.items():
                    if not _available(config, data):
                        continue
                    key = _task_key(data, config, seed, fold)
                    if key not in done and key not in scheduled:
                        scheduled.add(key)
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
                    if not _available(config, data):
                        continue
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


def speed_configs() -> dict[str, dict]:
    """Fewer, larger optimiser steps (issue 14.3): a linear head's fit time is its step count."""

    def defaults(**params):
        return {"kind": "head", "scaler": True, "params": params}

    before = dict(batch_size=128, lr=1e-3, min_steps_per_epoch=20)  # the budget chosen in issue 12
    return {
        "lr_tuned": {"kind": "lr_tuned"},
        "new_defaults": defaults(),
        "issue-12 budget (batch_size=128, lr=1e-3, min_steps_per_epoch=20)": defaults(**before),
        "issue-12 budget, lr=2e-3": defaults(**{**before, "lr": 2e-3}),
        "issue-12 budget, n_iter_no_change=3": defaults(**before, n_iter_no_change=3),
        "batch_size=256, lr=2e-3, min_steps_per_epoch=20": defaults(
            batch_size=256, lr=2e-3, min_steps_per_epoch=20
        ),
        "batch_size=512, lr=2e-3": defaults(batch_size=512, lr=2e-3),
        "batch_size=512, lr=4e-3": defaults(batch_size=512, lr=4e-3),
        # The same change for a head with a hidden layer (the defaults apply to it too).
        "hidden_units=(512,), issue-12 budget": defaults(hidden_units=(512,), **before),
        "hidden_units=(512,)": defaults(hidden_units=(512,)),
    }


def summarise(
    rows: list[dict], configs: dict, datasets: list[str], references=("lr_tuned", "old_defaults")
) -> list[dict]:
    table = []
    for dataset in datasets:
        for name in configs:
            every = [r for r in rows if r["dataset"] == dataset and r["config"] == name]
            mine = [r for r in every if r["balanced_accuracy"] is not None]
            if not mine:
                if every:
                    table.append(
                        {"dataset": dataset, "config": name, "n": 0, "bacc": f"error: {every[0]['error']}"}
                    )
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
            for ref in references:
                d = paired(rows, dataset, name, ref)
                if d and name != ref:
                    row[f"vs_{ref}"] = (
                        f"{d['mean']:+.3f} ± {d['sd']:.3f} ({d['wins']}/{d['losses']}, p={d['p']:.2g})"
                    )
                    row[f"vs_{ref}_mean"] = d["mean"]
            table.append(row)
    return table


IMAGES_COLUMNS = [
    ("dataset", "data", ""), ("config", "configuration", ""), ("n", "folds", "d"), ("bacc", "balanced acc", ""),
    ("vs_new_defaults", "Δ vs new defaults (wins/losses, p)", ""), ("vs_lr_tuned", "Δ vs tuned LR (wins/losses, p)", ""),
    ("vs_lr_tuned, dihedral mean (train + test)", "Δ vs tuned LR + dihedral mean (wins/losses, p)", ""),
    ("epochs", "epochs (median)", ".0f"), ("fit_s", "fit s (median)", ".1f"),
]  # fmt: skip
COLUMNS = [
    ("dataset", "data", ""), ("config", "configuration", ""), ("n", "folds", "d"), ("bacc", "balanced acc", ""),
    ("vs_lr_tuned", "Δ vs tuned LR (wins/losses, p)", ""), ("vs_old_defaults", "Δ vs old defaults (wins/losses, p)", ""),
    ("epochs", "epochs (median)", ".0f"), ("fit_s", "fit s (median)", ".1f"), ("warned", "ConvergenceWarnings", "d"),
    ("failed", "failed fits", "d"),
]  # fmt: skip

SPEED_COLUMNS = [
    ("dataset", "data", ""), ("config", "configuration", ""), ("n", "folds", "d"), ("bacc", "balanced acc", ""),
    ("vs_new_defaults", "Δ vs new defaults (wins/losses, p)", ""), ("vs_lr_tuned", "Δ vs tuned LR (wins/losses, p)", ""),
    ("epochs", "epochs (median)", ".0f"), ("fit_s", "fit s (median)", ".2f"), ("warned", "ConvergenceWarnings", "d"),
]  # fmt: skip


def main():
    p = C.parser("defaults", __doc__)
    p.add_argument(
        "--embeddings", type=Path, default=None, help="folder of {idc,breakhis,crc}_densenet121.npz"
    )
    p.add_argument("--stage", choices=["screen", "combine", "final", "images", "speed"], default="final")
    p.add_argument(
        "--variants", nargs="*", default=None, choices=list(IMAGE_VARIANTS),
        help="images stage: the image-space variants to embed (default: all)",
    )  # fmt: skip
    p.add_argument(
        "--exclude",
        nargs="*",
        default=[],
        help="images stage: DATASET/VARIANT pairs left out (e.g. idc/hed_jitter)",
    )
    p.add_argument(
        "--embed-only",
        action="store_true",
        help="images stage: extract (and cache) the embeddings, fit nothing",
    )
    p.add_argument(
        "--idc-subset",
        type=int,
        default=IDC_IMAGES_SUBSET,
        help="images stage: IDC images (patient x label strata)",
    )
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
    if args.stage == "images" and args.embed_only:
        for name in args.datasets or ["idc", "breakhis"]:
            embed_variants(args, name, args.variants or list(IMAGE_VARIANTS))
        return
    configs = {
        "screen": screen_configs, "combine": combine_configs, "final": final_configs, "images": images_configs,
        "speed": speed_configs,
    }[args.stage]()  # fmt: skip
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
    names = args.datasets or (
        ["idc", "breakhis", "crc"] if args.stage in ("final", "speed") else ["idc", "breakhis"]
    )
    seeds = args.seeds or (
        list(REPORT_SEEDS) if args.stage in ("final", "images", "speed") else list(SELECTION_SEEDS)
    )
    if args.quick:
        seeds = seeds[:1]
    if args.stage == "images":
        variants = args.variants or list(IMAGE_VARIANTS)
        datasets = [
            load_image_variants(args, name, [v for v in variants if f"{name}/{v}" not in args.exclude])
            for name in names
        ]
    else:
        datasets = [load_embeddings(args, name) for name in names]
    for data in datasets:
        patients = "no groups" if data["groups"] is None else f"{len(set(data['groups']))} patients"
        print(f"{data['name']}: {data['X'].shape}, {len(set(data['y']))} classes, {patients}", flush=True)
    rows = run_configs(configs, datasets, seeds, C.CACHE / "defaults_runs.jsonl", args.n_jobs)
    if args.stage == "images":
        table = summarise(rows, configs, names, references=IMAGES_REFERENCES)
        md = C.md_table(table, IMAGES_COLUMNS)
        costs = cost_table(datasets)
        tables = [md, C.md_table(costs, COST_COLUMNS)]
    elif args.stage == "speed":
        table = summarise(rows, configs, names, references=("new_defaults", "lr_tuned"))
        md = C.md_table(table, SPEED_COLUMNS)
        costs, tables = None, [md]
    else:
        table = summarise(rows, configs, names)
        md = C.md_table(table, COLUMNS)
        costs, tables = None, [md]
    print(
        f"\n### FocalHeadClassifier defaults, stage {args.stage}: seeds {seeds} x {N_FOLDS} patient-grouped folds\n"
    )
    print("\n\n".join(tables))
    config = {
        "stage": args.stage, "seeds": seeds, "folds": N_FOLDS, "lr_C_grid": LR_C_GRID,
        "embeddings": {d["name"]: d["source"] for d in datasets},
        "configs": configs, "new_defaults": {k: v for k, v in FocalHeadClassifier().get_params().items() if k != "callbacks"},
    }  # fmt: skip
    C.write_result(
        args,
        "defaults",
        config=config,
        results={"table": table, "extraction_cost": costs, "fits": rows},
        tables=tables,
        device="cpu",
        seconds=time.perf_counter() - t_start,
    )


if __name__ == "__main__":
    main()
