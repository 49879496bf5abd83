"""skdfl defaults vs the extraction loop most notebooks contain (one image at a time, fp32, no batching).

The naive loop is written as it usually is: PIL open, torchvision ``Resize((224, 224))`` / ``ToTensor`` /
``Normalize``, ``unsqueeze(0)``, ``model(x)`` under ``no_grad``, fp32, default memory format. The middle
column (skdfl with ``precision="fp32"``) splits the gain into batching + layout vs reduced precision.
"""

from __future__ import annotations

import time

import _common as C
import numpy as np
import torch
from PIL import Image
from torchvision import transforms as T

from skdfl import BackboneEmbedder


def naive_extract(model, paths, mean, std, size):
    tf = T.Compose([T.Resize(size), T.ToTensor(), T.Normalize(mean, std)])
    feats = []
    with torch.no_grad():
        for p in paths:
            x = tf(Image.open(p).convert("RGB")).unsqueeze(0)
            feats.append(model(x).numpy())
    return np.concatenate(feats)


def run(spec, paths, args, device) -> dict:
    default = BackboneEmbedder(**C.embedder_kwargs(spec), device=device, verbose=0).fit(paths[:1])
    fp32 = BackboneEmbedder(**C.embedder_kwargs(spec), device=device, verbose=0, precision="fp32").fit(paths[:1])
    # The notebook loop gets its own copy of the same weights, in the default (contiguous) layout.
    import copy

    model = copy.deepcopy(default.module_).to(memory_format=torch.contiguous_format)
    cfg = default.data_config_
    fns = {
        "naive": lambda: naive_extract(model, paths, cfg["mean"], cfg["std"], default.input_size_),
        "skdfl_fp32": lambda: fp32.transform(paths),
        "skdfl_default": lambda: default.transform(paths),
    }
    times = C.interleaved(fns, repeats=args.repeats, warmup=1, device=device)
    a, b = fns["naive"](), fns["skdfl_default"]()
    cos = (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
    n = len(paths)
    row = {
        "backbone": spec["label"],
        "n": n,
        "naive_img_s": n / np.median(times["naive"]),
        "skdfl_fp32_img_s": n / np.median(times["skdfl_fp32"]),
        "skdfl_img_s": n / np.median(times["skdfl_default"]),
        "speedup_fp32": C.median_ratio(times["naive"], times["skdfl_fp32"]),
        "speedup": C.median_ratio(times["naive"], times["skdfl_default"]),
        "min_cosine_naive_vs_skdfl": float(cos.min()),
        "times_s": {k: [round(t, 3) for t in v] for k, v in times.items()},
    }
    print(f"  {spec['label']:28s} naive {row['naive_img_s']:.1f} img/s, skdfl {row['skdfl_img_s']:.1f} img/s,"
          f" x{row['speedup']:.2f}", flush=True)
    return row


def main():
    p = C.parser("naive", __doc__)
    p.add_argument("--repeats", type=int, default=None)
    args = p.parse_args()
    C.quiet_warnings()
    t_start = time.perf_counter()
    root, device = C.data_root(args), C.device_of(args)
    args.repeats = args.repeats or (2 if args.quick else 5)
    n = 32 if args.quick else 192
    paths = C.load_idc(root, n=n, seed=args.seed)["path"].tolist()
    specs = [C.main_backbone(), dict(backbone="resnet50", pretrained=False, label="ResNet-50 random init")]
    rows = [run(spec, paths, args, device) for spec in specs]
    table = C.md_table(rows, [
        ("backbone", "backbone", ""), ("n", "images", "d"), ("naive_img_s", "naive loop img/s", ".1f"),
        ("skdfl_fp32_img_s", "skdfl fp32 img/s", ".1f"), ("skdfl_img_s", "skdfl defaults img/s", ".1f"),
        ("speedup_fp32", "speed-up (fp32 batched)", ".2f"), ("speedup", "speed-up (defaults)", ".2f"),
        ("min_cosine_naive_vs_skdfl", "min cosine naive vs skdfl", ".3f"),
    ])  # fmt: skip
    print(f"\n### skdfl vs a naive notebook loop ({n} real IDC patches)\n")
    print(table)
    config = {"n_images": n, "repeats": args.repeats, "skdfl": "BackboneEmbedder defaults (batch 32, precision auto)"}
    C.write_result(args, "naive", config=config, results=rows, tables=[table], device=device,
                   seconds=time.perf_counter() - t_start)


if __name__ == "__main__":
    main()
