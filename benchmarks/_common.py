"""Helpers shared by the benchmark scripts: CLI, machine info, timing, data, embedding stores, output.

Timings on a shared machine drift by 2-5x within minutes, so every comparison here is a *ratio measured
inside one run*, with the two sides interleaved (A B B A A B ...) and the median over repeats taken.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import hashlib
import json
import os
import platform
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import torch

import skdfl
from skdfl.datasets import data_dir as _default_data_dir

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
# SKDFL_BENCH_CACHE points elsewhere to time a cold-cache run without deleting the shared cache.
CACHE = Path(os.environ.get("SKDFL_BENCH_CACHE", RESULTS / "cache"))
MAIN_BACKBONE = "densenet121.keras_in1k"


# --------------------------------------------------------------------------------------------- CLI
def parser(name: str, description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--quick", action="store_true", help="small subsamples, fewer repeats (run_all budget)")
    p.add_argument("--data-dir", type=Path, default=None, help="real data root (default: skdfl data_dir())")
    p.add_argument("--out", type=Path, default=RESULTS / f"{name}.json", help="JSON result file")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, mps")
    p.add_argument("--seed", type=int, default=0)
    return p


def data_root(args) -> Path:
    root = Path(args.data_dir) if args.data_dir is not None else _default_data_dir()
    if not root.is_dir():
        sys.exit(f"data folder not found: {root} (pass --data-dir or set SKDFL_DATA_DIR)")
    return root


def device_of(args) -> torch.device:
    from skdfl._device import resolve_device

    return resolve_device(args.device)


# ------------------------------------------------------------------------------------ machine info
def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _git_commit() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=HERE, capture_output=True, text=True, timeout=5
        )
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--", "skdfl"], cwd=HERE.parent, capture_output=True, text=True, timeout=5
        )
        return out.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "") if out.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        return None


def machine_info(device: torch.device | str = "cpu") -> dict:
    import sklearn
    import timm

    device = torch.device(device)
    info = {
        "date": _dt.datetime.now().astimezone().isoformat(timespec="seconds"),
        "host_cpu": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        # The load average documents how contended the machine was while the numbers were taken.
        "load_average_1m": round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "timm": timm.__version__,
        "sklearn": sklearn.__version__,
        "skdfl": skdfl.__version__,
        "git": _git_commit(),
        "device": str(device),
        "cpu_bf16_native": bool(torch.ops.mkldnn._is_mkldnn_bf16_supported()),
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def machine_line(info: dict) -> str:
    return (
        f"{info['host_cpu']}, {info['cpu_count']} cores ({info['torch_threads']} torch threads), "
        f"device {info['device']}, torch {info['torch']}, load avg {info['load_average_1m']} at start"
    )


# ------------------------------------------------------------------------------------------ timing
def sync(device: torch.device | str) -> None:
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


def interleaved(fns: dict[str, Callable[[], object]], *, repeats: int, warmup: int = 1, device="cpu") -> dict:
    """Wall times (s) of each function, interleaved round by round in alternating order.

    Alternating the order (A B, B A, A B, ...) keeps a slow drift of the machine's load from favouring
    whichever side always runs first. Warm-up calls (oneDNN primitive creation, allocator growth, file
    cache) are not timed.
    """
    names = list(fns)
    for _ in range(warmup):
        for name in names:
            fns[name]()
    sync(device)
    times: dict[str, list[float]] = {n: [] for n in names}
    for r in range(repeats):
        for name in names if r % 2 == 0 else names[::-1]:
            sync(device)
            t0 = time.perf_counter()
            fns[name]()
            sync(device)
            times[name].append(time.perf_counter() - t0)
    return times


def median_ratio(num: list[float], den: list[float]) -> float:
    """Median of the per-round ratios: each round's two sides ran back to back under the same load."""
    return float(np.median(np.asarray(num) / np.asarray(den)))


class Stopwatch:
    def __enter__(self):
        self.t0 = time.perf_counter()
        return self

    def __exit__(self, *exc):
        self.seconds = time.perf_counter() - self.t0


# -------------------------------------------------------------------------------------------- data
def _read_labels(folder: Path) -> pd.DataFrame:
    frame = pd.read_csv(folder / "labels.csv")
    frame["path"] = [str(folder / p) for p in frame["path"]]
    frame["dataset"] = folder.name
    return frame


def load_idc(root: Path, n: int | None = None, seed: int = 0) -> pd.DataFrame:
    """Breast IDC 50x50 patches of all 27 patients (both folders): columns path, label, patient.

    ``n`` draws a subsample stratified by patient x label, so a quick run keeps every patient and the
    class balance of each (a patient-grouped split on it stays meaningful).
    """
    frames = [_read_labels(root / name) for name in ("breast_idc_patches", "breast_idc_25patients")]
    frame = pd.concat(frames, ignore_index=True)[["path", "label", "patient", "width", "height", "dataset"]]
    frame["patient"] = frame["patient"].astype(str)
    return load_idc_subset(frame, n, seed)


def load_idc_subset(frame: pd.DataFrame, n: int | None, seed: int = 0) -> pd.DataFrame:
    """``n`` rows of ``frame`` stratified by patient x label (all rows if ``n`` is None or too large)."""
    if n is not None and n < len(frame):
        from sklearn.model_selection import train_test_split

        strata = frame["patient"] + "/" + frame["label"]
        # Strata too small to split (a patient with a handful of patches of one class) are kept whole.
        counts = strata.map(strata.value_counts())
        small = frame[counts < 2]
        big = frame[counts >= 2]
        size = max(1, n - len(small))
        # Fewer samples than strata (tiny timing subsets): stratify by label only.
        by = strata[counts >= 2] if size >= strata[counts >= 2].nunique() else big["label"]
        keep, _ = train_test_split(big, train_size=size, stratify=by, random_state=seed)
        frame = pd.concat([small, keep]).sort_index()
    return frame.reset_index(drop=True)


def load_breakhis(root: Path) -> pd.DataFrame:
    frames = [_read_labels(root / name) for name in ("breakhis_samples", "breakhis_extra")]
    frame = pd.concat(frames, ignore_index=True)
    frame["patient"] = frame["patient"].astype(str)
    return frame[["path", "label", "subtype", "patient", "magnification", "dataset"]].reset_index(drop=True)


def load_crc(root: Path) -> pd.DataFrame:
    return _read_labels(root / "crc_val_he_7k_mini")[["path", "label", "dataset"]]


# ---------------------------------------------------------------------------------------- backbone
def main_backbone(allow_random: bool = True) -> dict:
    """The genuinely pretrained DenseNet-121 (Keras ImageNet weights) if skdfl registers it, else random init.

    Returned as BackboneEmbedder keyword arguments plus a ``label`` and ``pretrained_weights`` flag, so
    every result records which extractor produced it.
    """
    names: set[str] = set()
    try:
        from skdfl.backbones import list_backbones

        table = list_backbones()
        names = set(table["name"]) | {a.strip() for s in table.get("aliases", []) for a in str(s).split(",")}
    except Exception:  # the registry is still being written; fall back below
        pass
    if MAIN_BACKBONE in names:
        return dict(backbone=MAIN_BACKBONE, pretrained=True, label="DenseNet-121 Keras ImageNet", pretrained_weights=True)
    if not allow_random:
        sys.exit(f"{MAIN_BACKBONE} is not registered in skdfl.backbones yet")
    print(f"WARNING: {MAIN_BACKBONE} not registered; using a random-init DenseNet-121", file=sys.stderr)
    return dict(backbone="densenet121", pretrained=False, label="DenseNet-121 random init", pretrained_weights=False)


def embedder_kwargs(spec: dict) -> dict:
    return {k: v for k, v in spec.items() if k in ("backbone", "pretrained")}


def bare_batches(emb, paths: list[str], device) -> list[torch.Tensor]:
    """The exact normalised input tensors ``emb.transform(paths)`` feeds its backbone, built ahead of time."""
    ds = emb.view_dataset({"image": paths})
    mean = torch.tensor(emb.data_config_["mean"]).view(1, 3, 1, 1) * 255.0
    std = torch.tensor(emb.data_config_["std"]).view(1, 3, 1, 1) * 255.0
    batches = []
    for start in range(0, len(paths), emb.batch_size):
        x = torch.cat([ds[k] for k in range(start, min(start + emb.batch_size, len(paths)))])
        if x.shape[-1] == 3:  # skdfl >= 9074a95 ships NHWC uint8 samples
            x = x.permute(0, 3, 1, 2)
        x = x.float()
        batches.append(((x - mean) / std).to(device).contiguous(memory_format=torch.channels_last))
    return batches


# ------------------------------------------------------------------------------------ embed + store
def embed_cached(X, name: str, *, device="auto", refresh: bool = False, **params) -> tuple[np.ndarray, dict]:
    """``BackboneEmbedder(**params).fit_transform(X)``, kept as an skdfl embedding store under ``results/cache/``.

    One store (:func:`skdfl.extract_to_store`) per (name, parameters, input cells), because the ablations
    reload whole matrices many times. The folder is named by a hash of the parameters and of every cell's
    content key (:func:`skdfl.storage.content_key`: a path's size and mtime, an array's pixels); the store
    itself records the embedder's signature (backbone, weights fingerprint, geometry, precision, skdfl
    version) and refuses to serve another extraction, which is then redone in place, so a changed converter
    or preprocessing never serves stale embeddings. An interrupted extraction resumes.
    Returns the embeddings and a small record (seconds spent, whether it was a cache hit).
    """
    from skdfl import BackboneEmbedder, extract_to_store, load_store
    from skdfl.storage import IncompleteStoreError, StoreMismatchError, content_key

    emb = BackboneEmbedder(device=device, verbose=0, **params)
    cols = list(X.columns) if isinstance(X, pd.DataFrame) else ["image"]
    cells = X[cols].to_numpy().ravel().tolist() if isinstance(X, pd.DataFrame) else list(X)
    h = hashlib.sha256()
    h.update(json.dumps({k: repr(v) for k, v in sorted(params.items())}).encode())
    h.update(json.dumps(cols).encode())
    for c in cells:
        h.update(content_key(c).encode())
    path = CACHE / f"{name}-{h.hexdigest()[:16]}"
    try:
        hit = not refresh and load_store(path).meta["complete"]
    except (FileNotFoundError, IncompleteStoreError):
        hit = False
    with Stopwatch() as sw:
        try:
            store = extract_to_store(X, path, emb, overwrite=refresh, verbose=0)
        except StoreMismatchError:  # other weights, preprocessing or skdfl version: redo
            hit = False
            store = extract_to_store(X, path, emb, overwrite=True, verbose=0)
    Z = np.array(store.embeddings, dtype=np.float32)
    record = {"cache_hit": hit, "seconds": round(sw.seconds, 2), "file": path.name}
    if not hit:
        record["images_per_s"] = round(len(Z) * len(store.meta["views"]) / sw.seconds, 2)
    return Z, record


# ------------------------------------------------------------------------------------------ output
def fmt(value, spec: str = ".3f") -> str:
    if value is None or (isinstance(value, float) and not np.isfinite(value)):
        return "n/a"
    if isinstance(value, str):
        return value
    return format(value, spec)


def md_table(rows: list[dict], columns: list[tuple[str, str, str]]) -> str:
    """Markdown table of ``rows``; ``columns`` are ``(key, header, format spec)``."""
    head = "| " + " | ".join(h for _, h, _ in columns) + " |"
    rule = "|" + "|".join("---" for _ in columns) + "|"
    body = ["| " + " | ".join(fmt(r.get(k), f) for k, _, f in columns) + " |" for r in rows]
    return "\n".join([head, rule, *body])


def mean_std(values) -> str:
    v = np.asarray(values, dtype=float)
    return f"{v.mean():.3f} ± {v.std(ddof=1) if len(v) > 1 else 0.0:.3f}"


def command_line() -> str:
    rel = os.path.relpath(sys.argv[0], HERE.parent) if sys.argv else "?"
    return " ".join(["python", rel, *sys.argv[1:]])


def write_result(args, name: str, *, config: dict, results, tables: list[str], device, seconds: float) -> dict:
    record = {
        "benchmark": name,
        "command": command_line(),
        "quick": bool(args.quick),
        "machine": machine_info(device),
        "config": config,
        "wall_seconds": round(seconds, 1),
        "results": results,
        "tables_markdown": tables,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(record, indent=2, default=_json_default) + "\n")
    print(f"\n_{machine_line(record['machine'])}; {seconds:.0f} s; wrote {os.path.relpath(out)}_")
    return record


def _json_default(o):
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    return repr(o)


def quiet_warnings() -> None:
    import warnings

    warnings.filterwarnings("ignore", category=UserWarning, module="torch")
    warnings.filterwarnings("ignore", category=FutureWarning)
