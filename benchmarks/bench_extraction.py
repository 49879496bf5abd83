"""Extraction efficiency: ``BackboneEmbedder.transform`` on real image files vs the bare backbone forward.

The bare side is the same module, in the same memory format, under the same autocast precision and batch
size, fed the very tensors the embedder would build (decoded, resized, normalised beforehand and kept in
memory). The ratio skdfl / bare throughput is therefore the share of the hardware limit that skdfl's
decode + resize + normalise + copy-out path leaves.

Decoding is timed too, per image, the old way (Pillow decode + the geometry) and the new way (the embedder's
dataset: ``skdfl._decode``'s decoders + the geometry), in the same interleaved rounds as the forward passes.
``vs limit`` compares skdfl's throughput with the serial limit of one process ``1 / (decode + forward)``
(decode: the new path; forward: the bare side): per round, that round's decode + bare time over its skdfl
time, then the median over rounds. Target on CPU: >= 0.95.
"""

from __future__ import annotations

import argparse
import copy
import tempfile
import time
from pathlib import Path

import _common as C
import numpy as np
import torch
from PIL import Image

from skdfl import BackboneEmbedder
from skdfl._device import autocast, resolve_precision
from skdfl.transforms import fit_geometry

MODELS = {"resnet18": "ResNet-18", "resnet50": "ResNet-50", "vit_small_patch16_224": "ViT-S/16"}


def decoders(emb, paths) -> dict:
    """The two ways of bringing ``paths`` to the input size, for timing side by side.

    ``decode_old``: Pillow decode + the geometry; ``decode_new``: the embedder's dataset items, i.e.
    ``skdfl._decode``'s decoders + the same geometry (what ``transform`` runs before every batch).
    """
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

    return {"decode_old": old, "decode_new": new}


def run_one(model: str, label: str, set_name: str, paths: list[str], args, device) -> dict:
    emb = BackboneEmbedder(model, pretrained=False, batch_size=args.batch_size, device=device, verbose=0)
    emb.fit(paths[:1])
    dtype = resolve_precision(emb.precision, device)
    module = emb.module_.to(device=device, memory_format=torch.channels_last)
    batches = C.bare_batches(emb, paths, device)

    def bare():
        with torch.inference_mode(), autocast(device, dtype):
            return [module(x).float().cpu() for x in batches]

    # The same fitted embedder (every fitted attribute, the very module) decoding in one worker process.
    emb_w = copy.copy(emb).set_params(num_workers=1)
    fns = {"bare": bare, "skdfl": lambda: emb.transform(paths)}
    if args.workers:
        fns["skdfl_w1"] = lambda: emb_w.transform(paths)
    # Decoding runs in the same rounds as the forward passes, so that the serial limit of each round
    # (its decode + its bare forward) is compared with that round's skdfl time, under the same load.
    fns.update(decoders(emb, paths))
    times = C.interleaved(fns, repeats=args.repeats, warmup=1, device=device)

    # The two sides must compute the same thing, or the ratio means nothing.
    ref = torch.cat(bare()).numpy()
    out = emb.transform(paths)
    cos = (ref * out).sum(1) / (np.linalg.norm(ref, axis=1) * np.linalg.norm(out, axis=1))

    old_ms, prep_ms = (float(np.median(times[k])) / len(paths) * 1e3 for k in ("decode_old", "decode_new"))

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
    # One process's serial limit: every image decoded (new path) then forwarded; per round, then the median.
    serial = np.asarray(times["decode_new"]) + np.asarray(times["bare"])
    row["limit_img_s"] = n / float(np.median(serial))
    row["ratio_to_limit"] = C.median_ratio(serial.tolist(), times["skdfl"])
    if "skdfl_w1" in times:
        row["skdfl_w1_img_s"] = n / float(np.median(times["skdfl_w1"]))
        row["ratio_w1"] = C.median_ratio(times["bare"], times["skdfl_w1"])
    print(
        f"  {label:10s} {set_name:28s} bare {row['bare_img_s']:6.1f} img/s  skdfl {row['skdfl_img_s']:6.1f} img/s"
        f"  ratio {row['ratio']:.3f}  vs limit {row['ratio_to_limit']:.3f}  decode old {old_ms:.1f} new {prep_ms:.1f} ms/img",
        flush=True,
    )
    return row


def collate_ab(model: str, label: str, paths: list[str], args, device) -> dict:
    """skdfl's batch collation (numpy copy) vs torch's default collate (``torch.stack``), interleaved.

    Once alone on ready items (32 per batch) and once inside ``transform``, where the only difference
    is ``stack_samples``.
    """
    from torch.utils.data import default_collate

    import skdfl.embedder as embedder_module

    emb = BackboneEmbedder(model, pretrained=False, batch_size=args.batch_size, device=device, verbose=0)
    emb.fit(paths[:1])
    ds = emb.view_dataset({"image": paths})
    items = [ds[k] for k in range(min(args.batch_size, len(paths)))]
    numpy_stack = embedder_module.stack_samples

    def transform_with(collate):
        def run():
            embedder_module.stack_samples = collate
            try:
                return emb.transform(paths)
            finally:
                embedder_module.stack_samples = numpy_stack

        return run

    alone = C.interleaved({"torch": lambda: default_collate(items), "numpy": lambda: numpy_stack(items)},
                          repeats=5 * args.repeats, warmup=1)  # fmt: skip
    loop = C.interleaved({"torch": transform_with(default_collate), "numpy": transform_with(numpy_stack)},
                         repeats=args.repeats, warmup=1, device=device)  # fmt: skip
    n = len(paths)
    row = {
        "model": label, "images": "IDC 50x50 PNG -> pad 224", "n": n, "batch": args.batch_size,
        "collate_ms_torch_stack": float(np.median(alone["torch"])) * 1e3,
        "collate_ms_numpy": float(np.median(alone["numpy"])) * 1e3,
        "transform_img_s_torch_stack": n / float(np.median(loop["torch"])),
        "transform_img_s_numpy": n / float(np.median(loop["numpy"])),
        "speedup": C.median_ratio(loop["torch"], loop["numpy"]),
        "times_s": {f"{k}_{side}": [round(t, 4) for t in v] for k, d in (("alone", alone), ("transform", loop))
                    for side, v in d.items()},
    }  # fmt: skip
    print(
        f"  {label}: collate of {len(items)} items torch.stack {row['collate_ms_torch_stack']:.1f} ms, numpy "
        f"{row['collate_ms_numpy']:.1f} ms; transform {row['transform_img_s_torch_stack']:.1f} -> "
        f"{row['transform_img_s_numpy']:.1f} img/s ({row['speedup']:.3f}x)",
        flush=True,
    )
    return row


def main():
    p = C.parser("extraction", __doc__)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--repeats", type=int, default=None)
    p.add_argument("--models", nargs="+", choices=list(MODELS), default=None,
                   help="backbones (default: all three; --quick: the two ResNets)")  # fmt: skip
    p.add_argument("--n-idc", type=int, default=None, help="IDC images (default 256; --quick 32)")
    p.add_argument("--n-breakhis", type=int, default=None, help="BreakHis images (default 96; --quick 16)")
    p.add_argument("--sets", nargs="+", choices=["idc", "breakhis", "crc", "crc_tiff"],
                   default=["idc", "breakhis", "crc"],
                   help="image sets to time (default: the first three; crc_tiff: the CRC tiles saved as uncompressed "
                        "TIFF, the format of NCT-CRC-HE-100K)")  # fmt: skip
    p.add_argument("--workers", action=argparse.BooleanOptionalAction, default=None,
                   help="also time num_workers=1 (default: on without --quick)")  # fmt: skip
    p.add_argument(
        "--collate-ab",
        action="store_true",
        help="only time skdfl's batch collation against torch.stack (default --out: extraction_collate.json)",
    )
    args = p.parse_args()
    C.quiet_warnings()
    t_start = time.perf_counter()
    root, device = C.data_root(args), C.device_of(args)
    args.repeats = args.repeats or (3 if args.quick else 5)
    args.workers = not args.quick if args.workers is None else args.workers
    n_idc = args.n_idc or (32 if args.quick else 256)
    n_bh = args.n_breakhis or (16 if args.quick else 96)
    rng = np.random.default_rng(args.seed)
    idc = C.load_idc(root)
    bh = C.load_breakhis(root)
    sets = {
        "IDC 50x50 PNG -> pad 224": sorted(rng.choice(idc["path"], n_idc, replace=False).tolist()),
        "BreakHis 700x460 PNG -> pad 224": sorted(
            rng.choice(bh["path"], min(n_bh, len(bh)), replace=False).tolist()
        ),
        "CRC 224x224 PNG": sorted(C.load_crc(root)["path"].tolist()),
    }
    # Kept referenced until the end of main: its folder holds the TIFF copies.
    tiff_dir = tempfile.TemporaryDirectory(prefix="skdfl-bench-tiff-")
    if "crc_tiff" in args.sets:
        tiffs = []
        for path in sets["CRC 224x224 PNG"]:
            tiffs.append(str(Path(tiff_dir.name) / (Path(path).stem + ".tif")))
            Image.open(path).convert("RGB").save(tiffs[-1])  # uncompressed, as NCT-CRC-HE-100K's tiles
        sets["CRC 224x224 TIFF"] = tiffs
    if not args.collate_ab:
        keys = {
            "idc": "IDC 50x50 PNG -> pad 224",
            "breakhis": "BreakHis 700x460 PNG -> pad 224",
            "crc": "CRC 224x224 PNG",
            "crc_tiff": "CRC 224x224 TIFF",
        }
        sets = {keys[name]: sets[keys[name]] for name in args.sets}
    names = args.models or (["resnet18", "resnet50"] if args.quick else list(MODELS))
    models = {k: MODELS[k] for k in names}
    if args.collate_ab:
        if args.out == C.RESULTS / "extraction.json":
            args.out = C.RESULTS / "extraction_collate.json"
        paths = sets["IDC 50x50 PNG -> pad 224"]
        rows = [collate_ab(model, label, paths, args, device) for model, label in models.items()]
        table = C.md_table(rows, [
            ("model", "backbone", ""), ("n", "n", "d"), ("collate_ms_torch_stack", "collate ms, torch.stack", ".1f"),
            ("collate_ms_numpy", "collate ms, numpy", ".2f"),
            ("transform_img_s_torch_stack", "transform img/s, torch.stack", ".2f"),
            ("transform_img_s_numpy", "transform img/s, numpy", ".2f"), ("speedup", "speed-up", ".3f"),
        ])  # fmt: skip
        print(f"\n### Batch collation: torch.stack vs numpy (batch {args.batch_size})\n")
        print(table)
        config = {"models": models, "n": len(paths), "batch_size": args.batch_size, "repeats": args.repeats}
        C.write_result(
            args,
            "extraction_collate",
            config=config,
            results=rows,
            tables=[table],
            device=device,
            seconds=time.perf_counter() - t_start,
        )
        return
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
    config = {
        "models": models,
        "sets": {k: len(v) for k, v in sets.items()},
        "batch_size": args.batch_size,
        "repeats": args.repeats,
        "num_workers": "auto (0 on <= 2 CPU cores)",
        "workers_variant": args.workers,
    }
    rows = []
    for model, label in models.items():
        for set_name, paths in sets.items():
            rows.append(run_one(model, label, set_name, paths, args, device))
            # Written after every row, so that an interrupted run keeps what it measured.
            complete = len(rows) == len(models) * len(sets)
            table = C.md_table(rows, columns)
            if complete:
                print(
                    f"\n### Extraction efficiency (batch {args.batch_size}, random-init weights, channels_last)\n"
                )
                print(table)
            C.write_result(
                args,
                "extraction",
                config={**config, "complete": complete},
                results=rows,
                tables=[table],
                device=device,
                seconds=time.perf_counter() - t_start,
            )


if __name__ == "__main__":
    main()
