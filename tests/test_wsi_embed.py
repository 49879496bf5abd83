"""Slide regions through BackboneEmbedder: same pixels as pre-cut tiles -> same embeddings; workers; cache;
and the two real slides of ../shared/data/wsi_small end to end."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from wsi_slides import CENTRE, box_downsample, tissue_20x, upsample, write_slide

from skdfl import BackboneEmbedder, EmbeddingCache
from skdfl.datasets import data_dir
from skdfl.storage import extract_to_store
from skdfl.wsi import MissingResolutionError, Region, heatmap, open_slide, regions, tile

pytestmark = pytest.mark.usefixtures("one_torch_thread")

DATA = data_dir()
WSI = DATA / "wsi_small"


def tiny_embedder(**kwargs):
    params = dict(backbone="resnet18", pretrained=False, image_size=64, device="cpu", precision="fp32",
                  batch_size=8, verbose=0)
    params.update(kwargs)
    return BackboneEmbedder(**params)


@pytest.fixture(scope="module")
def tissue():
    return tissue_20x()


@pytest.fixture(scope="module")
def slides(tmp_path_factory, tissue):
    folder = tmp_path_factory.mktemp("embed_slides")
    return {
        "20x": write_slide(folder / "s20.tif", tissue, mpp=0.5),
        "40x": write_slide(folder / "s40.tif", upsample(tissue, 2), factors=(1, 2, 4), mpp=0.25),
    }


@pytest.fixture(scope="module")
def centres():
    # inside the tissue, on the markers, at an edge (x5 context padded) and in the glass
    return pd.DataFrame({"x": [CENTRE[0], 120, 400, 32, 700], "y": [CENTRE[1], 150, 380, 32, 480]})


def precut(img, cx, cy, side):
    """What a user would cut from the 20x image: the window around the centre, white outside."""
    padded = np.pad(img, ((side, side), (side, side), (0, 0)), constant_values=255)
    return padded[cy + side - side // 2 : cy + 2 * side - side // 2, cx + side - side // 2 : cx + 2 * side - side // 2]


def test_multizoom_embedding_of_regions_equals_that_of_precut_tiles(slides, tissue, centres):
    df = centres.assign(slide=slides["20x"])
    X_regions = df.assign(x20=regions(df, magnification=20, size=64), x5=regions(df, magnification=5, size=64))
    x20_tiles = [precut(tissue, x, y, 64) for x, y in zip(df.x, df.y, strict=True)]
    # x5 of a one-level 20x slide: the 4x wider window of level 0, box-averaged 4x4 (Pillow's reduce)
    x5_tiles = [np.asarray(Image.fromarray(precut(tissue, x, y, 256)).reduce(4)) for x, y in zip(df.x, df.y, strict=True)]
    for region, expected in zip(X_regions["x5"], x5_tiles, strict=True):
        np.testing.assert_array_equal(region.read_rgb(), expected)
    X_tiles = pd.DataFrame({"x20": x20_tiles, "x5": x5_tiles})
    embedder = tiny_embedder(views=["x20", "x5"]).fit(X_regions)
    from_slide = embedder.transform(X_regions)
    from_tiles = embedder.transform(X_tiles)
    assert from_slide.shape == (len(df), 2 * embedder.embedding_dim_)
    np.testing.assert_allclose(from_slide, from_tiles, rtol=1e-5, atol=1e-6)
    # the x5 half is not the x20 half: the views carry different pixels
    dim = embedder.embedding_dim_
    assert not np.allclose(from_slide[:, :dim], from_slide[:, dim:], atol=1e-3)


def test_regions_of_a_40x_pyramid_equal_tiles_cut_from_the_20x_image(slides, tissue, centres):
    # 40x scan: x20 is its 2x level, x10 its 4x level; the tiles are cut from the 20x image independently
    df = centres.assign(slide=slides["40x"], x=2 * centres.x, y=2 * centres.y)
    X = df.assign(x20=regions(df, magnification=20, size=64), x10=regions(df, magnification=10, size=64))
    x20 = [precut(tissue, x, y, 64) for x, y in zip(centres.x, centres.y, strict=True)]
    x10 = [box_downsample(precut(tissue, x, y, 128), 2) for x, y in zip(centres.x, centres.y, strict=True)]
    embedder = tiny_embedder(views=["x20", "x10"]).fit(X)
    np.testing.assert_allclose(
        embedder.transform(X), embedder.transform(pd.DataFrame({"x20": x20, "x10": x10})), rtol=1e-5, atol=1e-6
    )


def test_regions_with_two_dataloader_workers_and_in_a_store(slides, centres, tmp_path):
    df = centres.assign(slide=slides["40x"], x=2 * centres.x, y=2 * centres.y)
    X = pd.DataFrame({"x20": regions(df, magnification=20, size=64), "x5": regions(df, magnification=5, size=64)})
    serial = tiny_embedder(views=["x20", "x5"]).fit(X)
    expected = serial.transform(X)
    workers = tiny_embedder(views=["x20", "x5"], num_workers=2, batch_size=2).fit(X)
    np.testing.assert_allclose(workers.transform(X), expected, rtol=1e-5, atol=1e-6)
    store = extract_to_store(X, tmp_path / "store", serial, chunk_size=2, verbose=0)
    np.testing.assert_allclose(np.asarray(store.embeddings), expected, rtol=1e-5, atol=1e-6)


def test_regions_fitted_on_the_device_with_decoding_threads(slides, centres):
    # decode="device" with loader threads (the GPU defaults), here on the CPU: regions already have the input
    # size, so the device geometry leaves their pixels as they are and the embeddings match the CPU path.
    df = centres.assign(slide=slides["40x"], x=2 * centres.x, y=2 * centres.y)
    X = pd.DataFrame({"x20": regions(df, magnification=20, size=64), "x5": regions(df, magnification=5, size=64)})
    expected = tiny_embedder(views=["x20", "x5"]).fit(X).transform(X)
    on_device = tiny_embedder(views=["x20", "x5"], decode="device", worker_type="thread", num_workers=2,
                              batch_size=2, colors=["rgb", "gray"]).fit(X)  # fmt: skip
    got = on_device.transform(X)
    cpu_gray = tiny_embedder(views=["x20", "x5"], colors=["rgb", "gray"]).fit(X).transform(X)
    np.testing.assert_allclose(got, cpu_gray, rtol=1e-4, atol=1e-5)
    dim = on_device.embedding_dim_
    np.testing.assert_allclose(got[:, :dim], expected[:, :dim], rtol=1e-4, atol=1e-5)  # x20 rgb


def test_embedding_cache_keys_regions_without_reading_them_again(slides, centres, tmp_path, monkeypatch):
    df = centres.assign(slide=slides["40x"], x=2 * centres.x, y=2 * centres.y)
    X = pd.DataFrame({"x20": regions(df, magnification=20, size=64), "x5": regions(df, magnification=5, size=64)})
    cache = EmbeddingCache(tmp_path / "cache")
    embedder = tiny_embedder(views=["x20", "x5"], cache=cache).fit(X)
    first = embedder.transform(X)
    reads = []
    original = Region.read_rgb
    monkeypatch.setattr(Region, "read_rgb", lambda self: reads.append(self) or original(self))
    again = embedder.transform(X)
    assert reads == []  # every (region, view) came from the cache
    np.testing.assert_array_equal(again, first)
    # the same pixels asked for by mpp hit the same entries; a moved centre misses
    by_mpp = pd.DataFrame({"x20": regions(df, mpp=0.5, size=64), "x5": regions(df, mpp=2.0, size=64)})
    np.testing.assert_array_equal(embedder.transform(by_mpp), first)
    assert reads == []
    moved = pd.DataFrame({"x20": regions(df.assign(x=df.x + 8), magnification=20, size=64),
                          "x5": regions(df, magnification=5, size=64)})
    embedder.transform(moved)
    assert len(reads) == len(df)


# ------------------------------------------------------------------------------------- real slides
@pytest.mark.data
def test_real_slides_tile_embed_multizoom_and_heatmap(tmp_path):
    cmu, tcga = WSI / "CMU-1-Small-Region.svs", WSI / "TCGA-CR-7395-01A-01-TS1.svs"
    if not (cmu.is_file() and tcga.is_file()):
        pytest.skip(f"real slides not found in {WSI} (set SKDFL_DATA_DIR to the shared data folder)")
    # the TCGA slide (JPEG 2000 tiles) records no resolution: the error says how to supply it
    with pytest.raises(MissingResolutionError, match="TCGA-CR-7395.*base_magnification="):
        tile(tcga, magnification=20, size=224)
    # CMU records AppMag 20 and MPP 0.499: a magnification request uses the objective, an mpp request the MPP
    handle = open_slide(cmu)
    assert handle.downsample_for(magnification=20) == 1.0
    assert handle.downsample_for(mpp=0.499) == pytest.approx(1.0)
    assert handle.level_count == 1 and open_slide(tcga).level_count == 2
    frames = {
        "cmu": tile(cmu, magnification=20, size=224),
        "tcga": tile(tcga, magnification=20, size=224, base_magnification=20),
    }
    for name, tiles in frames.items():
        assert len(tiles) > 10, name
        base = 20 if name == "tcga" else None
        few = tiles.iloc[:: max(1, len(tiles) // 12)].reset_index(drop=True)
        X = few.assign(
            x20=regions(few, magnification=20, size=224, base_magnification=base),
            x5=regions(few, magnification=5, size=224, base_magnification=base),
        )
        pixels = X["x5"].iloc[0].read_rgb()
        assert pixels.shape == (224, 224, 3) and pixels.std() > 5  # real, varied tissue, not padding
        # toy labels: is the x20 patch darker than the median (more nuclei)? Enough to fit a pipeline
        darkness = np.array([r.read_rgb().mean() for r in X["x20"]])
        y = darkness < np.median(darkness)
        model = make_pipeline(tiny_embedder(views=["x20", "x5"], image_size=32), LogisticRegression(max_iter=200))
        model.fit(X[["x20", "x5"]], y)
        out = tmp_path / f"{name}.png"
        grid = heatmap(model, X, out=out)
        assert np.isfinite(grid).sum() == len(few)
        assert ((grid[np.isfinite(grid)] >= 0) & (grid[np.isfinite(grid)] <= 1)).all()
        assert Image.open(out).size[0] > 500
