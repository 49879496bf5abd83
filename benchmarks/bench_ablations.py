"""Ablations of the paper's DFL claims on real data, with a fixed head and paired comparisons.

* Breast IDC, 27 patients, 5-fold patient-grouped CV: logistic regression vs the focal MLP head; Gaussian
  noise on standardised embeddings at several levels (the paper's Table 5); RGB vs RGB+gray views (its
  Table 3); the pretrained DenseNet-121 vs the same architecture with random weights.
* BreakHis (107 images, 700x460, 40X-400X): single vs multi-zoom views. The data holds no registered
  pairs of one field of view at two magnifications (images of one patient at 40X and 100X are different
  fields), so the multi-zoom view is built from each image: ``detail`` is the central 224x224 crop at native
  resolution, ``context`` is the whole image scaled into 224x224 (about 3x wider field, 3x less resolution),
  the same relation as the paper's x20 patch + x5 context around it. Task: benign vs malignant,
  patient-grouped 5-fold CV repeated with 5 shuffles.

Every configuration sees the same folds, and the head its seeds, so differences are paired per fold.
"""

from __future__ import annotations

import time

import _common as C
import numpy as np
import pandas as pd
from scipy import stats
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import balanced_accuracy_score, f1_score
from sklearn.model_selection import StratifiedGroupKFold
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from skdfl.heads import FocalHeadClassifier
from skdfl.io import read_image


def lr_head():
    return make_pipeline(StandardScaler(), LogisticRegression(max_iter=3000))


def focal_head(noise, device, seed):
    return make_pipeline(StandardScaler(), FocalHeadClassifier(noise_std=noise, device=device, random_state=seed))


def _fit_score(features, make, tr, te, y, seeds) -> tuple[float, float]:
    # One torch thread per worker: two single-threaded fits in parallel beat one two-threaded fit of these
    # small matrices, whose OpenMP barriers stall whenever the shared machine deschedules a thread.
    import torch

    torch.set_num_threads(1)
    ba, f1 = [], []
    for seed in seeds:
        model = make(seed)
        model.fit(features[tr], y[tr])
        pred = model.predict(features[te])
        ba.append(balanced_accuracy_score(y[te], pred))
        f1.append(f1_score(y[te], pred, average="macro"))
        if not isinstance(model[-1], FocalHeadClassifier):
            break  # deterministic: one fit is enough
    return float(np.mean(ba)), float(np.mean(f1))


def cross_validate(configs, y, groups, *, n_splits, repeats, seed, head_seeds, n_jobs=2):
    """Per (config, repetition, fold): balanced accuracy and macro F1, averaged over ``head_seeds`` fits."""
    from joblib import Parallel, delayed

    jobs, keys = [], []
    for rep in range(repeats):
        cv = StratifiedGroupKFold(n_splits=n_splits, shuffle=True, random_state=seed + rep)
        for fold, (tr, te) in enumerate(cv.split(np.zeros(len(y)), y, groups)):
            seeds = [seed + 1000 * rep + 10 * fold + hs for hs in range(head_seeds)]
            for name, (features, make) in configs.items():
                jobs.append(delayed(_fit_score)(features, make, tr, te, y, seeds))
                keys.append((name, rep, fold))
    out = Parallel(n_jobs=n_jobs, verbose=5)(jobs)
    return pd.DataFrame([{"config": name, "rep": rep, "fold": fold, "balanced_accuracy": ba, "macro_f1": f1}
                         for (name, rep, fold), (ba, f1) in zip(keys, out, strict=True)])


def summarise(df: pd.DataFrame, baselines: dict[str, str], descriptions: dict[str, dict]) -> list[dict]:
    """Mean ± std per config (over folds, or over repetition means), and paired differences to a baseline."""
    # With repetitions, a repetition's mean over its folds is one observation (folds within it share data).
    unit = df.groupby(["config", "rep"], sort=False)[["balanced_accuracy", "macro_f1"]].mean().reset_index()
    by = "rep" if df["rep"].nunique() > 1 else "fold"
    obs = unit if by == "rep" else df
    rows = []
    for name in descriptions:
        d = obs[obs["config"] == name].sort_values(by)
        row = {**descriptions[name], "config": name, "n_obs": len(d),
               "bal_acc": C.mean_std(d["balanced_accuracy"]), "macro_f1": C.mean_std(d["macro_f1"]),
               "bal_acc_mean": float(d["balanced_accuracy"].mean())}
        base = baselines.get(name)
        if base:
            b = obs[obs["config"] == base].sort_values(by)
            diff = d["balanced_accuracy"].to_numpy() - b["balanced_accuracy"].to_numpy()
            row["vs"] = base
            row["delta"] = f"{diff.mean():+.3f} ± {diff.std(ddof=1):.3f}"
            row["delta_mean"] = float(diff.mean())
            row["wins"] = f"{int((diff > 0).sum())}/{len(diff)}"
            # Wilcoxon signed-rank: with 5 pairs the smallest two-sided p is 0.0625, so it cannot reach 0.05.
            row["wilcoxon_p"] = float(stats.wilcoxon(diff).pvalue) if np.any(diff != 0) else 1.0
            row["ttest_p"] = float(stats.ttest_rel(d["balanced_accuracy"], b["balanced_accuracy"]).pvalue) \
                if np.any(diff != 0) else 1.0
        rows.append(row)
    return rows


COLUMNS = [
    ("config", "configuration", ""), ("features", "features", ""), ("head", "head", ""),
    ("bal_acc", "balanced acc (mean ± std)", ""), ("macro_f1", "macro F1", ""), ("vs", "paired vs", ""),
    ("delta", "Δ balanced acc", ""), ("wins", "better in", ""), ("wilcoxon_p", "Wilcoxon p", ".3f"),
    ("ttest_p", "paired t p", ".3f"),
]


def idc_ablation(root, args, device) -> tuple[list[dict], pd.DataFrame, dict]:
    n = 800 if args.quick else None
    idc = C.load_idc(root, n=n, seed=args.seed)
    spec = C.main_backbone()
    print(f"IDC: {len(idc)} patches, {idc['patient'].nunique()} patients; embedding with {spec['label']}", flush=True)
    Z, rec = C.embed_cached(idc["path"].tolist(), "idc-main-rgbgray", device=device,
                            colors=["rgb", "gray"], **C.embedder_kwargs(spec))
    print(f"  main backbone: {rec}", flush=True)
    Zr, rec_r = C.embed_cached(idc["path"].tolist(), "idc-densenet121-random", device=device,
                               backbone="densenet121", pretrained=False)
    print(f"  random init: {rec_r}", flush=True)
    dim = Z.shape[1] // 2
    rgb, both = Z[:, :dim], Z
    y, groups = idc["label"].to_numpy(), idc["patient"].to_numpy()
    noises = [1.0, 2.0] if args.quick else [0.5, 1.0, 2.0, 4.0]
    configs = {
        "LR": (rgb, lambda s: lr_head()),
        "focal": (rgb, lambda s: focal_head(0.0, device, s)),
        **{f"focal+noise{v:g}": (rgb, lambda s, v=v: focal_head(v, device, s)) for v in noises},
        "focal RGB+gray": (both, lambda s: focal_head(0.0, device, s)),
        "focal+noise2 RGB+gray": (both, lambda s: focal_head(2.0, device, s)),
        "LR RGB+gray": (both, lambda s: lr_head()),
        "LR random-init": (Zr, lambda s: lr_head()),
        "focal random-init": (Zr, lambda s: focal_head(0.0, device, s)),
    }
    desc = {
        "LR": dict(features="RGB", head="logistic regression"),
        "focal": dict(features="RGB", head="focal MLP 512, no noise"),
        **{f"focal+noise{v:g}": dict(features="RGB", head=f"focal MLP 512, noise std {v:g}") for v in noises},
        "focal RGB+gray": dict(features="RGB+gray", head="focal MLP 512, no noise"),
        "focal+noise2 RGB+gray": dict(features="RGB+gray", head="focal MLP 512, noise std 2"),
        "LR RGB+gray": dict(features="RGB+gray", head="logistic regression"),
        "LR random-init": dict(features="RGB, random-init DenseNet-121", head="logistic regression"),
        "focal random-init": dict(features="RGB, random-init DenseNet-121", head="focal MLP 512, no noise"),
    }
    baselines = {"focal": "LR", **{f"focal+noise{v:g}": "focal" for v in noises},
                 "focal RGB+gray": "focal", "focal+noise2 RGB+gray": "focal+noise2", "LR RGB+gray": "LR",
                 "LR random-init": "LR", "focal random-init": "focal"}
    df = cross_validate(configs, y, groups, n_splits=5, repeats=1, seed=args.seed,
                        head_seeds=1 if args.quick else 2)
    info = {"n": len(idc), "patients": int(idc["patient"].nunique()), "backbone": spec, "embedding": [rec, rec_r],
            "class_counts": idc["label"].value_counts().to_dict()}
    return summarise(df, baselines, desc), df, info


def breakhis_views(frame: pd.DataFrame, size: int = 224) -> pd.DataFrame:
    detail, context = [], []
    for p in frame["path"]:
        img = read_image(p)
        h, w = img.shape[:2]
        top, left = (h - size) // 2, (w - size) // 2
        detail.append(np.ascontiguousarray(img[top: top + size, left: left + size]))
        context.append(img)  # BackboneEmbedder's "pad" policy scales the whole field into the input size
    return pd.DataFrame({"detail": detail, "context": context})


def breakhis_ablation(root, args, device) -> tuple[list[dict], pd.DataFrame, dict]:
    bh = C.load_breakhis(root)
    spec = C.main_backbone()
    X = breakhis_views(bh)
    print(f"BreakHis: {len(bh)} images, {bh['patient'].nunique()} patients", flush=True)
    Z, rec = C.embed_cached(X, "breakhis-main-zoom", device=device, views=["detail", "context"],
                            colors=["rgb", "gray"], **C.embedder_kwargs(spec))
    print(f"  main backbone: {rec}", flush=True)
    d = Z.shape[1] // 4  # [detail_rgb | detail_gray | context_rgb | context_gray]
    det, det_g, ctx = Z[:, :d], Z[:, d: 2 * d], Z[:, 2 * d: 3 * d]
    y, groups = bh["label"].to_numpy(), bh["patient"].to_numpy()
    feats = {"detail": det, "context": ctx, "detail+context": np.hstack([det, ctx]),
             "detail RGB+gray": np.hstack([det, det_g])}
    configs, desc, baselines = {}, {}, {}
    for fname, F in feats.items():
        configs[f"LR {fname}"] = (F, lambda s: lr_head())
        desc[f"LR {fname}"] = dict(features=fname, head="logistic regression")
        configs[f"focal {fname}"] = (F, lambda s: focal_head(0.0, device, s))
        desc[f"focal {fname}"] = dict(features=fname, head="focal MLP 512, no noise")
    for h in ("LR", "focal"):
        baselines[f"{h} context"] = f"{h} detail"
        baselines[f"{h} detail+context"] = f"{h} detail"
        baselines[f"{h} detail RGB+gray"] = f"{h} detail"
    df = cross_validate(configs, y, groups, n_splits=5, repeats=5, seed=args.seed, head_seeds=1)
    info = {"n": len(bh), "patients": int(bh["patient"].nunique()), "backbone": spec, "embedding": rec,
            "class_counts": bh["label"].value_counts().to_dict(),
            "magnifications": bh["magnification"].value_counts().to_dict()}
    return summarise(df, baselines, desc), df, info


def main():
    p = C.parser("ablations", __doc__)
    p.add_argument("--skip-breakhis", action="store_true")
    args = p.parse_args()
    C.quiet_warnings()
    t_start = time.perf_counter()
    root, device = C.data_root(args), C.device_of(args)
    results, tables = {}, []
    rows, df, info = idc_ablation(root, args, device)
    t1 = C.md_table(rows, COLUMNS)
    print(f"\n### Breast IDC ablations ({info['n']} patches, {info['patients']} patients, 5-fold patient-grouped CV,"
          f" {info['backbone']['label']})\n")
    print(t1)
    tables.append(t1)
    results["idc"] = {"summary": rows, "folds": df.to_dict("records"), "info": info}
    if not args.skip_breakhis:
        rows, df, info = breakhis_ablation(root, args, device)
        t2 = C.md_table(rows, COLUMNS)
        print(f"\n### BreakHis multi-zoom views ({info['n']} images, {info['patients']} patients, benign vs "
              f"malignant, 5 x 5-fold patient-grouped CV; mean ± std over the 5 repetitions)\n")
        print(t2)
        tables.append(t2)
        results["breakhis"] = {"summary": rows, "folds": df.to_dict("records"), "info": info}
    config = {"head": "StandardScaler + FocalHeadClassifier defaults (512 hidden, gamma 2, Adam 1e-3, 50 epochs,"
                      " batch 128)", "lr": "StandardScaler + LogisticRegression() defaults (C=1)",
              "head_seeds_per_fold_idc": 1 if args.quick else 2, "input": "pad to 224, ImageNet mean/std, "
              "precision auto"}
    C.write_result(args, "ablations", config=config, results=results, tables=tables, device=device,
                   seconds=time.perf_counter() - t_start)


if __name__ == "__main__":
    main()
