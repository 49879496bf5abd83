"""DFL (extract once + FocalHeadClassifier) vs the same backbone fine-tuned end to end, on real IDC patches.

Fairness: both sides start from the same weights, see the same training images and are scored on the same
held-out *patients* (patient-grouped split), at the same input size (the 50x50 patches padded to
``--size``) under the same bf16 autocast + channels_last, and both wall times include decoding the image
files. End-to-end training gets image augmentation (flips, 90-degree rotations, mild colour jitter); DFL
gets none in its main row (it embeds each image once); a last row gives DFL the dihedral augmentation bank
(8 flips/rotations embedded once, one drawn per sample per epoch, averaged at test time). Model loading is
excluded from both.

End-to-end training on 2 CPU cores is bounded to a few epochs on a few hundred images, so its accuracy is a
lower bound of what a longer fine-tune reaches, and its wall time a lower bound of what it costs.
"""

from __future__ import annotations

import copy
import time

import _common as C
import numpy as np
import torch
from sklearn.metrics import balanced_accuracy_score, f1_score
from sklearn.model_selection import GroupShuffleSplit
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from torch import nn
from torch.utils.data import Dataset

from skdfl import BackboneEmbedder
from skdfl._device import resolve_precision
from skdfl.heads import FocalHeadClassifier
from skdfl.io import read_image
from skdfl.transforms import fit_geometry


class FineTuneNet(nn.Module):
    def __init__(self, backbone, dim, n_classes, dtype=None):
        super().__init__()
        self.backbone = backbone
        self.head = nn.Linear(dim, n_classes)
        self.dtype = dtype

    def forward(self, x):
        x = x.contiguous(memory_format=torch.channels_last)
        with torch.autocast(x.device.type, dtype=self.dtype or torch.float32, enabled=self.dtype is not None):
            f = self.backbone(x)
        return self.head(f.float())


class ImageSet(Dataset):
    """Pre-decoded uint8 images; augmentation happens per draw so every epoch sees new variants."""

    def __init__(self, images, y, mean, std, augment):
        from torchvision.transforms import v2

        self.images, self.y, self.augment = images, np.asarray(y, dtype=np.int64), augment
        self.mean = torch.tensor(mean).view(3, 1, 1)
        self.std = torch.tensor(std).view(3, 1, 1)
        self.jitter = v2.ColorJitter(brightness=0.1, contrast=0.1, saturation=0.1, hue=0.03)

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        x = torch.from_numpy(np.ascontiguousarray(self.images[i].transpose(2, 0, 1))).float() / 255.0
        if self.augment:
            if torch.rand(()) < 0.5:
                x = x.flip(-1)
            if torch.rand(()) < 0.5:
                x = x.flip(-2)
            x = torch.rot90(x, int(torch.randint(4, ())), dims=(-2, -1))
            x = self.jitter(x)
        return (x - self.mean) / self.std, self.y[i]


def load_images(paths, size, interpolation):
    return np.stack([fit_geometry(read_image(p), (size, size), "pad", interpolation=interpolation) for p in paths])


def scores(y_true, y_pred) -> dict:
    return {"balanced_accuracy": balanced_accuracy_score(y_true, y_pred),
            "macro_f1": f1_score(y_true, y_pred, average="macro")}


def run_dfl(spec, size, train, test, y_tr, y_te, args, device, label, augmentations=None) -> dict:
    """Extract + head; with ``augmentations``, a bank the head draws from and averages at test time."""
    emb = BackboneEmbedder(**C.embedder_kwargs(spec), image_size=size, device=device, verbose=0,
                           augmentations=augmentations).fit(train[:1])  # fmt: skip
    with C.Stopwatch() as ext:
        Z = emb.transform(train + test)
    Z_tr, Z_te = Z[: len(train)], Z[len(train):]
    bank = {} if augmentations is None else {"bank_size": emb.n_augmentations_, "test_time_augmentation": True}
    head = make_pipeline(StandardScaler(), FocalHeadClassifier(random_state=args.seed, device=device, **bank))
    with C.Stopwatch() as fit:
        head.fit(Z_tr, y_tr)
    with C.Stopwatch() as pred:
        y_hat = head.predict(Z_te)
    row = {"method": label, "input_px": size, "extract_s": ext.seconds, "train_s": fit.seconds,
           "predict_s": pred.seconds, "total_s": ext.seconds + fit.seconds + pred.seconds,
           **scores(y_te, y_hat)}
    print(f"  {label}: {row['total_s']:.1f} s, balanced acc {row['balanced_accuracy']:.3f}", flush=True)
    return row


def run_e2e(spec, size, train, test, y_tr, y_te, args, device) -> dict:
    from skorch import NeuralNetClassifier

    emb = BackboneEmbedder(**C.embedder_kwargs(spec), image_size=size, device=device, verbose=0).fit(train[:1])
    backbone = copy.deepcopy(emb.module_).requires_grad_(True).to(memory_format=torch.channels_last)
    dtype = resolve_precision("auto", device)
    cfg = emb.data_config_
    torch.manual_seed(args.seed)
    with C.Stopwatch() as load:
        X_tr = load_images(train, size, cfg.get("interpolation", "bicubic"))
        X_te = load_images(test, size, cfg.get("interpolation", "bicubic"))
    classes = np.unique(y_tr)
    net = NeuralNetClassifier(
        FineTuneNet, module__backbone=backbone, module__dim=emb.embedding_dim_, module__n_classes=len(classes),
        module__dtype=dtype, criterion=nn.CrossEntropyLoss, optimizer=torch.optim.AdamW, lr=args.lr,
        batch_size=32, max_epochs=args.epochs, train_split=None, iterator_train__shuffle=True,
        device=str(device), verbose=0, classes=list(range(len(classes))),
    )
    enc = {c: i for i, c in enumerate(classes)}
    with C.Stopwatch() as fit:
        net.fit(ImageSet(X_tr, [enc[v] for v in y_tr], cfg["mean"], cfg["std"], augment=True), y=None)
    with C.Stopwatch() as pred:
        y_hat = classes[net.predict(ImageSet(X_te, np.zeros(len(X_te)), cfg["mean"], cfg["std"], augment=False))]
    row = {"method": f"end-to-end fine-tune ({args.epochs} epochs, augmentation)", "input_px": size,
           "extract_s": load.seconds, "train_s": fit.seconds, "predict_s": pred.seconds,
           "total_s": load.seconds + fit.seconds + pred.seconds, "epoch_s": fit.seconds / args.epochs,
           "train_loss": [round(float(h["train_loss"]), 4) for h in net.history], **scores(y_te, y_hat)}
    print(f"  e2e: {row['total_s']:.1f} s, balanced acc {row['balanced_accuracy']:.3f}", flush=True)
    return row


def main():
    p = C.parser("dfl_vs_e2e", __doc__)
    p.add_argument("--size", type=int, default=None, help="input size of both sides (default 96)")
    p.add_argument("--epochs", type=int, default=None, help="end-to-end epochs (default 2 quick, 3 full)")
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--n-train", type=int, default=None)
    p.add_argument("--n-test", type=int, default=None)
    args = p.parse_args()
    C.quiet_warnings()
    t_start = time.perf_counter()
    root, device = C.data_root(args), C.device_of(args)
    size = args.size or 96
    args.epochs = args.epochs or (2 if args.quick else 3)
    n_train = args.n_train or (240 if args.quick else 600)
    n_test = args.n_test or (160 if args.quick else 400)
    spec = C.main_backbone()

    idc = C.load_idc(root)
    tr_idx, te_idx = next(GroupShuffleSplit(1, test_size=0.25, random_state=args.seed).split(idc, groups=idc["patient"]))
    tr = C.load_idc_subset(idc.iloc[tr_idx], n_train, args.seed)
    te = C.load_idc_subset(idc.iloc[te_idx], n_test, args.seed)
    train, test = tr["path"].tolist(), te["path"].tolist()
    y_tr, y_te = tr["label"].to_numpy(), te["label"].to_numpy()
    print(f"train {len(train)} patches / {tr['patient'].nunique()} patients, "
          f"test {len(test)} / {te['patient'].nunique()} held-out patients; {spec['label']} at {size}px", flush=True)

    # DFL runs before and after the (long) end-to-end run, so a change of machine load during it biases
    # the ratio less; the two DFL times are averaged.
    dfl_a = run_dfl(spec, size, train, test, y_tr, y_te, args, device, f"DFL: extract + FocalHead ({size}px)")
    e2e = run_e2e(spec, size, train, test, y_tr, y_te, args, device)
    dfl_b = run_dfl(spec, size, train, test, y_tr, y_te, args, device, f"DFL: extract + FocalHead ({size}px)")
    dfl = dict(dfl_a)
    for k in ("extract_s", "train_s", "predict_s", "total_s"):
        dfl[k] = (dfl_a[k] + dfl_b[k]) / 2
    dfl224 = run_dfl(spec, 224, train, test, y_tr, y_te, args, device, "DFL at skdfl's default 224px")
    # The method's own answer to the fine-tune's image augmentation: the 8 flips/rotations embedded once,
    # drawn while training the head and averaged at test time (README, "Image-space augmentation").
    dfl_bank = run_dfl(spec, size, train, test, y_tr, y_te, args, device,
                       f"DFL + dihedral bank + TTA ({size}px)", augmentations="dihedral")  # fmt: skip
    rows = [e2e, dfl, dfl224, dfl_bank]
    for r in rows:
        r["time_vs_dfl"] = r["total_s"] / dfl["total_s"]
    ratios = {
        "wall_time_e2e_over_dfl": e2e["total_s"] / dfl["total_s"],
        # What one more experiment costs once embeddings exist: a fine-tune run vs a head fit.
        "train_e2e_over_head_fit": e2e["train_s"] / dfl["train_s"],
        "dfl_bracket_total_s": [dfl_a["total_s"], dfl_b["total_s"]],
    }
    table = C.md_table(rows, [
        ("method", "method", ""), ("input_px", "input px", "d"), ("extract_s", "decode/extract s", ".1f"),
        ("train_s", "train s", ".1f"), ("predict_s", "predict s", ".1f"), ("total_s", "total s", ".1f"),
        ("time_vs_dfl", "time / DFL", ".2f"), ("balanced_accuracy", "balanced acc", ".3f"),
        ("macro_f1", "macro F1", ".3f"),
    ])  # fmt: skip
    print(f"\n### DFL vs end-to-end ({spec['label']}; {len(train)} train / {len(test)} test patches,"
          f" held-out patients)\n")
    print(table)
    print(f"\nwall time e2e / DFL: {ratios['wall_time_e2e_over_dfl']:.1f}x; "
          f"one fine-tune / one head fit on cached embeddings: {ratios['train_e2e_over_head_fit']:.0f}x")
    config = {"backbone": spec, "input_px": size, "epochs": args.epochs, "lr": args.lr, "n_train": len(train),
              "n_test": len(test), "train_patients": int(tr["patient"].nunique()),
              "test_patients": int(te["patient"].nunique()), "head": "StandardScaler + FocalHeadClassifier defaults",
              "e2e": "skorch, AdamW, CE loss, batch 32, bf16 autocast (as DFL), flips/rot90/colour jitter"}
    C.write_result(args, "dfl_vs_e2e", config=config, results={"rows": rows, "ratios": ratios}, tables=[table],
                   device=device, seconds=time.perf_counter() - t_start)


if __name__ == "__main__":
    main()
