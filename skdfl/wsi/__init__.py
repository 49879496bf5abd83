"""Whole-slide images: multi-zoom regions straight from the slide, tiling, annotations, heatmaps.

The paper's multi-zoom sample (an x20 patch and the x5 patch around the same centre) from a slide::

    from skdfl.wsi import tile, regions
    tiles = tile("slide.svs", magnification=20, size=224)           # slide, x, y (tissue only)
    X = tiles.assign(x20=regions(tiles, magnification=20, size=224),
                     x5=regions(tiles, magnification=5, size=224))
    Z = BackboneEmbedder(views=["x20", "x5"]).fit_transform(X)       # [x20_rgb | x5_rgb]

Regions
    A :class:`Region` is a centre ``(x, y)`` in level-0 pixels, a resolution (``magnification`` or
    ``mpp``) and an output ``size``. It reads nothing until embedded; then it takes the coarsest pyramid
    level that is not coarser than asked (within :data:`LEVEL_TOLERANCE`), reads the window covering the
    region there and resamples it to ``size`` (antialiased; ``"area"`` averaging by default). A slide with
    one level gives x5 as a 4x larger level-0 window, downsampled. Pixels outside the slide are
    :data:`PAD_COLOR` (white, like glass), never an error. Regions are :class:`skdfl.io.ImageSource`
    objects: the embedder, the embedding cache (keyed by slide identity + centre + resolution + size) and
    :func:`skdfl.storage.extract_to_store` take them like image paths; they pickle as path + numbers.
Resolution
    ``mpp = 10 / magnification`` (:data:`MPP_TIMES_MAGNIFICATION`: x40 = 0.25 um/px, x20 = 0.5, x5 = 2). A
    magnification is located with the slide's recorded objective power (else ``10 / mpp``), an mpp with its
    recorded pixel size (else ``10 / objective``). A slide recording neither raises
    :class:`MissingResolutionError` naming it, until ``base_magnification=`` or ``base_mpp=`` says what
    level 0 is.
Backends
    ``"tiffslide"`` (default; pure PyPI wheels, JPEG 2000 through imagecodecs) or ``"openslide"``
    (``pip install skdfl[openslide]``). Handles are opened on first use and cached per thread and per
    process (:func:`open_slide`), so DataLoader workers and Dask workers open their own.
Tissue
    :func:`tile` keeps grid tiles whose footprint is at least ``min_tissue`` tissue, tissue being the
    pixels of a thumbnail whose HSV saturation exceeds its Otsu threshold (:func:`tissue_mask`).
"""

from ._annotations import read_annotations
from ._heatmap import heatmap, tile_grid
from ._reader import (
    BACKENDS,
    LEVEL_TOLERANCE,
    MPP_TIMES_MAGNIFICATION,
    PAD_COLOR,
    MissingResolutionError,
    Slide,
    SlideReadError,
    open_slide,
    resample,
)
from ._region import Region, parse_view, region_views, regions
from ._tiling import tile, tissue_mask

__all__ = [
    "BACKENDS",
    "LEVEL_TOLERANCE",
    "MPP_TIMES_MAGNIFICATION",
    "PAD_COLOR",
    "MissingResolutionError",
    "Region",
    "Slide",
    "SlideReadError",
    "heatmap",
    "open_slide",
    "parse_view",
    "read_annotations",
    "region_views",
    "regions",
    "resample",
    "tile",
    "tile_grid",
    "tissue_mask",
]
