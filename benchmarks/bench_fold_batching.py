"""Fold batching (issue 14.3): the 5 folds of a ``HeadSearchCV`` trial trained as one batched model.

The one lever of the issue's head list not built; this measures whether it pays before building it. A
*prototype*, not skdfl code: a plain-torch training loop of ``FocalHeadClassifier()``'s default model (a linear
head, cross-entropy, Adam with L2 ``weight_decay=0.1``, ``lr=2e-3``, batches of 256, Gaussian noise of 1 x each
feature's training spread drawn in logit space) on each fold's standardised rows. The same loop trains one
fold (``K=1``, run once per fold) or all folds at once with stacked weights (``K=5``: one GEMM, one
batched Cholesky for the noise, one fused Adam step over ``(K, d, C)`` tensors; Adam and its L2 penalty are
element-wise, so each fold's update is its own). Each fold trains for the epochs ``FocalHeadClassifier()`` took
on it (its convergence stop), so both sides do the same work per fold; a batched fold that is done is
snapshotted and restored at the end.

Sides, interleaved round by round: five ``FocalHeadClassifier()`` fits (a trial today, without pruning), five
``K=1`` prototype fits, one ``K=5`` prototype fit; each scored (balanced accuracy) on each fold's held-out
patients. One intra-op thread everywhere (the head's default ``n_threads=1``). ``--device cuda`` runs the same on
a GPU, where launch latency, not arithmetic, bounds a small head's step.

Examples
--------
python benchmarks/bench_fold_batching.py --embeddings /work/notes/emb --repeats 5
"""

from __future__ import annotations

import math
import time
import warnings
from pathlib import Path

import _common as C
import numpy as np
import torch
from bench_head_speed import load_embeddings
from sklearn.exceptions import ConvergenceWarning
from sklearn.metrics import balanced_accuracy_score
from sklearn.model_selection import GroupKFold
from sklearn.preprocessing import LabelEncoder, StandardScaler

from skdfl.heads import FocalHeadClassifier

LR, WEIGHT_DECAY, BATCH, NOISE_STD, MIN_STEPS = 2e-3, 0.1, 256, 1.0, 10


def make_folds(data: dict, n_folds: int, device) -> list[dict]:
    """Patient-grouped folds, each standardised on its training rows (the pipeline's StandardScaler)."""
    X = np.asarray(data["X"], dtype=np.float32)
    y = LabelEncoder().fit_transform(np.asarray(data["y"]))
    folds = []
    for train, test in GroupKFold(n_splits=n_folds).split(X, y, np.asarray(data["groups"])):
        scaler = StandardScaler().fit(X[train])
        folds.append({
            "X": scaler.transform(X[train]).astype(np.float32), "y": y[train],
            "X_test": scaler.transform(X[test]).astype(np.float32), "y_test": y[test],
        })  # fmt: skip
    for fold in folds:
        fold["X_t"] = torch.from_numpy(fold["X"]).to(device)
        fold["y_t"] = torch.from_numpy(fold["y"]).long().to(device)
    return folds


def train_batched(folds: list[dict], epochs: list[int], n_classes: int, device, seed: int) -> list[tuple]:
    """Train the prototype head on every fold of ``folds`` at once; ``(weight, bias)`` per fold."""
    K, d = len(folds), folds[0]["X_t"].shape[1]
    sizes = [len(f["y_t"]) for f in folds]
    # Each fold's steps: its epochs of ceil(n / batch) batches (at least MIN_STEPS), like BatchIterator.
    steps = [e * max(MIN_STEPS, math.ceil(n / BATCH)) for e, n in zip(epochs, sizes, strict=True)]
    total = max(steps)
    gen = torch.Generator().manual_seed(seed)
    noise_gen = torch.Generator(device=device).manual_seed(seed + 1)  # reproducible, whatever ran before
    offsets = np.cumsum([0, *sizes[:-1]])
    # Row streams: successive permutations of each fold's rows, BATCH per step, as global row numbers.
    streams = []
    need = total * BATCH
    for n, offset in zip(sizes, offsets, strict=True):
        perms = [torch.randperm(n, generator=gen) for _ in range(math.ceil(need / n))]
        streams.append(torch.cat(perms)[:need].view(total, BATCH) + int(offset))
    rows = torch.stack(streams, 1).to(device)  # (total, K, BATCH)
    X_all = torch.cat([f["X_t"] for f in folds])
    y_all = torch.cat([f["y_t"] for f in folds])
    noise_scale = torch.stack([f["X_t"].std(0) for f in folds]) * NOISE_STD  # (K, d)
    bound = 1 / math.sqrt(d)
    # The folds' weights stacked as nn.Linear stores one (K * C, d): one GEMM of all folds' rows against all
    # folds' weights (K x the arithmetic, of which the diagonal blocks are kept). The layout matters on a CPU:
    # x @ W with W of shape (d, C), or a baddbmm, ran 4x (forward) and 17x (weight gradient) slower than
    # nn.Linear's x @ W.T for (256, 1024) x 2 classes, one thread.
    weight = ((torch.rand(K * n_classes, d, generator=gen) * 2 - 1) * bound).to(device).requires_grad_()
    bias = ((torch.rand(K * n_classes, generator=gen) * 2 - 1) * bound).to(device).requires_grad_()
    fused = device.type in ("cpu", "cuda")
    optimizer = torch.optim.Adam([weight, bias], lr=LR, weight_decay=WEIGHT_DECAY, fused=fused)
    done: list = [None] * K
    for step in range(total):
        batch_rows = rows[step].reshape(-1)
        full = torch.nn.functional.linear(X_all[batch_rows], weight, bias).view(K, BATCH, K, n_classes)
        logits = torch.diagonal(full, dim1=0, dim2=2).permute(2, 0, 1)  # fold k's rows x fold k's weights
        # Input noise N(0, diag(s^2)) through the linear layer: N(0, W^T S^2 W) in logit space.
        factor = weight.view(K, n_classes, d).transpose(1, 2) * noise_scale[:, :, None]
        chol = torch.linalg.cholesky(factor.transpose(1, 2) @ factor)
        z = torch.randn(K, BATCH, n_classes, device=device, generator=noise_gen)
        logits = logits + z @ chol.transpose(1, 2)
        losses = torch.nn.functional.cross_entropy(
            logits.reshape(K * BATCH, n_classes), y_all[batch_rows], reduction="none"
        )
        # The sum of the folds' mean losses: each fold's gradient is that of its own mean loss.
        optimizer.zero_grad(set_to_none=True)
        losses.view(K, BATCH).mean(1).sum().backward()
        optimizer.step()
        for k in range(K):
            if step + 1 == steps[k]:
                columns = slice(k * n_classes, (k + 1) * n_classes)
                done[k] = (weight[columns].detach().T.clone(), bias[columns].detach().clone())
    return done


def score(fold: dict, weight: torch.Tensor, bias: torch.Tensor) -> float:
    X = torch.from_numpy(fold["X_test"]).to(weight.device)
    predicted = (X @ weight + bias).argmax(1).cpu().numpy()
    return balanced_accuracy_score(fold["y_test"], predicted)


def main():
    p = C.parser("fold_batching", __doc__)
    p.add_argument("--embeddings", type=Path, default=None, help="folder holding idc_densenet121.npz")
    p.add_argument("--folds", type=int, default=5)
    p.add_argument("--repeats", type=int, default=None, help="interleaved rounds (default 5, 2 with --quick)")
    args = p.parse_args()
    C.quiet_warnings()
    warnings.filterwarnings("ignore", category=ConvergenceWarning)
    t_start = time.perf_counter()
    device = C.device_of(args)
    torch.set_num_threads(1)
    repeats = args.repeats or (2 if args.quick else 5)
    data = load_embeddings(args)
    if args.quick:  # a few patients' worth of rows: what tests/test_bench_fold_batching.py runs
        rng = np.random.default_rng(args.seed)
        keep = np.sort(rng.choice(len(data["y"]), 600, replace=False))
        X = np.asarray(data["X"], dtype=np.float32)[keep]
        # 64 random projections keep some of every feature's signal (the first 64 columns may hold none).
        X = X @ rng.normal(size=(X.shape[1], 64)).astype(np.float32) / np.sqrt(X.shape[1])
        data = {**data, "X": X, "y": np.asarray(data["y"])[keep], "groups": np.asarray(data["groups"])[keep]}
    folds = make_folds(data, args.folds, device)
    n_classes = len(np.unique(np.concatenate([f["y"] for f in folds])))

    heads = [FocalHeadClassifier(device=str(device), random_state=args.seed + k) for k in range(len(folds))]
    for head, fold in zip(heads, folds, strict=True):  # the epochs each fold converges in
        head.fit(fold["X"], fold["y"])
    epochs = [int(head.n_iter_) for head in heads]

    results: dict = {}

    def sequential_heads():
        results["focal"] = [head.fit(f["X"], f["y"]).score(f["X_test"], f["y_test"])
                            for head, f in zip(heads, folds, strict=True)]  # fmt: skip

    def prototype_one_at_a_time():
        scores = []
        for k, fold in enumerate(folds):
            ((w, b),) = train_batched([fold], [epochs[k]], n_classes, device, args.seed + k)
            scores.append(score(fold, w, b))
        results["k1"] = scores

    def prototype_batched():
        trained = train_batched(folds, epochs, n_classes, device, args.seed)
        results["batched"] = [score(f, w, b) for f, (w, b) in zip(folds, trained, strict=True)]

    sides = {"FocalHeadClassifier x5": sequential_heads, "prototype K=1 x5": prototype_one_at_a_time,
             "prototype K=5 batched": prototype_batched}  # fmt: skip
    times = C.interleaved(sides, repeats=repeats, warmup=1, device=device)
    keys = dict(zip(sides, ("focal", "k1", "batched"), strict=True))
    rows = []
    for name, key in keys.items():
        rows.append({
            "side": name, "seconds": float(np.median(times[name])),
            "speedup_vs_focal": C.median_ratio(times["FocalHeadClassifier x5"], times[name]),
            "speedup_vs_k1": C.median_ratio(times["prototype K=1 x5"], times[name]),
            "balanced_accuracy": float(np.mean(results[key])), "fold_scores": [round(s, 4) for s in results[key]],
            "times_s": [round(t, 4) for t in times[name]],
        })  # fmt: skip
        print(f"  {name:24s} {rows[-1]['seconds']:.3f} s  bal. acc {rows[-1]['balanced_accuracy']:.3f}", flush=True)
    table = C.md_table(rows, [
        ("side", "side", ""), ("seconds", "5-fold trial s", ".3f"),
        ("speedup_vs_focal", "speed-up vs FocalHead x5", ".2f"), ("speedup_vs_k1", "speed-up vs prototype K=1 x5", ".2f"),
        ("balanced_accuracy", "mean fold bal. acc", ".3f"),
    ])  # fmt: skip
    print(f"\n### Fold batching ({data['source']}, {len(folds)} folds, epochs per fold {epochs})\n\n{table}")
    config = {"source": data["source"], "folds": len(folds), "epochs_per_fold": epochs, "repeats": repeats,
              "n_features": int(folds[0]["X"].shape[1]), "train_rows": [len(f["y"]) for f in folds],
              "prototype": {"lr": LR, "weight_decay": WEIGHT_DECAY, "batch": BATCH, "noise_std": NOISE_STD}}  # fmt: skip
    C.write_result(args, "fold_batching", config=config, results=rows, tables=[table], device=device,
                   seconds=time.perf_counter() - t_start)  # fmt: skip


if __name__ == "__main__":
    main()
