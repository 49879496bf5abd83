"""Extraction efficiency: ``BackboneEmbedder.transform`` on real image files vs the bare backbone forward.

The bare side is the same module, in the same memory format, under the same autocast precision and batch
size, fed the very tensors the embedder would build (decoded, resized, normalised beforehand and kept in
memory). The ratio skdfl / bare throughput is therefore the share of the hardware limit that skdfl's
decode + resize + normalise + copy-out path leaves.

Decoding is timed too, per image, the old way (Pillow decode + the geometry) and the new way (the embedder's
dataset: ``skdfl._decode``'s decoders + the geometry), alternated. ``vs limit`` compares skdfl's throughput
with the serial limit of one process ``1 / (decode + forward)`` (decode: the new path; forward: the bare
side), all measured in the same run. Target on CPU: >= 0.95.
"""

from __future__ import annotations

import time

import _common as C
import numpy as np
import torch
from PIL import Image

from skdfl import BackboneEmbedder
from skdfl._device import autocast, resolve_precision
from skdfl.transforms import fit_geometry

MODELS = {"resnet18": "ResNet-18", "resnet50": "ResNet-50", "vit_small_patch16_224": "ViT-S/16"}


def _prep_ms(emb, paths, repeats: int) -> tuple[float, float]:
    """Median ms/img of (old: Pillow decode + geometry, new: the embedder's dataset item), alternated."""
    ds = emb.view_dataset({"image": paths})
    geometry = dict(interpolation=emb.data_config_.get("interpolation", "bicubic"), scale=emb.scale,
                    crop_pct=emb.data_config_.get("crop_pct", 1.0) or 1.0)  # fmt: skip

    def old():
        for path in paths:
            with Image.open(path) as im:
                fit_geometry(np.asarray(im.convert("RGB")), emb.input_size_, emb.resize, **geometry)

    def new():
        for k in range(len(paths)):
            ds[k]

    times = C.interleaved({"old": old, "new": new}, repeats=repeats, warmup=1)
    return tuple(float(np.median(times[k])) / len(paths) * 1e3 for k in ("old", "new"))


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

    old_ms, prep_ms = _prep_ms(emb, paths, args.repeats)

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
        "old_prep_ms_per_img": old_ms,

        "min_cosine_skdfl_vs_bare": float(cos.min()),
        "times_s": {k: [round(t, 3) for t in v] for k, v in times.items()},
    }
    # One process's serial limit: every image decoded (new path) then forwarded.
    limit = 1.0 / (prep_ms / 1e3 + 1.0 / row["bare_img_s"])
    row["limit_img_s"], row["ratio_to_limit"] = limit, row["skdfl_img_s"] / limit
    if "skdfl_w1" in times:
        row["skdfl_w1_img_s"] = n / float(np.median(times["skdfl_w1"]))
        row["ratio_w1"] = C.median_ratio(times["bare"], times["skdfl_w1"])
    print(
        f"  {label:10s} {set_name:28s} bare {row['bare_img_s']:6.1f} img/s  skdfl {row['skdfl_img_s']:6.1f} img/s"
        f"  ratio {row['ratio']:.3f}  vs limit {row['ratio_to_limit']:.3f}  decode old {old_ms:.1f} new {prep_ms:.1f} ms/img",
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
        "CRC 224x224 PNG": sorted(C.load_crc(root)["path"].tolist()),
    }
    models = {k: MODELS[k] for k in ("resnet18", "resnet50")} if args.quick else MODELS
    rows = []
    for model, label in models.items():
        for set_name, paths in sets.items():
            rows.append(run_one(model, label, set_name, paths, args, device))

    columns = [
        ("model", "backbone", ""), ("images", "images", ""), ("n", "n", "d"), ("precision", "precision", ""),
        ("bare_img_s", "bare forward img/s", ".1f"), ("skdfl_img_s", "skdfl transform img/s", ".1f"),
        ("ratio", "skdfl / bare", ".3f"),
    ]  # fmt: skip
    if args.workers:
        columns += [("ratio_w1", "skdfl / bare (num_workers=1)", ".3f")]
    columns += [("old_prep_ms_per_img", "decode+resize ms/img (old: Pillow)", ".2f"),
                ("prep_ms_per_img", "decode+resize ms/img (new)", ".2f"),
                ("ratio_to_limit", "skdfl / (1 / (decode + forward))", ".3f")]  # fmt: skip
    table = C.md_table(rows, columns)
    print(f"\n### Extraction efficiency (batch {args.batch_size}, random-init weights, channels_last)\n")
    print(table)
    config = {"models": models, "sets": {k: len(v) for k, v in sets.items()}, "batch_size": args.batch_size,
              "repeats": args.repeats, "num_workers": "auto (0 on <= 2 CPU cores)", "workers_variant": args.workers}
    C.write_result(args, "extraction", config=config, results=rows, tables=[table], device=device,
                   seconds=time.perf_counter() - t_start)


if __name__ == "__main__":
    main()
