"""Small pyramidal TIFF slides with known content at known places, written with tifffile for the wsi tests.

The "tissue" is drawn at 20x (0.5 um/px), 768 x 512 px:

* glass (near-white, unsaturated) everywhere except the tissue block ``[64, 448) x [64, 448)``;
* the tissue block is pink with a fixed pseudo-random texture (so embeddings of different places differ);
* markers centred on ``CENTRE = (256, 256)``: a red 32 x 32 square on it, blue 32 x 32 squares 128 px left
  and right of it, a green one 128 px below it.

At x20 a 96 px region around ``CENTRE`` shows the whole red square and no other marker; at x5 (4x wider)
the red square is 8 x 8 px in its middle and the blue ones sit 32 px left and right of the middle.
The 40x slide is the same tissue with every pixel doubled (so its level-0 coordinates are twice the 20x
ones and its 2x level *is* the 20x image).
"""

from __future__ import annotations

import numpy as np
import tifffile

CENTRE = (256, 256)
SQUARE = 32
OFFSET = 128
TISSUE_BOX = (64, 64, 448, 448)  # x0, y0, x1, y1 at 20x
WIDTH, HEIGHT = 768, 512
GLASS = (242, 242, 240)
RED, BLUE, GREEN = (220, 30, 30), (30, 30, 220), (30, 200, 30)


def _square(img, cx, cy, color, side=SQUARE):
    img[cy - side // 2 : cy + side // 2, cx - side // 2 : cx + side // 2] = color


def tissue_20x(seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    img = np.empty((HEIGHT, WIDTH, 3), dtype=np.uint8)
    img[...] = GLASS
    x0, y0, x1, y1 = TISSUE_BOX
    texture = rng.integers(-40, 41, size=(y1 - y0, x1 - x0, 3))
    img[y0:y1, x0:x1] = np.clip(np.array([200, 110, 170]) + texture, 0, 255)
    cx, cy = CENTRE
    _square(img, cx, cy, RED)
    _square(img, cx - OFFSET, cy, BLUE)
    _square(img, cx + OFFSET, cy, BLUE)
    _square(img, cx, cy + OFFSET, GREEN)
    return img


def box_downsample(img: np.ndarray, factor: int) -> np.ndarray:
    """Mean of ``factor x factor`` blocks, rounded: how the test pyramids' levels are made."""
    if factor == 1:
        return img
    h, w = img.shape[0] // factor, img.shape[1] // factor
    blocks = img[: h * factor, : w * factor].reshape(h, factor, w, factor, 3).astype(np.float64)
    return np.rint(blocks.mean(axis=(1, 3))).astype(np.uint8)


def upsample(img: np.ndarray, factor: int) -> np.ndarray:
    return np.repeat(np.repeat(img, factor, axis=0), factor, axis=1)


def write_slide(path, level0: np.ndarray, *, factors=(1,), mpp=None, tile=64) -> str:
    """A tiled, zlib-compressed pyramidal TIFF with levels ``level0`` box-downsampled by ``factors``.

    ``mpp`` (um per level-0 pixel) goes into the resolution tags; ``None`` writes no resolution.
    """
    with tifffile.TiffWriter(path) as writer:
        for k, factor in enumerate(factors):
            options = dict(tile=(tile, tile), photometric="rgb", compression="zlib")
            if mpp is not None:
                per_cm = 1e4 / (mpp * factor)
                options.update(resolution=(per_cm, per_cm), resolutionunit="CENTIMETER")
            if k:
                options["subfiletype"] = 1
            writer.write(box_downsample(level0, factor), **options)
    return str(path)
