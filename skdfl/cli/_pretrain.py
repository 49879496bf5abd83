"""``skdfl pretrain simclr|mpcs``: :mod:`skdfl.pretrain` from the command line.

Checkpoints go to ``--checkpoint-dir`` (default: beside ``--out``) after every epoch, so re-running the same
command after an interruption (even ``kill -9``) resumes it; the encoder is written to ``--out`` as
safetensors plus its JSON config, ready for ``skdfl embed --backbone ARCH --checkpoint OUT``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

__all__ = ["add_pretrain_parser", "run_pretrain_command"]


def _csv(value: str | None) -> list[str] | None:
    return None if value is None else [v.strip() for v in value.split(",") if v.strip()]


def _pair_table(value: str | None) -> dict | None:
    if value is None:
        return None
    table = {}
    for item in _csv(value):
        first, sep, second = item.partition(":")
        if not sep or not first or not second:
            raise ValueError(f"--pair-table entries are FIRST:SECOND, comma separated (e.g. 40X:100X), got {item!r}")
        table[first.strip()] = second.strip()
    return table


def _common_arguments(p: argparse.ArgumentParser, *, temperature: float, batch_size: int) -> None:
    from .._device import PRECISIONS

    p.add_argument("--backbone", default="resnet18", help="timm model or registry name (default: resnet18)")
    p.add_argument("--pretrained", action="store_true", help="start from the backbone's pretrained weights")
    p.add_argument("--init-checkpoint", default=None, help="start from these local weights (e.g. a previous --out)")
    p.add_argument("--out", required=True, help="encoder weights to write (.safetensors; config beside it)")
    p.add_argument("--checkpoint-dir", default=None,
                   help="per-epoch checkpoints, resumed when the command is re-run (default: OUT stem + '_checkpoint')")
    p.add_argument("--epochs", type=int, default=100)
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument("--batch-size", type=int, default=batch_size)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--temperature", type=float, default=temperature)
    p.add_argument("--optimizer", choices=("adam", "adamw", "lars", "sgd"), default="adam")
    p.add_argument("--num-workers", type=int, default=0, help="DataLoader processes decoding images")
    p.add_argument("--device", default="auto")
    p.add_argument("--precision", choices=PRECISIONS, default="auto")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def add_pretrain_parser(subparsers) -> argparse.ArgumentParser:
    """Register ``skdfl pretrain {simclr,mpcs}`` on an ``argparse`` sub-parser collection."""
    p = subparsers.add_parser(
        "pretrain",
        help="self-supervised pretraining of a backbone on unlabelled images (SimCLR, MPCS)",
        description="Pretrain a backbone without labels and write its encoder for skdfl embed / BackboneEmbedder. "
        "Re-run the same command to resume after an interruption.",
    )
    methods = p.add_subparsers(dest="method", required=True)

    simclr = methods.add_parser(
        "simclr", help="two augmentations of one patch are positives (Ciga et al.)",
        description="SimCLR: DATA is a folder of images (recursive), a .txt list of paths, or a .csv/.parquet "
        "table (--image-col; several columns are pooled).",
    )  # fmt: skip
    simclr.add_argument("--data", required=True, help="folder, .txt list, or .csv/.parquet table of image paths")
    simclr.add_argument("--image-col", default=None, help="table column(s) of image paths, comma separated")
    _common_arguments(simclr, temperature=0.5, batch_size=64)

    mpcs = methods.add_parser(
        "mpcs", help="one sample at two magnifications are positives (Chhipa et al.)",
        description="MPCS: DATA is a .csv/.parquet table with one row per image and columns path, "
        "magnification and group (the sample / patient), or with --centre-cols one row per tissue centre and "
        "one path column per magnification (pairs of the exact same tissue).",
    )  # fmt: skip
    mpcs.add_argument("--data", required=True, help=".csv or .parquet table")
    mpcs.add_argument("--magnification-col", default="magnification")
    mpcs.add_argument("--group-col", default="group", help="column of the sample / patient id")
    mpcs.add_argument("--centre-cols", default=None,
                      help="comma separated path columns, one per magnification, one row per centre")
    mpcs.add_argument("--pair-strategy", choices=("fixed", "ordered", "random"), default="ordered")
    mpcs.add_argument("--fixed-pair", default="200X,400X", help="FIRST,SECOND magnifications of --pair-strategy fixed")
    mpcs.add_argument("--pair-table", default=None,
                      help="FIRST:SECOND,... for --pair-strategy ordered (default 40X:100X,100X:200X,200X:400X,400X:200X)")
    _common_arguments(mpcs, temperature=0.1, batch_size=32)
    p.set_defaults(func=run_pretrain_command)
    return p


def _mpcs_input(args):
    import pandas as pd

    from ..datasets import load_image_list

    if args.centre_cols:
        return load_image_list(args.data, _csv(args.centre_cols))
    source = Path(args.data)
    table = pd.read_parquet(source) if source.suffix.lower() == ".parquet" else pd.read_csv(source)
    missing = [c for c in (args.magnification_col, args.group_col) if c not in table.columns]
    if missing:
        raise ValueError(
            f"{source}: no column(s) {missing} (columns: {list(table.columns)}); set --magnification-col / "
            "--group-col, or --centre-cols for one row per tissue centre"
        )
    paths = load_image_list(source, ["path"])["path"]
    return pd.DataFrame({"path": paths, "magnification": table[args.magnification_col].to_numpy(),
                         "group": table[args.group_col].to_numpy()}, index=table.index)  # fmt: skip


def run_pretrain_command(args: argparse.Namespace) -> int:
    """Run ``skdfl pretrain``; returns 0 on success, 2 on a usage or data error (message on stderr)."""
    from ..datasets import load_image_list
    from ..pretrain import MPCSPretrainer, SimCLRPretrainer

    out = Path(args.out)
    checkpoint_dir = args.checkpoint_dir or str(out.with_name(out.stem + "_checkpoint"))
    common = dict(
        backbone=args.backbone, pretrained=args.pretrained, checkpoint_path=args.init_checkpoint,
        image_size=args.image_size, batch_size=args.batch_size, max_epochs=args.epochs, lr=args.lr,
        temperature=args.temperature, optimizer=args.optimizer, num_workers=args.num_workers, device=args.device,
        precision=args.precision, random_state=args.seed, checkpoint_dir=checkpoint_dir, verbose=0 if args.quiet else 1,
    )  # fmt: skip
    try:
        if out.suffix != ".safetensors":
            raise ValueError(f"--out must end in .safetensors, got {out}")
        if args.method == "simclr":
            X = load_image_list(args.data, _csv(args.image_col))
            pretrainer = SimCLRPretrainer(**common)
        else:
            X = _mpcs_input(args)
            pretrainer = MPCSPretrainer(
                **common, pair_strategy=args.pair_strategy, fixed_pair=tuple(_csv(args.fixed_pair) or ()),
                pair_table=_pair_table(args.pair_table),
            )  # fmt: skip
        pretrainer.fit(X)
        path = pretrainer.save_backbone(out)
    except (OSError, ValueError, TypeError, RuntimeError, ImportError) as exc:
        print(f"skdfl pretrain {args.method}: error: {exc}", file=sys.stderr)
        return 2
    print(
        f"{path}: {'SimCLR' if args.method == 'simclr' else 'MPCS'} encoder, {pretrainer.embedding_dim_}-d, {pretrainer.n_iter_} epochs "
        f"(final loss {pretrainer.loss_curve_[-1]:.4f}, {pretrainer.resumed_from_epoch_} resumed); "
        f"embed with: skdfl embed INPUT STORE --backbone {args.backbone} --checkpoint {path}"
    )
    return 0
