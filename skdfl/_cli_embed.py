"""``skdfl embed``: extract the embeddings of many images into an on-disk store, resumably.

``skdfl.cli`` registers it with :func:`add_embed_parser`; ``func`` takes the parsed arguments and returns
an exit code. Re-running the same command after an interruption (even ``kill -9``) resumes it.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

__all__ = ["add_embed_parser", "embed_command", "read_image_list"]

_TABLE_SUFFIXES = {".csv", ".parquet", ".txt"}


def read_image_list(source: str | os.PathLike, image_cols: list[str] | None = None):
    """Images to embed as a DataFrame, one column per source, without opening any image.

    ``source`` is a folder (every image below it, recursively, sorted; source ``"image"``), a ``.csv`` or
    ``.parquet`` table (``image_cols``, default ``["path"]``; relative paths are relative to the table's
    folder) or a ``.txt`` file with one path per line.
    """
    import pandas as pd

    from .datasets import IMAGE_SUFFIXES

    source = Path(source)
    if source.is_dir():
        paths = sorted(str(p) for p in source.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
        if not paths:
            raise FileNotFoundError(f"no image files ({', '.join(sorted(IMAGE_SUFFIXES))}) under {source}")
        return pd.DataFrame({"image": paths})
    if not source.is_file():
        raise FileNotFoundError(f"input not found: {source}")
    suffix = source.suffix.lower()
    if suffix not in _TABLE_SUFFIXES:
        raise ValueError(f"input must be a folder, a .csv, .parquet or .txt file, got {source}")
    if suffix == ".txt":
        lines = [line.strip() for line in source.read_text().splitlines()]
        table, cols = pd.DataFrame({"image": [line for line in lines if line]}), ["image"]
    else:
        table = pd.read_csv(source) if suffix == ".csv" else pd.read_parquet(source)
        cols = image_cols or ["path"]
        missing = [c for c in cols if c not in table.columns]
        if missing:
            raise ValueError(
                f"{source}: no column(s) {missing} (columns: {list(table.columns)}); choose with --image-col"
            )
    if len(table) == 0:
        raise ValueError(f"{source}: no images listed")
    base = source.parent
    return pd.DataFrame(
        {c: [p if os.path.isabs(p) else str(base / p) for p in table[c].astype(str)] for c in cols},
        index=table.index,
    )


def _csv(value: str | None) -> list[str] | None:
    return None if value is None else [v.strip() for v in value.split(",") if v.strip()]


def add_embed_parser(subparsers) -> argparse.ArgumentParser:
    """Register ``skdfl embed`` on an ``argparse`` sub-parser collection."""
    from ._device import PRECISIONS
    from .store import DTYPES
    from .transforms import RESIZE_POLICIES

    p = subparsers.add_parser(
        "embed",
        help="extract embeddings of many images to an on-disk store (memory-bounded, resumable, Dask)",
        description="Embed every image of INPUT with a frozen backbone into the store folder OUT: an "
        "embeddings.npy (read back memory-mapped with skdfl.store.load_store) plus per-chunk markers. "
        "Images are read lazily; memory does not grow with the number of images. Re-run the same command "
        "to resume an interrupted extraction; finished chunks are kept.",
    )
    p.add_argument("input", help="folder of images (recursive), or a .csv/.parquet/.txt list of image paths")
    p.add_argument("out", help="store folder to create or resume")
    p.add_argument("--image-col", default=None,
                   help="CSV/parquet column(s) of image paths, comma separated, one per source (default: path)")
    p.add_argument("--backbone", required=True, help="timm model or registry name")
    p.add_argument("--random-init", action="store_true", help="random weights (tests, baselines)")
    p.add_argument("--checkpoint", default=None, help="local weights file for --backbone")
    p.add_argument("--colors", default="rgb", help="comma separated: rgb,gray")
    p.add_argument("--image-size", type=int, default=None, help="backbone input size (default: its own)")
    p.add_argument("--resize", choices=RESIZE_POLICIES, default="pad")
    p.add_argument("--scale", type=float, default=None, help="fixed scale factor with --resize pad")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--num-workers", type=int, default=0, help="DataLoader processes decoding images")
    p.add_argument("--device", default="auto")
    p.add_argument("--precision", choices=PRECISIONS, default="auto")
    p.add_argument("--seed", type=int, default=0, help="seed of --random-init weights")
    p.add_argument("--chunk-size", type=int, default=4096, help="images per chunk (unit of resume)")
    p.add_argument("--dtype", choices=DTYPES, default="float32", help="storage type of the embeddings")
    p.add_argument("--overwrite", action="store_true", help="replace an existing store at OUT")
    p.add_argument("--no-resume", action="store_true", help="fail if OUT already holds a store")
    p.add_argument("--no-verify", action="store_true", help="do not re-check finished chunks when resuming")
    p.add_argument("--scheduler", default=None,
                   help="Dask scheduler address (tcp://host:8786): extract on its workers, one model each")
    p.add_argument("--write-on", choices=("workers", "client"), default="workers",
                   help="with --scheduler: workers write OUT (shared filesystem) or send rows back")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=embed_command)
    return p


def embed_command(args: argparse.Namespace) -> int:
    """Run ``skdfl embed``; returns 0 on success, 2 on a usage or data error (message on stderr)."""
    from .embedder import BackboneEmbedder
    from .store import extract_to_store

    try:
        X = read_image_list(args.input, _csv(args.image_col))
        embedder = BackboneEmbedder(
            args.backbone,
            pretrained=not args.random_init,
            checkpoint_path=args.checkpoint,
            colors=_csv(args.colors),
            image_size=args.image_size,
            resize=args.resize,
            scale=args.scale,
            batch_size=args.batch_size,
            num_workers=args.num_workers,
            device=args.device,
            precision=args.precision,
            random_state=args.seed,
            verbose=0,
        )
        client = None
        if args.scheduler:
            from distributed import Client

            client = Client(args.scheduler)
        start = time.perf_counter()
        try:
            store = extract_to_store(
                X, args.out, embedder, chunk_size=args.chunk_size, dtype=args.dtype, resume=not args.no_resume,
                overwrite=args.overwrite, verify=not args.no_verify, client=client, write_on=args.write_on,
                verbose=0 if args.quiet else 1,
            )
        finally:
            if client is not None:
                client.close()
    except (OSError, ValueError, TypeError, RuntimeError, ImportError) as exc:
        print(f"skdfl embed: error: {exc}", file=sys.stderr)
        return 2
    seconds = time.perf_counter() - start
    n, d = store.shape
    print(f"{store.path}: {n} x {d} {store.meta['dtype']} embeddings ({seconds:.1f} s)")
    return 0
