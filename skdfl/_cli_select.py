"""``skdfl select``: rank backbones on a labelled image set and write the table and figures.

Wired into :mod:`skdfl.cli` with :func:`add_select_parser`. Everything it computes comes from the public
API (:func:`skdfl.selection.compare_backbones`, :mod:`skdfl.metrics`, :mod:`skdfl.plots`).
"""

from __future__ import annotations

import re
import shlex
import time
from pathlib import Path

import numpy as np
import pandas as pd

PLOT_NAMES = ("selection.png", "projection_{best}.png", "confusion_{best}.png", "label_efficiency_{best}.png")


def add_select_parser(subparsers) -> None:
    """Register the ``select`` sub-command on an ``argparse`` sub-parsers object."""
    p = subparsers.add_parser(
        "select",
        help="compare backbones on a proxy task; write a table (CSV, Markdown) and plots",
        description="Embed a labelled image set once per backbone, cross-validate the paper's proxy head "
        "(StandardScaler + one dense softmax layer trained with focal loss, Adam and Gaussian noise) on "
        "the embeddings, and write selection.csv/.md, a bar chart, and for the best backbone an embedding "
        "projection, an out-of-fold confusion matrix, a task report and a label-efficiency curve.",
    )
    p.add_argument(
        "--data", required=True, help="folder with one sub-folder per class, or a CSV of paths and labels"
    )
    p.add_argument(
        "--backbones", required=True, help="comma-separated backbone names (timm or skdfl registry)"
    )
    p.add_argument(
        "--random-init",
        nargs="?",
        const="all",
        default=None,
        metavar="NAMES",
        help="random weights (untrained baselines) for every backbone, or only for the "
        "comma-separated NAMES; the others load their pretrained weights",
    )
    p.add_argument("--image-col", default="path", help="CSV column(s) of image paths, comma separated")
    p.add_argument("--label-col", default="label", help="CSV column of class labels")
    p.add_argument(
        "--group-col",
        default="auto",
        help="CSV column of patients/slides for grouped CV "
        "('auto': 'patient' when present and filled on every row; 'none' to disable)",
    )
    p.add_argument("--cv", type=int, default=5, help="number of (stratified, grouped if groups) folds")
    p.add_argument(
        "--image-size", type=int, default=None, help="backbone input size (default: the backbone's)"
    )
    p.add_argument("--views", default=None, help="image columns to embed, comma separated (default: all)")
    p.add_argument("--colors", default="rgb", help="colour versions of every view: rgb, gray or rgb,gray")
    p.add_argument("--resize", default="pad", choices=["pad", "stretch", "crop", "none"])
    p.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16", "fp16"])
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--epochs", type=int, default=50, help="max_epochs of the proxy head")
    p.add_argument(
        "--noise-std",
        type=float,
        default=None,
        help="Gaussian input noise std of the proxy head, in standardised feature units "
        "(default: skdfl.selection.PROXY_NOISE_STD)",
    )
    p.add_argument("--max-images", type=int, default=None, help="stratified random subsample, for speed")
    p.add_argument(
        "--pos-label",
        default=None,
        help="positive class of a binary task for precision/recall/PR-AUC (default: the minority class)",
    )
    p.add_argument("--fractions", default="0.05,0.1,0.2,0.5,1.0", help="label-efficiency fractions")
    p.add_argument("--repeats", type=int, default=3, help="label-efficiency repeats per fraction")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="report", help="output folder")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=run_select)


# ------------------------------------------------------------------------------------------ data
def _split_list(value: str | None) -> list[str]:
    return [v.strip() for v in value.split(",") if v.strip()] if value else []


def _load(args):
    from .datasets import load_data

    group_col = None if args.group_col == "none" else args.group_col
    bunch = load_data(args.data, image_cols=_split_list(args.image_col), label_col=args.label_col,
                      group_col=group_col, max_samples=args.max_images, random_state=args.seed)
    return bunch.X, bunch.y, bunch.groups


def _embedders(args, names):
    from .embedder import BackboneEmbedder

    random_init = set()
    if args.random_init == "all":
        random_init = set(names)
    elif args.random_init:
        random_init = set(_split_list(args.random_init))
        unknown = sorted(random_init - set(names))
        if unknown:
            raise ValueError(f"--random-init names {unknown} are not in --backbones {names}")
    common = dict(
        views=_split_list(args.views) or None,
        colors=_split_list(args.colors),
        image_size=args.image_size,
        resize=args.resize,
        precision=args.precision,
        batch_size=args.batch_size,
    )
    return {name: BackboneEmbedder(name, pretrained=name not in random_init, **common) for name in names}


def _command_line(args) -> str:
    parts = ["skdfl", "select", "--data", args.data, "--backbones", args.backbones]
    if args.random_init:
        parts += ["--random-init"] + ([] if args.random_init == "all" else [args.random_init])
    defaults = {
        "image_col": "path",
        "label_col": "label",
        "group_col": "auto",
        "cv": 5,
        "image_size": None,
        "views": None,
        "colors": "rgb",
        "resize": "pad",
        "precision": "auto",
        "batch_size": 32,
        "epochs": 50,
        "noise_std": None,
        "max_images": None,
        "pos_label": None,
        "fractions": "0.05,0.1,0.2,0.5,1.0",
        "repeats": 3,
        "seed": 0,
    }
    for key, default in defaults.items():
        value = getattr(args, key)
        if value != default:
            parts += [f"--{key.replace('_', '-')}", str(value)]
    parts += ["--out", str(args.out)]
    return " ".join(shlex.quote(p) for p in parts)


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name)


# ------------------------------------------------------------------------------------------- run
def run_select(args) -> int:
    """Run ``skdfl select``; returns the exit code (0). Errors propagate as exceptions."""
    from sklearn.model_selection import cross_val_predict

    from .metrics import binary_report, multiclass_report, patient_level_scores
    from .plots import (
        plot_confusion_matrix,
        plot_embedding_projection,
        plot_label_efficiency,
        plot_selection,
        save_figure,
    )
    from .selection import (
        PROXY_NOISE_STD,
        compare_backbones,
        default_head,
        format_selection_table,
        label_efficiency_curve,
        make_splits,
        set_head_params,
    )

    start = time.perf_counter()
    names = _split_list(args.backbones)
    if not names:
        raise ValueError("--backbones is empty; give comma-separated backbone names")
    if args.cv < 2:
        raise ValueError(f"--cv must be at least 2, got {args.cv}")
    fractions = [float(f) for f in _split_list(args.fractions)]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    X, y, groups = _load(args)
    y_arr = y.to_numpy()
    classes = np.unique(y_arr)
    grouping = f", {groups.nunique()} patients (grouped folds)" if groups is not None else ""
    print(f"data: {args.data}: {len(X)} images, {len(classes)} classes{grouping}")

    noise_std = PROXY_NOISE_STD if args.noise_std is None else args.noise_std
    head = set_head_params(default_head(args.seed), {"max_epochs": args.epochs, "noise_std": noise_std})
    table, embeddings = compare_backbones(
        X,
        y_arr,
        _embedders(args, names),
        groups=groups,
        head=head,
        cv=args.cv,
        random_state=args.seed,
        verbose=0 if args.quiet else 1,
        return_embeddings=True,
    )
    table.to_csv(out / "selection.csv", index=False)
    save_figure(plot_selection(table), out / "selection.png")

    best = str(table["backbone"].iloc[0])
    Z = embeddings[best]
    tag = _safe(best)
    save_figure(
        plot_embedding_projection(Z, y_arr, random_state=args.seed, title=f"{best} embeddings"),
        out / f"projection_{tag}.png",
    )

    # Out-of-fold predictions on the same folds as the table (same splits for the same seed).
    splits = make_splits(args.cv, y_arr, groups, random_state=args.seed)
    proba = cross_val_predict(head, Z, y_arr, cv=splits, method="predict_proba")
    y_pred = classes[np.argmax(proba, axis=1)]
    save_figure(
        plot_confusion_matrix(y_arr, y_pred, labels=classes, title=f"{best}: out-of-fold confusion matrix"),
        out / f"confusion_{tag}.png",
    )
    task_md = _task_report(
        args,
        best,
        y_arr,
        proba,
        y_pred,
        classes,
        groups,
        binary_report,
        multiclass_report,
        patient_level_scores,
    )
    (out / f"task_report_{tag}.md").write_text(task_md)

    curve = label_efficiency_curve(
        Z,
        y_arr,
        head,
        fractions=fractions,
        n_repeats=args.repeats,
        groups=groups,
        random_state=args.seed,
        verbose=0 if args.quiet else 1,
    )
    curve.to_csv(out / f"label_efficiency_{tag}.csv", index=False)
    save_figure(
        plot_label_efficiency(curve, title=f"{best}: label efficiency"), out / f"label_efficiency_{tag}.png"
    )

    elapsed = time.perf_counter() - start
    weights_note = ""
    if (table["weights"] == "random-init").any():
        weights_note = " `random-init` rows are untrained backbones (baselines), not feature extractors."
    md = "\n".join(
        [
            "# Backbone selection",
            "",
            format_selection_table(table),
            f"Proxy task: StandardScaler + one dense softmax layer (FocalHeadClassifier, focal loss gamma=2, Adam, "
            f"Gaussian noise std {noise_std:g}, {args.epochs} epochs) on each backbone's embeddings; "
            f"{table.attrs['n_folds']}-fold stratified{' patient-grouped' if groups is not None else ''} CV on "
            f"{len(X)} images ({len(classes)} classes) from `{args.data}`; mean ± std over folds, best first. "
            f"img/s is embedding throughput on this machine.{weights_note}",
            "",
            f"Command: `{_command_line(args)}`  ",
            f"Run time: {elapsed:.0f} s.",
            "",
        ]
    )
    (out / "selection.md").write_text(md)
    print(format_selection_table(table))
    written = ["selection.csv", "selection.md"] + [n.format(best=tag) for n in PLOT_NAMES]
    written += [f"task_report_{tag}.md", f"label_efficiency_{tag}.csv"]
    print(f"best: {best}; wrote {', '.join(written)} to {out}/ in {elapsed:.0f} s")
    return 0


def _task_report(
    args, best, y, proba, y_pred, classes, groups, binary_report, multiclass_report, patient_level_scores
) -> str:
    """Markdown task report of the best backbone from out-of-fold predictions (the paper's Table 4)."""
    lines = [f"# Task report: {best} (out-of-fold predictions)", ""]
    if len(classes) == 2:
        if args.pos_label is not None:
            matches = [c for c in classes if str(c) == args.pos_label]
            if not matches:
                raise ValueError(
                    f"--pos-label {args.pos_label!r} is not a class; classes are {classes.tolist()}"
                )
            pos = matches[0]
        else:
            counts = pd.Series(y).value_counts()
            pos = counts.index[-1] if counts.iloc[-1] < counts.iloc[0] else classes[1]
        report = binary_report(y, proba, pos_label=pos, classes=classes)
        lines += [f"Positive class: `{pos}`.", "", "| metric | value |", "| --- | ---: |"]
        lines += [
            f"| {k} | {v:.3f} |" if isinstance(v, float) else f"| {k} | {v} |" for k, v in report.items()
        ]
    else:
        report = multiclass_report(y, y_pred, y_proba=proba, labels=classes)
        per_class = report.per_class.reset_index()
        lines += [
            "| class | precision | recall | F1 | ROC-AUC (OvR) | PR-AUC | support |",
            "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
        ]
        for _, r in per_class.iterrows():
            lines.append(
                f"| {r['class']} | {r['precision']:.3f} | {r['recall']:.3f} | {r['f1']:.3f} | "
                f"{r['roc_auc']:.3f} | {r['pr_auc']:.3f} | {int(r['support'])} |"
            )
        lines += ["", ", ".join(f"{k} {v:.3f}" for k, v in report.scores.items())]
    if groups is not None:
        try:
            patients = patient_level_scores(y, proba, groups.to_numpy(), how="mean", classes=classes)
        except ValueError as exc:  # patients with images of several classes have no patient label
            lines += ["", f"Patient level: not computed ({exc})."]
        else:
            lines += [
                "",
                f"Patient level ({patients.n_patients} patients, mean probability per patient): "
                f"accuracy {patients.accuracy:.3f}, recognition rate {patients.recognition_rate:.3f}.",
            ]
    return "\n".join(lines) + "\n"
