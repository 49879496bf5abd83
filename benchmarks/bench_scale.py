"""Extraction at scale: throughput and peak memory vs. number of images, and the embedding cache's speed-up.

1. ``extract_to_store`` over a lazy, seeded stream of synthetic 32x32 images with a tiny CNN, at 10k, 50k
   and 100k images, each in a fresh process so its peak RSS (``ru_maxrss``) is its own. For contrast, the
   in-memory path (materialise the images, ``BackboneEmbedder.transform``) at the same sizes.
2. The same ``GridSearchCV`` (4 settings x 3 folds + refit) of a ``Pipeline(BackboneEmbedder, LogisticRegression)``
   run without a cache, then twice with ``cache=DIR`` (cold, then warm), counting backbone forwards.

Prints a Markdown table and writes ``benchmarks/results/bench_scale.json``::

    python benchmarks/bench_scale.py            # full run, ~3-6 min on 2 cores
    python benchmarks/bench_scale.py --quick    # 2k/5k/10k, smoke test
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent


# ------------------------------------------------------------------------------------------ workload
class SyntheticStream:
    """``n`` random RGB images generated on access from seed ``(seed, i)``: nothing is held in memory."""

    def __init__(self, n: int, size: int = 32, seed: int = 0):
        self.n, self.size, self.seed = n, size, seed

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i):
        if not 0 <= i < self.n:
            raise IndexError(i)
        return np.random.default_rng([self.seed, int(i)]).integers(0, 256, (self.size, self.size, 3), dtype=np.uint8)


def tiny_cnn():
    from torch import nn

    return nn.Sequential(
        nn.Conv2d(3, 16, 3, stride=2, padding=1), nn.ReLU(),
        nn.Conv2d(16, 32, 3, stride=2, padding=1), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(),
    )  # fmt: skip


def _embedder(backbone, **kw):
    from skdfl import BackboneEmbedder

    params = dict(image_size=32, precision="fp32", device="cpu", batch_size=256, verbose=0)
    return BackboneEmbedder(backbone, **{**params, **kw})


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


# ------------------------------------------------------------------------------------ one measurement
def worker(mode: str, n: int, chunk_size: int) -> dict:
    """Runs in a fresh process: extract ``n`` images, report time and memory."""
    import torch

    from skdfl import extract_to_store

    torch.manual_seed(0)
    emb = _embedder(tiny_cnn()).fit([SyntheticStream(1)[0]])
    stream = SyntheticStream(n)
    base = _rss_mb()
    with tempfile.TemporaryDirectory(dir=os.environ.get("BENCH_TMP")) as tmp:
        start = time.perf_counter()
        if mode == "store":
            store = extract_to_store(stream, Path(tmp) / "store", emb, chunk_size=chunk_size, verbose=0)
            shape = store.shape
            del store
        else:
            images = np.stack([stream[i] for i in range(n)])  # what an in-memory pipeline holds
            shape = emb.transform(images).shape
        seconds = time.perf_counter() - start
    return {
        "mode": mode, "n": n, "shape": list(shape), "seconds": seconds, "img_per_s": n / seconds,
        "rss_before_mb": base, "peak_rss_mb": _peak_rss_mb(),
    }  # fmt: skip


def measure(mode: str, n: int, chunk_size: int) -> dict:
    out = subprocess.run(
        [sys.executable, __file__, "--worker", mode, "--n", str(n), "--chunk-size", str(chunk_size)],
        check=True, capture_output=True, text=True, env={**os.environ, "PYTHONWARNINGS": "ignore"},
    )  # fmt: skip
    return json.loads(out.stdout.strip().splitlines()[-1])


# -------------------------------------------------------------------------------------- cache speed-up
def grid_search_speedup(n: int, size: int) -> dict:
    import torch
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import GridSearchCV
    from sklearn.pipeline import make_pipeline
    from timm.models.resnet import ResNet

    forwards = 0

    def count(module, args, output):
        nonlocal forwards
        if isinstance(module, ResNet) and bool(args[0].any()):  # not the all-zero probe of fit()
            forwards += args[0].shape[0]

    stream = SyntheticStream(n, size=size, seed=1)
    X = np.stack([stream[i] for i in range(n)])
    y = (X.reshape(n, -1).mean(1) > X.mean()).astype(int)
    grid = {"logisticregression__C": [0.01, 0.1, 1.0, 10.0]}

    def run(cache):
        nonlocal forwards
        forwards = 0
        # By name, as users do: every fit builds the (seeded, random-init) backbone; clones stay cheap.
        embedder = _embedder("resnet18", pretrained=False, image_size=size, batch_size=64, cache=cache)
        pipe = make_pipeline(embedder, LogisticRegression(max_iter=1000))
        start = time.perf_counter()
        GridSearchCV(pipe, grid, cv=3, n_jobs=1).fit(X, y)
        return {"seconds": time.perf_counter() - start, "forwards": forwards}

    hook = torch.nn.modules.module.register_module_forward_hook(count)
    try:
        with tempfile.TemporaryDirectory(dir=os.environ.get("BENCH_TMP")) as tmp:
            runs = {"no cache": run(None), "cache, 1st run (cold)": run(tmp), "cache, 2nd run (warm)": run(tmp)}
    finally:
        hook.remove()
    return {"n_images": n, "image_size": size, "backbone": "timm resnet18 (random init), fp32", "runs": runs}


# -------------------------------------------------------------------------------------------- report
def machine() -> dict:
    import torch

    import skdfl

    return {
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "platform": platform.platform(), "python": platform.python_version(), "cpus": os.cpu_count(),
        "torch": torch.__version__, "torch_threads": torch.get_num_threads(), "skdfl": skdfl.__version__,
        "load_average": os.getloadavg(),
    }  # fmt: skip


def markdown(result: dict) -> str:
    lines = [
        "| path | images | seconds | images/s | RSS before (MB) | peak RSS (MB) |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for r in result["extraction"]:
        label = "extract_to_store (lazy)" if r["mode"] == "store" else "in-memory transform"
        lines.append(
            f"| {label} | {r['n']:,} | {r['seconds']:.1f} | {r['img_per_s']:,.0f} | "
            f"{r['rss_before_mb']:.0f} | {r['peak_rss_mb']:.0f} |"
        )
    g = result["grid_search"]
    lines += [
        "",
        f"GridSearchCV, 4 settings x 3 folds + refit, {g['n_images']:,} images at {g['image_size']} px, "
        f"{g['backbone']}:",
        "",
        "| run | seconds | backbone forwards | speed-up vs no cache |",
        "|---|---:|---:|---:|",
    ]
    ref = g["runs"]["no cache"]["seconds"]
    for name, r in g["runs"].items():
        lines.append(f"| {name} | {r['seconds']:.1f} | {r['forwards']:,} | {ref / r['seconds']:.1f}x |")
    cold, warm = g["runs"]["cache, 1st run (cold)"]["seconds"], g["runs"]["cache, 2nd run (warm)"]["seconds"]
    lines += ["", f"Cache-hit speed-up of the 2nd run over the 1st: {cold / warm:.1f}x"]
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", default="10000,50000,100000", help="numbers of images, comma separated")
    p.add_argument("--chunk-size", type=int, default=4096)
    p.add_argument("--no-in-memory", action="store_true", help="skip the in-memory contrast rows")
    p.add_argument("--grid-n", type=int, default=300, help="images in the GridSearchCV measurement")
    p.add_argument("--grid-size", type=int, default=32, help="image size in the GridSearchCV measurement")
    p.add_argument("--quick", action="store_true", help="2k/5k/10k images, 100 for the grid search")
    p.add_argument("--out", type=Path, default=HERE / "results" / "bench_scale.json")
    p.add_argument("--worker", choices=("store", "memory"), help=argparse.SUPPRESS)
    p.add_argument("--n", type=int, help=argparse.SUPPRESS)
    args = p.parse_args(argv)

    if args.worker:
        print(json.dumps(worker(args.worker, args.n, args.chunk_size)))
        return 0
    sizes = [2000, 5000, 10000] if args.quick else [int(s) for s in args.sizes.split(",")]
    grid_n = 100 if args.quick else args.grid_n
    result = {"machine": machine(), "command": " ".join([Path(sys.executable).name, *sys.argv]), "extraction": []}
    for mode in ("store",) if args.no_in_memory else ("store", "memory"):
        for n in sizes:
            r = measure(mode, n, args.chunk_size)
            print(f"{mode:6s} n={n:>7,}: {r['img_per_s']:7,.0f} img/s, peak RSS {r['peak_rss_mb']:.0f} MB", flush=True)
            result["extraction"].append(r)
    result["grid_search"] = grid_search_speedup(grid_n, args.grid_size)
    result["machine"]["load_average_end"] = os.getloadavg()
    table = markdown(result)
    print("\n" + table)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({**result, "markdown": table}, indent=2) + "\n")
    print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
