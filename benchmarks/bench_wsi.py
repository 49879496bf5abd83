"""Slide-region reading: ``skdfl.wsi`` regions vs the same windows read with tiffslide directly.

For each real slide in ``wsi_small`` the tissue tiles at x20 / 224 px are read as the embedder reads them
(``skdfl.io.read_image(region)``: per-thread handle lookup, level choice, padding, antialiased resampling
to 224 px) for the x20 view alone and for x20 + x5. The ceiling reads exactly the same pyramid windows
(level, location, size) with one open ``tiffslide.TiffSlide`` and ``read_region(..., as_array=True)``,
nothing else. Both sides run interleaved in one process; the ratio is skdfl throughput / ceiling
throughput (goal >= 0.8). The CMU slide has one level (x5 = a 896 px level-0 window downsampled 4x); the
TCGA slide has two levels and no recorded resolution (read with ``base_magnification=20``; its x5 is a
448 px window of the 2x level, downsampled 2x).
"""

from __future__ import annotations

import math
import time

import _common as C
import numpy as np
import tiffslide

from skdfl.io import read_image
from skdfl.wsi import open_slide, regions, tile

SLIDES = {
    "CMU-1-Small-Region.svs": {"label": "CMU-1 (1 level, JPEG, AppMag 20)", "base_magnification": None},
    "TCGA-CR-7395-01A-01-TS1.svs": {"label": "TCGA-CR-7395 (2 levels, J2K, no MPP)", "base_magnification": 20},
}
VIEWS = {"x20": [20], "x20+x5": [20, 5]}
SIZE = 224


def windows(column) -> list[tuple]:
    """(level-0 location, level, size) tiffslide needs for the window each region reads."""
    out = []
    for region in column:
        slide = open_slide(region.slide)
        downsample = region.downsample()
        level = slide.best_level(downsample)
        d = slide.level_downsamples[level]
        read = max(1, round(SIZE * downsample / d))
        left = math.floor(region.x / d - read / 2 + 0.5)
        top = math.floor(region.y / d - read / 2 + 0.5)
        out.append(((math.ceil(left * d), math.ceil(top * d)), level, (read, read)))
    return out


def main() -> None:
    p = C.parser("wsi", __doc__.splitlines()[0])
    p.add_argument("--tiles", type=int, default=64, help="tiles per slide (evenly spaced over the tissue)")
    p.add_argument("--repeats", type=int, default=5)
    args = p.parse_args()
    if args.quick:
        args.tiles, args.repeats = 24, 3
    root = C.data_root(args) / "wsi_small"
    start = time.perf_counter()
    results, rows = [], []
    for name, spec in SLIDES.items():
        path = str(root / name)
        base = spec["base_magnification"]
        tiles = tile(path, magnification=20, size=SIZE, base_magnification=base)
        tiles = tiles.iloc[np.linspace(0, len(tiles) - 1, min(args.tiles, len(tiles))).astype(int)]
        columns = {m: regions(tiles, magnification=m, size=SIZE, base_magnification=base) for m in (20, 5)}
        handle = tiffslide.TiffSlide(path)
        for views, mags in VIEWS.items():
            cells = [r for m in mags for r in columns[m]]
            plan = [w for m in mags for w in windows(columns[m])]

            def skdfl_side(cells=cells):
                for region in cells:
                    read_image(region)

            def ceiling(plan=plan, handle=handle):
                for location, level, size in plan:
                    handle.read_region(location, level, size, as_array=True)

            times = C.interleaved({"skdfl": skdfl_side, "tiffslide": ceiling}, repeats=args.repeats)
            n = len(tiles)
            skdfl_rate = n / float(np.median(times["skdfl"]))
            ceiling_rate = n / float(np.median(times["tiffslide"]))
            ratio = 1.0 / C.median_ratio(times["skdfl"], times["tiffslide"])
            results.append({
                "slide": name, "views": views, "tiles": n, "skdfl_samples_per_s": skdfl_rate,
                "tiffslide_samples_per_s": ceiling_rate, "ratio": ratio,
                "times_s": {k: [round(t, 4) for t in v] for k, v in times.items()},
                "windows": sorted({f"level {lv}: {s[0]} px" for _, lv, s in plan}),
            })
            rows.append(f"| {spec['label']} | {views} | {n} | {skdfl_rate:.1f} | {ceiling_rate:.1f} | {ratio:.2f} |")
            print(rows[-1], flush=True)
        handle.close()
    table = "\n".join([
        "| slide | views | samples | skdfl samples/s | tiffslide samples/s (ceiling) | ratio |",
        "|---|---|---|---|---|---|",
        *rows,
    ])
    print("\n" + table)
    C.write_result(args, "wsi", config={"size": SIZE, "tiles": args.tiles, "repeats": args.repeats},
                   results=results, tables=[table], device="cpu", seconds=time.perf_counter() - start)


if __name__ == "__main__":
    main()
