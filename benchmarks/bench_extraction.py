"""Extraction efficiency: ``BackboneEmbedder.transform`` on real image files vs the bare backbone forward.

The bare side is the same module, in the same memory format, under the same autocast precision and batch
size, fed the very tensors the embedder would build (decoded, resized, normalised beforehand and kept in
memory). The ratio skdfl / bare throughput is therefore the share of the hardware limit that skdfl's
decode + resize + normalise + copy-out path leaves. Target: >= 0.9.
"""

from __future__ import annotations

import time

import _common as C
import numpy as np
import torch

from skdfl import BackboneEmbedder
from skdfl._device import autocast, resolve_precision

MODELS = {"resnet18": "ResNet-18", "resnet50": "ResNet-50", "vit_small_patch16_224": "ViT-S/16"}


def _prep_ms(ds, n) -> float:
    t0 = time.perf_counter()
    for k in range(n):
        ds[k]
    return (time.perf_counter() - t0) / n * 1e3


def run_one(model: str, label: str, set_name: str, paths: list[str], args, device) -> dict:
    emb = BackboneEmbedder(model, pretrained=False, batch_size=args.batch_size, device=device, verbose=0)
    emb.fit(paths[:1])
    dtype = resolve_precision(emb.precision, device)
    module = emb.module_.to(device=device, memory_format=torch.channels_last)
    batches = C.bare_batches(emb, paths, device)

    def bare():
        with torch.inference_mode(), autocast(device, dtype):
            return [module(x).float().cpu() for x in batches]

    emb_w = BackboneEmbedder(
        model, pretrained=False, batch_size=args.batch_size, device=device, verbose=0, num_workers=1
    )
    emb_w.module_, emb_w.data_config_ = emb.module_, emb.data_config_
    for attr in ("views_", "input_size_", "embedding_dim_"):
        setattr(emb_w, attr, getattr(emb, attr))
    fns = {"bare": bare, "skdfl": lambda: emb.transform(paths)}
    if args.workers:
        fns["skdfl_w1"] = lambda: emb_w.transform(paths)
    times = C.interleaved(fns, repeats=args.repeats, warmup=1, device=device)

    # The two sides must compute the same thing, or the ratio means nothing.
    ref = torch.cat(bare()).numpy()
    out = emb.transform(paths)
    cos = (ref * out).sum(1) / (np.linalg.norm(ref, axis=1) * np.linalg.norm(out, axis=1))

    prep_ms = _prep_ms(emb.view_dataset({"image": paths}), len(paths))

    n = len(paths)
    row = {
        "model": label,
        "images": set_name,
        "n": n,
        "batch": args.batch_size,
        "precision": str(dtype).replace("torch.", "") if dtype else "fp32",
        "bare_img_s": n / float(np.median(times["bare"])),
        "skdfl_img_s": n / float(np.median(times["skdfl"])),
        "ratio": C.median_ratio(times["bare"], times["skdfl"]),
        "prep_ms_per_img": prep_ms,

        "min_cosine_skdfl_vs_bare": float(cos.min()),
        "times_s": {k: [round(t, 3) for t in v] for k, v in times.items()},
    }
    if "skdfl_w1" in times:
        row["skdfl_w1_img_s"] = n / float(np.median(times["skdfl_w1"]))
        row["ratio_w1"] = C.median_ratio(times["bare"], times["skdfl_w1"])
    print(
        f"  {label:10s} {set_name:28s} bare {row['bare_img_s']:6.1f} img/s  skdfl {row['skdfl_img_s']:6.1f} img/s"
        f"  ratio {row['ratio']:.3f}  prep {prep_ms:.1f} ms/img",
        flush=True,
    )
    return row


def main():
    p = C.parser("extraction", __doc__)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--repeats", type=int, default=None)
    p.add_argument("--workers", action="store_true", help="also time num_workers=1 (on by default without --quick)")
    args = p.parse_args()
    C.quiet_warnings()
    t_start = time.perf_counter()
    root, device = C.data_root(args), C.device_of(args)
    args.repeats = args.repeats or (3 if args.quick else 5)
    args.workers = args.workers or not args.quick
    n_idc = 32 if args.quick else 256
    n_bh = 16 if args.quick else 96
    rng = np.random.default_rng(args.seed)
    idc = C.load_idc(root)
    bh = C.load_breakhis(root)
    sets = {
        "IDC 50x50 PNG -> pad 224": sorted(rng.choice(idc["path"], n_idc, replace=False).tolist()),
        "BreakHis 700x460 PNG -> pad 224": sorted(rng.choice(bh["path"], min(n_bh, len(bh)), replace=False).tolist()),
    }
    rows = []
    for model, label in MODELS.items():
        for set_name, paths in sets.items():
            rows.append(run_one(model, label, set_name, paths, args, device))

    columns = [
        ("model", "backbone", ""), ("images", "images", ""), ("n", "n", "d"), ("precision", "precision", ""),
        ("bare_img_s", "bare forward img/s", ".1f"), ("skdfl_img_s", "skdfl transform img/s", ".1f"),
        ("ratio", "skdfl / bare", ".3f"),
    ]  # fmt: skip
    if args.workers:
        columns += [("ratio_w1", "skdfl / bare (num_workers=1)", ".3f")]
    columns += [("prep_ms_per_img", "decode+resize ms/img", ".1f")]
    table = C.md_table(rows, columns)
    print(f"\n### Extraction efficiency (batch {args.batch_size}, random-init weights, channels_last)\n")
    print(table)
    config = {"models": MODELS, "sets": {k: len(v) for k, v in sets.items()}, "batch_size": args.batch_size,
              "repeats": args.repeats, "num_workers": 0, "workers_variant": args.workers}
    C.write_result(args, "extraction", config=config, results=rows, tables=[table], device=device,
                   seconds=time.perf_counter() - t_start)


if __name__ == "__main__":
    main()
