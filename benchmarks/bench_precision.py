"""Precision and memory layout: throughput of the bare forward, and how far embeddings move from fp32.

Inputs are real IDC patches prepared exactly as ``BackboneEmbedder`` prepares them (pad to 224, backbone
mean/std), so the cosine similarities are those a user would get. The minimum over images is reported
because one badly rounded embedding is what breaks a downstream classifier, not the average one.
"""

from __future__ import annotations

import copy
import time

import _common as C
import numpy as np
import torch

from skdfl import BackboneEmbedder


def modes_for(device: torch.device) -> dict:
    """name -> (memory format, autocast dtype, cast weights to that dtype instead of autocasting)."""
    modes = {
        "fp32": (torch.contiguous_format, None, False),
        "fp32 + channels_last": (torch.channels_last, None, False),
        "bf16 autocast + channels_last (skdfl auto on CPU)": (torch.channels_last, torch.bfloat16, False),
        # Not an skdfl option today: measured to see whether autocast's per-call weight casts cost much.
        "bf16 weights + channels_last (no autocast)": (torch.channels_last, torch.bfloat16, True),
    }
    if device.type == "cuda":
        modes["fp16 autocast + channels_last (skdfl auto on GPU)"] = (torch.channels_last, torch.float16, False)
    return modes


def _cosine(a, b):
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def run_model(spec: dict, paths: list[str], args, device) -> list[dict]:
    emb = BackboneEmbedder(**C.embedder_kwargs(spec), batch_size=args.batch_size, device=device, verbose=0)
    emb.fit(paths[:1])
    batches = C.bare_batches(emb, paths, device)
    fns, mods = {}, {}
    for name, (fmt_, dtype, cast) in modes_for(device).items():
        module = copy.deepcopy(emb.module_).to(device=device, memory_format=fmt_)
        if cast:
            module = module.to(dtype)
        inputs = [x.contiguous(memory_format=fmt_).to(dtype if cast else x.dtype) for x in batches]
        mods[name] = (module, inputs, dtype, cast)

        def fn(module=module, inputs=inputs, dtype=dtype, cast=cast):
            with torch.inference_mode(), torch.autocast(device.type, dtype=dtype or torch.float32,
                                                        enabled=dtype is not None and not cast):
                return torch.cat([module(x).float().cpu() for x in inputs]).numpy()

        fns[name] = fn
    times = C.interleaved(fns, repeats=args.repeats, warmup=1, device=device)
    ref = fns["fp32"]()
    # Embeddings of a random-init net are nearly one shared vector, which makes any raw cosine ~1;
    # the centred cosine (fp32 mean embedding removed from both) measures the image-specific part.
    centre = ref.mean(0)
    rows = []
    for name, fn in fns.items():
        out = fn()
        cos, ccos = _cosine(ref, out), _cosine(ref - centre, out - centre)
        rows.append({
            "backbone": spec["label"],
            "mode": name,
            "img_s": len(paths) / float(np.median(times[name])),
            "speedup_vs_fp32": C.median_ratio(times["fp32"], times[name]),
            "min_cosine": float(cos.min()),
            "median_cosine": float(np.median(cos)),
            "min_centred_cosine": float(ccos.min()),
            "times_s": [round(t, 3) for t in times[name]],
        })
        print(f"  {spec['label']:28s} {name:50s} {rows[-1]['img_s']:6.1f} img/s  x{rows[-1]['speedup_vs_fp32']:.2f}"
              f"  min cos {rows[-1]['min_cosine']:.5f}", flush=True)
    return rows


def main():
    p = C.parser("precision", __doc__)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--repeats", type=int, default=None)
    args = p.parse_args()
    C.quiet_warnings()
    t_start = time.perf_counter()
    root, device = C.data_root(args), C.device_of(args)
    args.repeats = args.repeats or (2 if args.quick else 5)
    n = 16 if args.quick else 128
    idc = C.load_idc(root, n=n, seed=args.seed)
    paths = idc["path"].tolist()
    specs = [C.main_backbone()]
    specs += [
        dict(backbone="resnet50", pretrained=False, label="ResNet-50 random init"),
        dict(backbone="vit_small_patch16_224", pretrained=False, label="ViT-S/16 random init"),
    ]
    rows = []
    for spec in specs:
        rows += run_model(spec, paths, args, device)
    table = C.md_table(rows, [
        ("backbone", "backbone", ""), ("mode", "precision / layout", ""), ("img_s", "img/s", ".1f"),
        ("speedup_vs_fp32", "speed-up vs fp32", ".2f"), ("min_cosine", "min cosine to fp32", ".4f"),
        ("median_cosine", "median cosine", ".4f"), ("min_centred_cosine", "min centred cosine", ".4f"),
    ])  # fmt: skip
    print(f"\n### Precision and layout ({len(paths)} real IDC patches, batch {args.batch_size}, bare forward)\n")
    print(table)
    config = {"n_images": len(paths), "batch_size": args.batch_size, "repeats": args.repeats,
              "backbones": [s["label"] for s in specs]}
    C.write_result(args, "precision", config=config, results=rows, tables=[table], device=device,
                   seconds=time.perf_counter() - t_start)


if __name__ == "__main__":
    main()
