"""``skdfl heatmap``: a saved pipeline's class probability over a slide, as a PNG (:func:`skdfl.wsi.heatmap`)."""

from __future__ import annotations

import argparse

from ._tile import add_resolution_arguments

__all__ = ["add_heatmap_parser", "run_heatmap_command"]


def add_heatmap_parser(subparsers) -> argparse.ArgumentParser:
    """Register ``skdfl heatmap`` on an ``argparse`` subparsers object."""
    p = subparsers.add_parser(
        "heatmap",
        help="draw a fitted model's class probability over a whole-slide image (PNG)",
        description="Tile SLIDE (or take --tiles), build the view columns the model was fitted on (named "
        "x<magnification> or mpp<um/px>, e.g. x20 and x5: the regions around each tile centre), predict "
        "and draw P(class) over the slide thumbnail into OUT. MODEL is a pipeline saved with joblib (e.g. "
        "by `skdfl demo`); loading it runs pickle, so only load models you trust.",
    )
    p.add_argument("model", metavar="MODEL", help="fitted pipeline saved with joblib.dump")
    p.add_argument("slide", metavar="SLIDE", help="slide file")
    p.add_argument("--out", required=True, help="PNG file to write")
    p.add_argument("--views", default=None,
                   help="comma separated view columns, e.g. x20,x5 (default: the model's feature_names_in_)")
    p.add_argument("--size", type=int, default=224, help="region size in pixels of every view")
    p.add_argument("--tiles", default=None, help="tiles CSV (slide, x, y) instead of tiling SLIDE")
    p.add_argument("--stride", type=int, default=None, help="grid stride in pixels at the first view")
    p.add_argument("--class", dest="class_", default=None, help="class to map (default: the positive one)")
    p.add_argument("--csv", default=None, help="also write each tile's probability to this CSV")
    add_resolution_arguments(p)
    p.set_defaults(func=run_heatmap_command)
    return p


def run_heatmap_command(args: argparse.Namespace) -> int:
    """Run ``skdfl heatmap``; returns 0. Data errors propagate to :func:`skdfl.cli.main`."""
    import joblib
    import numpy as np
    import pandas as pd

    from ..storage import atomic_write
    from ..wsi import heatmap, parse_view, region_views, tile, tile_grid

    model = joblib.load(args.model)
    views = args.views.split(",") if args.views else [str(v) for v in getattr(model, "feature_names_in_", [])]
    if not views:
        raise ValueError(f"{args.model} records no input columns; pass --views (e.g. x20,x5)")
    base = dict(base_magnification=args.base_magnification, base_mpp=args.base_mpp)
    if args.tiles:
        tiles = pd.read_csv(args.tiles)
        tiles = tiles[tiles["slide"].astype(str) == str(args.slide)] if "slide" in tiles else tiles
        if tiles.empty:
            raise ValueError(f"{args.tiles} has no tile of {args.slide}")
    else:
        tiles = tile(args.slide, size=args.size, stride=args.stride, backend=args.backend,
                     **parse_view(views[0]), **base)
    X = region_views(tiles, views, size=args.size, backend=args.backend, **base)
    class_ = args.class_
    if class_ is not None:
        classes = [str(c) for c in getattr(model, "classes_", [])]
        class_ = model.classes_[classes.index(class_)] if class_ in classes else class_
    grid = heatmap(model, X, class_=class_, out=args.out)
    if args.csv:
        rows, cols, *_ = tile_grid(X)
        table = tiles[["slide", "x", "y"]].assign(probability=grid[rows, cols])
        atomic_write(args.csv, table.to_csv(index=False).encode())
    print(f"{args.slide}: {len(X)} tiles, mean probability {np.nanmean(grid):.3f}; wrote {args.out}")
    return 0
