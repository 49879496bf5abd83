"""``skdfl tile``: :func:`skdfl.wsi.tile` from the command line, writing a tiles CSV (slide, x, y)."""

from __future__ import annotations

import argparse

__all__ = ["add_tile_parser", "run_tile_command"]


def add_resolution_arguments(p: argparse.ArgumentParser) -> None:
    """``--base-magnification`` / ``--base-mpp`` / ``--backend``, shared by the slide commands."""
    from ..wsi import BACKENDS

    base = p.add_mutually_exclusive_group()
    base.add_argument("--base-magnification", type=float, default=None,
                      help="objective of level 0, for slides that do not record it (e.g. 40)")
    base.add_argument("--base-mpp", type=float, default=None,
                      help="micrometres per level-0 pixel, for slides that do not record it (e.g. 0.25)")
    p.add_argument("--backend", choices=BACKENDS, default="tiffslide", help="slide reader")


def add_tile_parser(subparsers) -> argparse.ArgumentParser:
    """Register ``skdfl tile`` on an ``argparse`` subparsers object."""
    p = subparsers.add_parser(
        "tile",
        help="tile whole-slide images: a CSV of level-0 tile centres on tissue (slide, x, y)",
        description="Lay a regular grid of SIZE px tiles at the given magnification over each slide, keep "
        "the tiles that are at least --min-tissue tissue (Otsu on the saturation of a thumbnail), and write "
        "their level-0 centres to OUT as a CSV with columns slide, x, y. Feed it to `skdfl embed --views "
        "x20,x5` or to skdfl.wsi.regions().",
    )
    p.add_argument("slides", nargs="+", metavar="SLIDE", help="slide file(s): SVS, pyramidal TIFF, NDPI, ...")
    p.add_argument("--out", required=True, help="CSV file to write")
    res = p.add_mutually_exclusive_group()
    res.add_argument("--magnification", type=float, default=20.0, help="objective magnification of the grid")
    res.add_argument("--mpp", type=float, default=None, help="micrometres per pixel of the grid instead")
    p.add_argument("--size", type=int, default=224, help="tile side in pixels at that resolution")
    p.add_argument("--stride", type=int, default=None, help="pixels between centres (default: --size)")
    p.add_argument("--min-tissue", type=float, default=0.5, help="minimum tissue fraction of a kept tile")
    p.add_argument("--all", action="store_true", help="keep every tile of the grid (no tissue filter)")
    add_resolution_arguments(p)
    p.set_defaults(func=run_tile_command)
    return p


def run_tile_command(args: argparse.Namespace) -> int:
    """Run ``skdfl tile``; returns 0. Data errors propagate to :func:`skdfl.cli.main`."""
    from ..storage import atomic_write
    from ..wsi import tile

    tiles = tile(
        args.slides, magnification=args.magnification, mpp=args.mpp, size=args.size, stride=args.stride,
        tissue=not args.all, min_tissue=args.min_tissue, base_magnification=args.base_magnification,
        base_mpp=args.base_mpp, backend=args.backend,
    )
    atomic_write(args.out, tiles.to_csv(index=False).encode())
    per_slide = tiles.groupby("slide", sort=False).size()
    for slide in args.slides:
        print(f"{slide}: {int(per_slide.get(str(slide), 0))} tiles")
    print(f"wrote {len(tiles)} tile centres to {args.out}")
    return 0
