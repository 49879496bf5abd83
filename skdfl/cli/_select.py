"""``skdfl select``: :func:`skdfl.reports.write_selection_report` on a labelled image set."""

from __future__ import annotations

import argparse
import shlex

__all__ = ["add_select_parser", "run_select_command"]


def add_select_parser(subparsers) -> argparse.ArgumentParser:
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
        "(default: skdfl.model_selection.PROXY_NOISE_STD)",
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
    p.set_defaults(func=run_select_command)
    return p


# ------------------------------------------------------------------------------------------ data
def _split_list(value: str | None) -> list[str]:
    return [v.strip() for v in value.split(",") if v.strip()] if value else []


def _load(args):
    from ..datasets import load_data

    group_col = None if args.group_col == "none" else args.group_col
    bunch = load_data(args.data, image_cols=_split_list(args.image_col), label_col=args.label_col,
                      group_col=group_col, max_samples=args.max_images, random_state=args.seed)
    return bunch.X, bunch.y, bunch.groups


def _embedders(args, names):
    from ..embedder import BackboneEmbedder

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


def run_select_command(args: argparse.Namespace) -> int:
    """Run ``skdfl select``; returns the exit code (0). Errors propagate as exceptions."""
    from ..model_selection import format_selection_table
    from ..reports import write_selection_report

    names = _split_list(args.backbones)
    if not names:
        raise ValueError("--backbones is empty; give comma-separated backbone names")
    if args.cv < 2:
        raise ValueError(f"--cv must be at least 2, got {args.cv}")
    fractions = [float(f) for f in _split_list(args.fractions)]
    embedders = _embedders(args, names)
    X, y, groups = _load(args)
    grouping = f", {groups.nunique()} patients (grouped folds)" if groups is not None else ""
    print(f"data: {args.data}: {len(X)} images, {y.nunique()} classes{grouping}")
    result = write_selection_report(
        X,
        y.to_numpy(),
        embedders,
        args.out,
        groups=None if groups is None else groups.to_numpy(),
        cv=args.cv,
        max_epochs=args.epochs,
        noise_std=args.noise_std,
        fractions=fractions,
        n_repeats=args.repeats,
        pos_label=args.pos_label,
        random_state=args.seed,
        verbose=0 if args.quiet else 1,
        source=args.data,
        command=_command_line(args),
    )
    print(format_selection_table(result.table))
    print(f"selected: {result.best}; wrote {', '.join(result.files)} to {args.out}/ in {result.seconds:.0f} s")
    return 0
