"""``skdfl embed``: :func:`skdfl.storage.extract_to_store` from the command line.

Re-running the same command after an interruption (even ``kill -9``) resumes it.
"""

from __future__ import annotations

import argparse
import sys
import time

__all__ = ["add_embed_parser", "run_embed_command"]


def _csv(value: str | None) -> list[str] | None:
    return None if value is None else [v.strip() for v in value.split(",") if v.strip()]


def _workers(value: str) -> int | str:
    if value == "auto":
        return value
    try:
        workers = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected 'auto' or a number of workers >= 0, got {value!r}") from None
    if workers < 0:
        raise argparse.ArgumentTypeError(f"expected 'auto' or a number of workers >= 0, got {value!r}")
    return workers


def add_embed_parser(subparsers) -> argparse.ArgumentParser:
    """Register ``skdfl embed`` on an ``argparse`` sub-parser collection."""
    from .._device import PRECISIONS
    from ..embedder import DECODE_MODES, WORKER_TYPES
    from ..storage import DTYPES
    from ..transforms import RESIZE_POLICIES
    from ._tile import add_resolution_arguments

    p = subparsers.add_parser(
        "embed",
        help="extract embeddings of many images to an on-disk store (memory-bounded, resumable, Dask)",
        description="Embed every image of INPUT with a frozen backbone into the store folder OUT: an "
        "embeddings.npy (read back memory-mapped with skdfl.load_store) plus per-chunk markers. "
        "Images are read lazily; memory does not grow with the number of images. Re-run the same command "
        "to resume an interrupted extraction; finished chunks are kept.",
    )
    p.add_argument("input", help="folder of images (recursive), a .csv/.parquet/.txt list of image paths, or "
                   "with --views a tiles CSV (slide, x, y) as `skdfl tile` writes it")
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
    p.add_argument("--num-workers", type=_workers, default="auto",
                   help="workers decoding images; 'auto' (default): every core but one on a GPU, 0 on a 2-core CPU")
    p.add_argument("--worker-type", choices=WORKER_TYPES, default="auto",
                   help="threads or processes; 'auto': threads on a GPU, processes on a CPU")
    p.add_argument("--decode", choices=DECODE_MODES, default="auto",
                   help="'device': decode JPEGs (nvJPEG) and resize on the GPU; 'auto': on CUDA only")
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
    slides = p.add_argument_group("whole-slide regions (INPUT is a tiles CSV)")
    slides.add_argument("--views", default=None,
                        help="comma separated magnifications read around each tile centre, e.g. x20,x5 "
                        "(or mpp0.5): the paper's multi-zoom sample")
    slides.add_argument("--region-size", type=int, default=224, help="pixels of each region (default 224)")
    add_resolution_arguments(slides)
    p.set_defaults(func=run_embed_command)
    return p


def _slide_regions(args: argparse.Namespace, views: list[str]):
    """The multi-zoom ``X`` of a tiles CSV: one lazy region column per view, around each tile centre."""
    import pandas as pd

    from ..wsi import region_views

    tiles = pd.read_csv(args.input)
    X = region_views(tiles, views, size=args.region_size, base_magnification=args.base_magnification,
                     base_mpp=args.base_mpp, backend=args.backend)
    return X[views]


def run_embed_command(args: argparse.Namespace) -> int:
    """Run ``skdfl embed``; returns 0 on success, 2 on a usage or data error (message on stderr)."""
    from ..datasets import load_image_list
    from ..embedder import BackboneEmbedder
    from ..storage import extract_to_store

    try:
        views = _csv(args.views)
        if views:
            X = _slide_regions(args, views)
        else:
            X = load_image_list(args.input, _csv(args.image_col))
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
            worker_type=args.worker_type,
            decode=args.decode,
            device=args.device,
            precision=args.precision,
            random_state=args.seed,
            views=views,
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
