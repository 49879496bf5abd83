"""Does a small proxy task rank backbones like the real task does (the paper's Tables 1 and 4)?

Candidates: the one genuinely pretrained backbone available offline (Keras ImageNet DenseNet-121) and
random-init DenseNet-121, ResNet-18, ResNet-50 and ViT-S/16. Proxy tasks: CRC-VAL-HE-7K mini (32 tiles,
8 classes, 4-fold stratified CV) and BreakHis benign vs malignant (107 images, 5-fold patient-grouped CV).
Real task: Breast IDC (27 patients, 5-fold patient-grouped CV). Every task uses skdfl's proxy head
(``skdfl.model_selection.default_head``: StandardScaler + linear focal-loss softmax with Gaussian noise).

With a single pretrained candidate this is a weak test: the ranking it can check is mostly "pretrained
first", plus the order of random-init architectures, whose features reflect inductive bias only.
"""

from __future__ import annotations

import time

import _common as C
import numpy as np
from scipy import stats
from sklearn.metrics import balanced_accuracy_score
from sklearn.model_selection import StratifiedGroupKFold, StratifiedKFold

from skdfl.model_selection import default_head

RANDOM = {"densenet121": "DenseNet-121", "resnet18": "ResNet-18", "resnet50": "ResNet-50",
          "vit_small_patch16_224": "ViT-S/16"}


def cv_score(Z, y, splits, seed) -> tuple[float, float]:
    scores = []
    for fold, (tr, te) in enumerate(splits):
        head = default_head(random_state=seed + fold).fit(Z[tr], y[tr])
        scores.append(balanced_accuracy_score(y[te], head.predict(Z[te])))
    return float(np.mean(scores)), float(np.std(scores, ddof=1))


def main():
    p = C.parser("proxy_ranking", __doc__)
    args = p.parse_args()
    C.quiet_warnings()
    t_start = time.perf_counter()
    root, device = C.data_root(args), C.device_of(args)
    idc = C.load_idc(root, n=800 if args.quick else None, seed=args.seed)
    bh, crc = C.load_breakhis(root), C.load_crc(root)
    tasks = {
        "CRC-mini (proxy)": (crc, list(StratifiedKFold(4, shuffle=True, random_state=args.seed)
                                       .split(crc, crc["label"]))),
        "BreakHis B/M (proxy)": (bh, list(StratifiedGroupKFold(5, shuffle=True, random_state=args.seed)
                                          .split(bh, bh["label"], bh["patient"]))),
        "IDC (real task)": (idc, list(StratifiedGroupKFold(5, shuffle=True, random_state=args.seed)
                                      .split(idc, idc["label"], idc["patient"]))),
    }
    main_spec = C.main_backbone()
    candidates = {main_spec["label"]: C.embedder_kwargs(main_spec)}
    candidates.update({f"{label} random init": dict(backbone=name, pretrained=False) for name, label in RANDOM.items()})
    rows = []
    for label, kwargs in candidates.items():
        row = {"backbone": label}
        for task, (frame, splits) in tasks.items():
            paths = frame["path"].tolist()
            if task.startswith("IDC") and kwargs.get("pretrained", False):
                # Shares bench_ablations' cache entry (RGB + gray); the RGB half is what is compared.
                Z, _ = C.embed_cached(paths, "idc-main-rgbgray", device=device, colors=["rgb", "gray"], **kwargs)
                Z = Z[:, : Z.shape[1] // 2]
            else:
                key = "idc-densenet121-random" if (task.startswith("IDC") and kwargs["backbone"] == "densenet121") \
                    else f"{task.split()[0].lower()}-{kwargs['backbone']}-{'pre' if kwargs['pretrained'] else 'rand'}"
                Z, _ = C.embed_cached(paths, key, device=device, **kwargs)
            mean, std = cv_score(Z, frame["label"].to_numpy(), splits, args.seed)
            row[task] = mean
            row[task + " std"] = std
            print(f"  {label:32s} {task:22s} {mean:.3f} ± {std:.3f}", flush=True)
        rows.append(row)
    real = [r["IDC (real task)"] for r in rows]
    agreement = {}
    for task in list(tasks)[:2]:
        proxy = [r[task] for r in rows]
        agreement[task] = {"spearman": float(stats.spearmanr(proxy, real).statistic),
                           "kendall": float(stats.kendalltau(proxy, real).statistic),
                           "same_top1": int(np.argmax(proxy) == np.argmax(real))}
    for r in rows:
        for task in tasks:
            r[task + " fmt"] = f"{r[task]:.3f} ± {r[task + ' std']:.3f}"
        for task in tasks:
            r[task + " rank"] = int(stats.rankdata([-x[task] for x in rows], method="min")[rows.index(r)])
    cols = [("backbone", "backbone", "")]
    for task in tasks:
        cols += [(task + " fmt", f"{task} balanced acc", ""), (task + " rank", "rank", "d")]
    table = C.md_table(rows, cols)
    agree_rows = [{"proxy": k, **v} for k, v in agreement.items()]
    table2 = C.md_table(agree_rows, [("proxy", "proxy task", ""), ("spearman", "Spearman vs IDC", ".2f"),
                                     ("kendall", "Kendall tau vs IDC", ".2f"), ("same_top1", "same best", "d")])
    print(f"\n### Proxy-task ranking vs real-task ranking ({len(idc)} IDC patches)\n")
    print(table)
    print()
    print(table2)
    config = {"candidates": candidates, "head": "skdfl.model_selection.default_head",
              "tasks": {k: len(v[0]) for k, v in tasks.items()}}
    C.write_result(args, "proxy_ranking", config=config, results={"rows": rows, "agreement": agreement},
                   tables=[table, table2], device=device, seconds=time.perf_counter() - t_start)


if __name__ == "__main__":
    main()
