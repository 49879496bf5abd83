"""The GPU path: bare forward vs ``BackboneEmbedder.transform`` img/s on real files, plus head-fit times.

For ResNet-50 and ViT-B/16 (random init: the forward cost does not depend on the weights' values) at batch
256, on three kinds of real files from ``../shared/data``: small PNG (IDC 50x50), large PNG (BreakHis
700x460) and JPEG (the same BreakHis images re-encoded to JPEG q90 in a temporary folder, what slide tiles
are). On a GPU each row also times DataLoader worker processes (``worker_type="process"``) against the
default decoding threads. Every row also times both ``decode`` settings (``"cpu"``: decode + Pillow resize
in the loader; ``"device"``: JPEG bytes to nvJPEG, other files decoded at full size, torch resize on the
GPU) and gives the smallest cosine between their embeddings. The bare
side is the same module, precision and memory format fed ready-made normalised tensors already
on the device: the hardware limit. Target on a GPU: skdfl >= 0.9 x bare on every row. Two more sides show
where a shortfall comes from: "input pipeline" is the default embedder with a global-average-pool backbone
(reading, decoding, resizing, copying; no forward pass: if it is below 0.9 x bare, the forward pass is not
the limit), and "no prefetch" the default embedder with ``skdfl.embedder.PREFETCH_DEVICES = ()`` (the next
batch decoded and resized in the main thread, after the forward pass, not beside it); "skdfl / min(bare, input
pipeline)" compares skdfl with the slower of the two parts it cannot avoid (on a GPU, where they overlap,
1.0 means the loop costs nothing beyond them; on a CPU they run one after the other). Head fits:
``FocalHeadClassifier()`` and ``LogisticRegression`` on 4,000 x 1,024 random features with a signal (on a GPU
also ``FocalHeadClassifier(device="cpu")``: the same head on that machine's CPU).

``--device cpu --quick`` runs tiny sizes (what tests/test_bench_gpu.py checks); on one GPU the full run takes
< 8 minutes.
"""

from __future__ import annotations

import tempfile
import time
import traceback
from pathlib import Path

import _common as C
import numpy as np
import torch
from PIL import Image
from torch import nn

import skdfl.embedder
from skdfl import BackboneEmbedder
from skdfl._device import autocast, resolve_precision

MODELS = {"resnet50": "ResNet-50", "vit_base_patch16_224": "ViT-B/16"}
QUICK_MODELS = {"resnet18": "ResNet-18"}


def _file_sets(root: Path, n: int, tmp: Path, seed: int) -> dict[str, list[str]]:
    rng = np.random.default_rng(seed)
    idc = C.load_idc(root)["path"].to_numpy()
    bh = C.load_breakhis(root)["path"].to_numpy()
    small = rng.choice(idc, min(n, len(idc)), replace=False).tolist()
    # Few BreakHis files exist: repeat them to fill the count (the OS file cache serves repeats, as it would
    # serve a hot dataset; decoding is still paid every time).
    large = [str(bh[k % len(bh)]) for k in rng.permutation(max(n, len(bh)))[:n]]
    jpeg = []
    for path in sorted(set(large)):
        out = tmp / (Path(path).stem + ".jpg")
        Image.open(path).convert("RGB").save(out, quality=90)
        jpeg.append(str(out))
    jpeg = [jpeg[k % len(jpeg)] for k in range(n)]
    return {"IDC 50x50 PNG": small, "BreakHis 700x460 PNG": large, "BreakHis 700x460 JPEG": jpeg}


class GlobalPool(nn.Module):
    """A backbone with no forward cost: what is left of ``transform`` is the input pipeline."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean((2, 3))


def _without_prefetch(transform):
    saved = skdfl.embedder.PREFETCH_DEVICES
    skdfl.embedder.PREFETCH_DEVICES = ()
    try:
        return transform()
    finally:
        skdfl.embedder.PREFETCH_DEVICES = saved


def run_row(model: str, label: str, set_name: str, paths: list[str], args, device) -> dict:
    def embedder(decode="auto", worker_type="auto", backbone=model, image_size=args.image_size):
        return BackboneEmbedder(backbone, pretrained=False, batch_size=args.batch_size, device=device, verbose=0,
                                compile=args.compile, image_size=image_size, decode=decode,
                                worker_type=worker_type).fit(paths[:1])  # fmt: skip

    emb = embedder()
    # The same input size, interpolation and normalisation as the model's embedder.
    pool = embedder(backbone=GlobalPool(), image_size=emb.input_size_)
    pool.data_config_ = emb.data_config_
    dtype = resolve_precision(emb.precision, device)
    memory_format = torch.channels_last if device.type in ("cpu", "cuda") else torch.contiguous_format
    module = emb.module_.to(device=device, memory_format=memory_format)
    batches = C.bare_batches(emb, paths, device)

    def bare():
        with torch.inference_mode(), autocast(device, dtype):
            return [module(x.contiguous(memory_format=memory_format)).float().cpu() for x in batches]

    embedders = {"skdfl": emb}
    if device.type != "cpu":  # the default loads with threads there; DataLoader worker processes for comparison
        embedders["processes"] = embedder(worker_type="process")
    # Both decode paths on every row, whatever the default resolves to on this device.
    embedders.update({f"decode={mode}": embedder(mode) for mode in ("cpu", "device")})
    embedders["input pipeline"] = pool
    sides = {"bare": bare} | {name: (lambda e=e: e.transform(paths)) for name, e in embedders.items()}
    sides["no prefetch"] = lambda: _without_prefetch(lambda: emb.transform(paths))
    times = C.interleaved(sides, repeats=args.repeats, warmup=1, device=device)
    n = len(paths)
    row = {
        "model": label, "images": set_name, "n": n, "batch": args.batch_size,
        "precision": str(dtype).replace("torch.", "") if dtype else "fp32",
        "decode": emb.embedding_signature()["jpeg_decode"],
        "bare_img_s": n / float(np.median(times["bare"])), "skdfl_img_s": n / float(np.median(times["skdfl"])),
        "ratio": C.median_ratio(times["bare"], times["skdfl"]),
        "times_s": {k: [round(t, 4) for t in v] for k, v in times.items()},
    }  # fmt: skip
    if "processes" in times:
        row["processes_img_s"] = n / float(np.median(times["processes"]))
        row["processes_ratio"] = C.median_ratio(times["bare"], times["processes"])
    for mode in ("cpu", "device"):
        row[f"decode_{mode}_img_s"] = n / float(np.median(times[f"decode={mode}"]))
        row[f"decode_{mode}_ratio"] = C.median_ratio(times["bare"], times[f"decode={mode}"])
    for side, key in (("input pipeline", "input"), ("no prefetch", "no_prefetch")):
        row[f"{key}_img_s"] = n / float(np.median(times[side]))
        row[f"{key}_ratio"] = C.median_ratio(times["bare"], times[side])
    # skdfl against the slower of its two unavoidable parts (forward, input pipeline), round by round: what the
    # loop itself costs, whether or not the decoders can keep up with the GPU.
    slower_part = np.maximum(times["bare"], times["input pipeline"])
    row["bound_ratio"] = C.median_ratio(slower_part, times["skdfl"])
    # The two decode paths must embed alike (another decoder and resize only).
    a, b = (embedders[f"decode={mode}"].transform(paths) for mode in ("cpu", "device"))
    cosine = (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
    row["decode_cosine_min"] = float(cosine.min())
    extra = f"  processes {row['processes_ratio']:.3f}" if "processes_ratio" in row else ""
    extra += "".join(f"  {k} {row[f'{k}_img_s']:8.1f} img/s ({row[f'{k}_ratio']:.3f})"
                    for k in ("decode_cpu", "decode_device", "input", "no_prefetch"))  # fmt: skip
    print(f"  {label:10s} {set_name:24s} bare {row['bare_img_s']:8.1f} img/s  skdfl {row['skdfl_img_s']:8.1f}"
          f" img/s  ratio {row['ratio']:.3f}{extra}", flush=True)  # fmt: skip
    return row


def head_fits(n: int, d: int, device, seed: int) -> list[dict]:
    from sklearn.linear_model import LogisticRegression

    from skdfl import FocalHeadClassifier

    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    X = (rng.normal(size=(n, d)) + 0.5 * y[:, None] * (np.arange(d) < 32)).astype(np.float32)
    heads = {"FocalHeadClassifier()": FocalHeadClassifier(device=str(device)), "LogisticRegression":
             LogisticRegression(max_iter=1000)}  # fmt: skip
    if device.type != "cpu":  # device="auto" puts heads on the GPU: is that faster than this machine's CPU?
        heads["FocalHeadClassifier(device='cpu')"] = FocalHeadClassifier(device="cpu")
    rows = []
    for name, head in heads.items():
        seconds = []
        for _ in range(3):  # the first fit also pays one-off costs (CUDA context, cuBLAS handles)
            t0 = time.perf_counter()
            head.fit(X, y)
            seconds.append(time.perf_counter() - t0)
        rows.append({"head": name, "n": n, "d": d, "fit_s": float(np.median(seconds[1:])), "first_fit_s": seconds[0],
                     "train_accuracy": float(head.score(X, y)), "profile": _profile(head, X, y),
                     "epochs": len(getattr(head, "history_", []))})  # fmt: skip
        print(f"  {name:24s} fit {rows[-1]['fit_s']:.2f} s on {n}x{d} (first {seconds[0]:.2f} s)", flush=True)
    return rows


def _profile(head, X, y, top: int = 15) -> list[dict]:
    """The ``top`` functions of one more fit by own time (a device sync shows up as the call that waits)."""
    import cProfile
    import pstats

    profiler = cProfile.Profile()
    profiler.runcall(head.fit, X, y)
    entries = [
        {"function": f"{Path(filename).name}:{line}:{function}", "calls": calls, "own_s": round(own, 4),
         "cumulative_s": round(cumulative, 4)}
        for (filename, line, function), (_, calls, own, cumulative, _) in pstats.Stats(profiler).stats.items()
    ]  # fmt: skip
    return sorted(entries, key=lambda e: -e["own_s"])[:top]


def main():
    p = C.parser("gpu", __doc__)
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--repeats", type=int, default=None)
    p.add_argument("--compile", action="store_true", help="also torch.compile the backbone (both sides)")
    args = p.parse_args()
    C.quiet_warnings()
    t_start = time.perf_counter()
    root, device = C.data_root(args), C.device_of(args)
    args.batch_size = args.batch_size or (8 if args.quick else 256)
    args.repeats = args.repeats or (2 if args.quick else 3)
    args.image_size = 64 if args.quick else None
    n_images = 16 if args.quick else 1024
    models = QUICK_MODELS if args.quick else MODELS
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        sets = _file_sets(root, n_images, Path(tmp), args.seed)
        for model, label in models.items():
            for set_name, paths in sets.items():
                try:
                    rows.append(run_row(model, label, set_name, paths, args, device))
                except Exception as exc:  # one broken row must not cost the device time of the others
                    traceback.print_exc()
                    rows.append({"model": label, "images": set_name, "error": repr(exc)})
    head_rows = head_fits(400 if args.quick else 4000, 64 if args.quick else 1024, device, args.seed)
    table = C.md_table(rows, [
        ("model", "backbone", ""), ("images", "images", ""), ("n", "n", "d"), ("precision", "precision", ""),
        ("bare_img_s", "bare forward img/s", ".1f"), ("skdfl_img_s", "skdfl img/s", ".1f"),
        ("ratio", "skdfl / bare", ".3f"), ("processes_ratio", "worker processes / bare", ".3f"),
        ("decode_cpu_ratio", "decode=cpu / bare", ".3f"),
        ("decode_device_ratio", "decode=device / bare", ".3f"),
        ("input_ratio", "input pipeline / bare", ".3f"), ("no_prefetch_ratio", "no prefetch / bare", ".3f"),
        ("bound_ratio", "skdfl / min(bare, input pipeline)", ".3f"),
        ("decode_cosine_min", "min cosine cpu vs device decode", ".4f"),
    ])  # fmt: skip
    head_table = C.md_table(head_rows, [("head", "head", ""), ("n", "n", "d"), ("d", "d", "d"), ("fit_s", "fit s", ".2f"),
                             ("first_fit_s", "first fit s", ".2f")])  # fmt: skip
    print(f"\n### GPU path (batch {args.batch_size}, random-init weights)\n\n{table}\n\n{head_table}")
    config = {"models": models, "n_images": n_images, "batch_size": args.batch_size, "repeats": args.repeats,
              "compile": args.compile, "weights": "random init (same forward cost as pretrained)"}  # fmt: skip
    C.write_result(args, "gpu", config=config, results={"extraction": rows, "heads": head_rows},
                   tables=[table, head_table], device=device, seconds=time.perf_counter() - t_start)  # fmt: skip


if __name__ == "__main__":
    main()
