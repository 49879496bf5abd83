"""skdfl.wsi on small pyramidal TIFFs written by the tests: levels, regions, padding, tiling, annotations."""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import pickle

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from wsi_slides import (
    BLUE,
    CENTRE,
    GLASS,
    GREEN,
    HEIGHT,
    OFFSET,
    RED,
    SQUARE,
    TISSUE_BOX,
    WIDTH,
    box_downsample,
    tissue_20x,
    upsample,
    write_slide,
)

from skdfl.io import ImageReadError, ImageSource, read_image
from skdfl.wsi import (
    PAD_COLOR,
    MissingResolutionError,
    Region,
    Slide,
    SlideReadError,
    heatmap,
    open_slide,
    read_annotations,
    regions,
    tile,
    tile_grid,
)


@pytest.fixture(scope="module")
def tissue():
    return tissue_20x()


@pytest.fixture(scope="module")
def slides(tmp_path_factory, tissue):
    """The same tissue as a 40x pyramid (1, 2, 4), a 20x single level, a 20x pyramid (1, 2), no MPP.

    (tifffile reads a generic TIFF pyramid only when each level halves the previous one.)
    """
    folder = tmp_path_factory.mktemp("slides")
    return {
        "40x": write_slide(folder / "s40.tif", upsample(tissue, 2), factors=(1, 2, 4), mpp=0.25),
        "20x": write_slide(folder / "s20.tif", tissue, factors=(1,), mpp=0.5),
        "20x_pyramid": write_slide(folder / "s20p.tif", tissue, factors=(1, 2), mpp=0.5),
        "no_mpp": write_slide(folder / "nompp.tif", tissue, factors=(1,), mpp=None),
    }


def crop(img, cx, cy, side):
    return img[cy - side // 2 : cy + side - side // 2, cx - side // 2 : cx + side - side // 2]


def count(img, color):
    return int(np.all(img == np.asarray(color, dtype=np.uint8), axis=-1).sum())


# ------------------------------------------------------------------------------------------- reader
def test_slide_metadata_levels_and_resolution(slides):
    s40 = Slide(slides["40x"])
    assert s40.dimensions == (2 * WIDTH, 2 * HEIGHT)
    assert s40.level_downsamples == pytest.approx((1.0, 2.0, 4.0))
    assert s40.mpp == pytest.approx(0.25)
    # magnification from mpp by the 10 / mpp convention; mpp requests divide pixel sizes
    assert s40.downsample_for(magnification=20) == pytest.approx(2.0)
    assert s40.downsample_for(magnification=5) == pytest.approx(8.0)
    assert s40.downsample_for(mpp=1.0) == pytest.approx(4.0)
    assert s40.downsample_for(magnification=20, base_magnification=20) == pytest.approx(1.0)
    assert s40.downsample_for(mpp=1.0, base_mpp=0.5) == pytest.approx(2.0)
    s40.close()


@pytest.mark.parametrize(
    ("downsample", "level"),
    [(1.0, 0), (1.9, 0), (2.0, 1), (2.015, 1), (3.5, 1), (3.99, 2), (4.0, 2), (16.0, 2), (0.5, 0)],
)
def test_best_level_is_the_coarsest_not_coarser_than_asked(slides, downsample, level):
    assert open_slide(slides["40x"]).best_level(downsample) == level


@pytest.mark.parametrize(
    ("slide", "magnification", "expected_level"),
    [("40x", 40, 0), ("40x", 20, 1), ("40x", 10, 2), ("40x", 5, 2), ("40x", 12, 1), ("20x", 5, 0), ("20x_pyramid", 5, 1)],
)
def test_region_reads_the_chosen_level(slides, monkeypatch, slide, magnification, expected_level):
    calls = []
    original = Slide.read_window

    def spy(self, level, *args, **kwargs):
        calls.append((level, args[2], args[3]))
        return original(self, level, *args, **kwargs)

    monkeypatch.setattr(Slide, "read_window", spy)
    centre = CENTRE if slide != "40x" else (2 * CENTRE[0], 2 * CENTRE[1])
    img = Region(slides[slide], *centre, magnification=magnification, size=64).read_rgb()
    assert img.shape == (64, 64, 3)
    level, width, height = calls[-1]
    assert level == expected_level
    # the window read covers the region's footprint at that level
    slide_handle = open_slide(slides[slide])
    footprint = 64 * slide_handle.downsample_for(magnification=magnification)
    assert width == height == round(footprint / slide_handle.level_downsamples[level])


@pytest.mark.parametrize("slide", ["40x", "20x", "20x_pyramid"])
def test_x20_and_x5_of_one_centre_show_the_patch_and_its_context(slides, tissue, slide):
    scale = 2 if slide == "40x" else 1
    cx, cy = CENTRE[0] * scale, CENTRE[1] * scale
    x20 = Region(slides[slide], cx, cy, magnification=20, size=96).read_rgb()
    x5 = Region(slides[slide], cx, cy, magnification=5, size=96).read_rgb()
    # x20: the 32 px red square fills the middle, no other marker in view; pixels are the tissue itself
    np.testing.assert_array_equal(x20, crop(tissue, *CENTRE, 96))
    assert count(x20, RED) == SQUARE * SQUARE
    assert count(x20, BLUE) == count(x20, GREEN) == 0
    np.testing.assert_array_equal(x20[48 - 16 : 48 + 16, 48 - 16 : 48 + 16], np.broadcast_to(RED, (32, 32, 3)))
    # x5: 4x wider around the same centre; the square is 8 px, the blue ones 32 px left and right
    assert count(x5, RED) == (SQUARE // 4) ** 2
    np.testing.assert_array_equal(x5[44:52, 44:52], np.broadcast_to(RED, (8, 8, 3)))
    for dx in (-OFFSET // 4, OFFSET // 4):
        np.testing.assert_array_equal(x5[44:52, 44 + dx : 52 + dx], np.broadcast_to(BLUE, (8, 8, 3)))
    np.testing.assert_array_equal(x5[44 + 32 : 52 + 32, 44:52], np.broadcast_to(GREEN, (8, 8, 3)))
    expected = box_downsample(crop(tissue, *CENTRE, 4 * 96), 4)
    assert np.abs(x5.astype(int) - expected).max() <= 1  # Pillow's box average rounds its own way


def test_regions_of_a_40x_and_a_20x_scan_of_one_tissue_are_the_same_pixels(slides):
    for magnification, size in ((20, 80), (5, 40)):
        a = Region(slides["40x"], 2 * 300, 2 * 200, magnification=magnification, size=size).read_rgb()
        b = Region(slides["20x_pyramid"], 300, 200, magnification=magnification, size=size).read_rgb()
        np.testing.assert_array_equal(a, b)


def test_mpp_request_equals_magnification_request(slides):
    a = Region(slides["40x"], 500, 500, magnification=20, size=64)
    b = Region(slides["40x"], 500, 500, mpp=0.5, size=64)
    np.testing.assert_array_equal(a.read_rgb(), b.read_rgb())
    assert a.content_key() == b.content_key()


def test_edge_regions_are_padded_with_the_documented_colour(slides, tissue):
    img = Region(slides["20x"], 0, 0, magnification=20, size=64).read_rgb()
    np.testing.assert_array_equal(img[:32, :], np.broadcast_to(PAD_COLOR, (32, 64, 3)))
    np.testing.assert_array_equal(img[:, :32], np.broadcast_to(PAD_COLOR, (64, 32, 3)))
    np.testing.assert_array_equal(img[32:, 32:], tissue[:32, :32])
    # bottom-right corner through a pyramid level, with a custom colour
    img = Region(slides["40x"], 2 * WIDTH, 2 * HEIGHT, magnification=10, size=32, pad_color=(0, 10, 20)).read_rgb()
    np.testing.assert_array_equal(img[16:, :], np.broadcast_to((0, 10, 20), (16, 32, 3)))
    np.testing.assert_array_equal(img[:, 16:], np.broadcast_to((0, 10, 20), (32, 16, 3)))
    np.testing.assert_array_equal(img[:16, :16], box_downsample(tissue, 2)[-16:, -16:])
    # wholly outside: all padding, never an error
    far = Region(slides["20x"], -1000, 5 * HEIGHT, magnification=5, size=16).read_rgb()
    np.testing.assert_array_equal(far, np.broadcast_to(PAD_COLOR, (16, 16, 3)))


def test_missing_resolution_error_names_the_slide_and_the_parameter(slides):
    with pytest.raises(MissingResolutionError, match=r"nompp\.tif.*base_magnification=.*base_mpp="):
        Region(slides["no_mpp"], 100, 100, magnification=20, size=32).read_rgb()
    df = pd.DataFrame({"slide": [slides["no_mpp"]], "x": [100], "y": [100]})
    with pytest.raises(MissingResolutionError, match=r"nompp\.tif"):
        regions(df, magnification=5, size=32)  # raised at once, not in a DataLoader worker
    with pytest.raises(MissingResolutionError, match="base_magnification="):
        tile(slides["no_mpp"], magnification=20, size=32)
    x5 = regions(df, magnification=5, size=32, base_magnification=20)
    by_mpp = regions(df, magnification=5, size=32, base_mpp=0.5)
    by_slide = regions(df, magnification=5, size=32, base_magnification={slides["no_mpp"]: 20})
    reference = Region(slides["20x"], 100, 100, magnification=5, size=32).read_rgb()
    for column in (x5, by_mpp, by_slide):
        np.testing.assert_array_equal(column.iloc[0].read_rgb(), reference)


def test_bad_requests_and_files_are_named(slides, tmp_path):
    with pytest.raises(ValueError, match="exactly one of magnification= or mpp="):
        Region(slides["20x"], 1, 1, size=8)
    with pytest.raises(ValueError, match="exactly one"):
        Region(slides["20x"], 1, 1, size=8, magnification=20, mpp=0.5)
    with pytest.raises(ValueError, match="magnification must be a positive number"):
        Region(slides["20x"], 1, 1, size=8, magnification=-5)
    with pytest.raises(ValueError, match="size must"):
        Region(slides["20x"], 1, 1, size=0, magnification=5)
    with pytest.raises(ValueError, match="x must be a finite number"):
        Region(slides["20x"], float("nan"), 1, size=8, magnification=5)
    with pytest.raises(ValueError, match="unknown slide backend"):
        Region(slides["20x"], 1, 1, size=8, magnification=5, backend="pil")
    with pytest.raises(SlideReadError, match="slide file not found: .*missing.svs"):
        Region(tmp_path / "missing.svs", 1, 1, size=8, magnification=5).read_rgb()
    bogus = tmp_path / "bogus.svs"
    bogus.write_bytes(b"not a tiff at all")
    with pytest.raises(SlideReadError, match="bogus.svs"):
        open_slide(bogus)
    # through the generic reader the error stays an ImageReadError naming the sample
    with pytest.raises(ImageReadError, match="missing.svs"):
        read_image(Region(tmp_path / "missing.svs", 1, 1, size=8, magnification=5), "sample 0")
    with pytest.raises(ValueError, match=r"lacks the column\(s\) \['y'\]"):
        regions(pd.DataFrame({"slide": [slides["20x"]], "x": [1]}), magnification=5, size=8)
    with pytest.raises(ValueError, match=r"df\['x'\].*row 1"):
        regions(pd.DataFrame({"slide": [slides["20x"]] * 2, "x": [1, None], "y": [1, 2]}), magnification=5, size=8)


# -------------------------------------------------------------------------------- region protocol
def test_region_is_an_image_source_that_pickles_as_parameters(slides):
    region = Region(slides["40x"], 512, 512, magnification=5, size=48)
    assert isinstance(region, ImageSource)
    pixels = region.read_rgb()  # opens a handle in this process; it must not travel
    blob = pickle.dumps(region)
    assert len(blob) < 400
    clone = pickle.loads(blob)
    assert clone == region and hash(clone) == hash(region)
    np.testing.assert_array_equal(clone.read_rgb(), pixels)
    np.testing.assert_array_equal(read_image(clone), pixels)
    assert "magnification=5" in repr(region) and "s40.tif" in repr(region)


def test_content_key_is_slide_identity_centre_resolution_and_size(slides, tmp_path, tissue):
    base = Region(slides["40x"], 512, 512, magnification=5, size=48)
    assert base.content_key() == Region(slides["40x"], 512.0, 512, magnification=5, size=(48, 48)).content_key()
    others = [
        Region(slides["40x"], 513, 512, magnification=5, size=48),
        Region(slides["40x"], 512, 513, magnification=5, size=48),
        Region(slides["40x"], 512, 512, magnification=10, size=48),
        Region(slides["40x"], 512, 512, magnification=5, size=64),
        Region(slides["40x"], 512, 512, magnification=5, size=48, interpolation="lanczos"),
        Region(slides["20x"], 512, 512, magnification=5, size=48),
    ]
    keys = {base.content_key(), *(r.content_key() for r in others)}
    assert len(keys) == 1 + len(others)
    # a rewritten slide is another slide: its regions get new keys (and the handle is reopened)
    path = write_slide(tmp_path / "rewritten.tif", tissue, mpp=0.5)
    region = Region(path, 300, 300, magnification=20, size=32)
    key, pixels = region.content_key(), region.read_rgb()
    write_slide(path, 255 - tissue, mpp=0.5)
    os.utime(path, ns=(os.stat(path).st_atime_ns, os.stat(path).st_mtime_ns + 10**9))
    assert region.content_key() != key
    np.testing.assert_array_equal(region.read_rgb(), 255 - pixels)


_PARENT_HANDLE = None


def _read_in_child(region):
    fresh = open_slide(region.slide) is not _PARENT_HANDLE
    return fresh, region.read_rgb()


def test_forked_workers_open_their_own_handles(slides):
    global _PARENT_HANDLE
    _PARENT_HANDLE = open_slide(slides["40x"])
    region = Region(slides["40x"], 700, 600, magnification=20, size=40)
    expected = region.read_rgb()
    with mp.get_context("fork").Pool(2) as pool:
        results = pool.map(_read_in_child, [region] * 4)
    for fresh, pixels in results:
        assert fresh
        np.testing.assert_array_equal(pixels, expected)


def test_openslide_backend_reads_the_same_pixels(slides):
    pytest.importorskip("openslide")
    for magnification, size in ((40, 50), (20, 64), (5, 32)):
        a = Region(slides["40x"], 610, 402, magnification=magnification, size=size).read_rgb()
        b = Region(slides["40x"], 610, 402, magnification=magnification, size=size, backend="openslide").read_rgb()
        np.testing.assert_array_equal(a, b)


# ------------------------------------------------------------------------------------------ tiling
def test_tile_grid_geometry_without_tissue_filter(slides):
    tiles = tile(slides["20x"], magnification=20, size=64, tissue=False)
    assert list(tiles.columns) == ["slide", "x", "y"]
    assert (tiles["slide"] == slides["20x"]).all()
    assert sorted(tiles["x"].unique()) == list(range(32, WIDTH - 31, 64))
    assert sorted(tiles["y"].unique()) == list(range(32, HEIGHT - 31, 64))
    assert len(tiles) == (WIDTH // 64) * (HEIGHT // 64)
    # x5 tiles of 64 px are 256 px wide at 20x; stride half a tile doubles the grid along each axis
    x5 = tile(slides["20x"], magnification=5, size=64, tissue=False)
    assert sorted(x5["x"].unique()) == [128, 384, 640]
    half = tile(slides["20x"], magnification=5, size=64, stride=32, tissue=False)
    assert sorted(half["x"].unique()) == [128, 256, 384, 512, 640]


def test_tile_keeps_tissue_tiles_and_scales_with_the_scan(slides):
    tiles = tile(slides["20x"], magnification=20, size=64)
    x0, y0, x1, y1 = TISSUE_BOX
    inside = (tiles["x"] - 32 >= x0) & (tiles["x"] + 32 <= x1) & (tiles["y"] - 32 >= y0) & (tiles["y"] + 32 <= y1)
    assert inside.all()
    assert len(tiles) == ((x1 - x0) // 64) * ((y1 - y0) // 64)
    # the 40x scan of the same tissue gives the same tiles at twice the coordinates
    tiles40 = tile(slides["40x"], magnification=20, size=64)
    np.testing.assert_array_equal(tiles40[["x", "y"]].to_numpy(), 2 * tiles[["x", "y"]].to_numpy())
    assert len(tile(slides["20x"], magnification=20, size=64, min_tissue=0.0, tissue=True)) > len(tiles)
    both = tile([slides["20x"], slides["40x"]], magnification=20, size=64)
    assert len(both) == 2 * len(tiles) and set(both["slide"]) == {slides["20x"], slides["40x"]}


# ------------------------------------------------------------------------------------- annotations
def _qupath_feature(geometry, name):
    return {
        "type": "Feature",
        "id": "x",
        "geometry": geometry,
        "properties": {"objectType": "annotation", "classification": {"name": name, "color": [255, 0, 0]}},
    }


def test_read_annotations_points_and_polygons_on_the_tile_grid(slides, tmp_path):
    tiles = tile(slides["20x"], magnification=20, size=64, tissue=False)
    square = [[64, 64], [320, 64], [320, 320], [64, 320], [64, 64]]
    hole = [[128, 128], [256, 128], [256, 256], [128, 256], [128, 128]]
    collection = {
        "type": "FeatureCollection",
        "features": [
            _qupath_feature({"type": "Point", "coordinates": [400.5, 100.0]}, "Mitosis"),
            _qupath_feature({"type": "Polygon", "coordinates": [square, hole]}, "Tumor"),
            _qupath_feature({"type": "LineString", "coordinates": [[0, 0], [5, 5]]}, "Ruler"),
        ],
    }
    path = tmp_path / "qupath.geojson"
    path.write_text(json.dumps(collection))
    with pytest.warns(UserWarning, match="LineString geometry ignored"):
        labelled = read_annotations(path, tiles=tiles, slide=slides["20x"])
    points = labelled[labelled["kind"] == "point"]
    assert points[["x", "y", "label"]].values.tolist() == [[400.5, 100.0, "Mitosis"]]
    tumour = labelled[labelled["label"] == "Tumor"]
    # tile centres 96, 160, 224, 288 per axis fall in the square; (160, 160) and (224, 160)... in the hole don't
    centres = set(map(tuple, tumour[["x", "y"]].to_numpy()))
    expected = {(x, y) for x in (96, 160, 224, 288) for y in (96, 160, 224, 288)} - {
        (x, y) for x in (160, 224) for y in (160, 224)
    }
    assert centres == expected
    assert (labelled["slide"] == slides["20x"]).all()
    # the labelled table feeds regions() as is
    column = regions(labelled, magnification=20, size=16)
    assert column.iloc[0].read_rgb().shape == (16, 16, 3)
    # without tiles, polygons are sampled every `spacing` px on the same grid
    with pytest.warns(UserWarning):
        sampled = read_annotations(path, spacing=64)
    poly = sampled[sampled["kind"] == "polygon"]
    assert set(map(tuple, poly[["x", "y"]].to_numpy().astype(int))) == expected
    assert "slide" not in sampled.columns


def test_read_annotations_csv_and_errors(tmp_path):
    csv = tmp_path / "points.csv"
    pd.DataFrame({"x": [1.0, 2.0], "y": [3.0, 4.0], "class": ["a", "b"], "note": ["p", "q"]}).to_csv(csv, index=False)
    table = read_annotations(csv, slide="s.svs")
    assert table[["slide", "x", "y", "label", "note"]].values.tolist() == [["s.svs", 1.0, 3.0, "a", "p"],
                                                                          ["s.svs", 2.0, 4.0, "b", "q"]]
    pd.DataFrame({"x": [1.0], "label": ["a"]}).to_csv(csv, index=False)
    with pytest.raises(ValueError, match=r"points.csv.*missing \['y'\]"):
        read_annotations(csv)
    poly = tmp_path / "poly.geojson"
    poly.write_text(json.dumps([_qupath_feature({"type": "Polygon", "coordinates": [[[0, 0], [9, 0], [9, 9]]]}, "T")]))
    with pytest.raises(ValueError, match="pass tiles=.*or spacing="):
        read_annotations(poly)
    with pytest.raises(FileNotFoundError, match="nothing.geojson"):
        read_annotations(tmp_path / "nothing.geojson")
    (tmp_path / "a.xml").write_text("<x/>")
    with pytest.raises(ValueError, match="unsupported annotation format"):
        read_annotations(tmp_path / "a.xml")


# ----------------------------------------------------------------------------------------- heatmap
class RedClassifier:
    """A fitted stand-in classifier: P(red) from the mean red excess of each tile's x20 region."""

    classes_ = np.array(["blue", "red"])
    feature_names_in_ = np.array(["x20"], dtype=object)

    def predict_proba(self, X):
        assert list(X.columns) == ["x20"]
        excess = np.array([
            (r.read_rgb()[..., 0].astype(float) - r.read_rgb()[..., 2].astype(float)).mean() / 510 for r in X["x20"]
        ])
        p = np.clip(0.5 + excess, 0, 1)
        return np.column_stack([1 - p, p])


@pytest.fixture(scope="module")
def two_colour_slide(tmp_path_factory):
    img = np.empty((384, 512, 3), dtype=np.uint8)
    img[...] = GLASS
    img[64:320, 64:256] = (220, 40, 40)  # red tissue, left
    img[64:320, 256:448] = (40, 40, 220)  # blue tissue, right
    return write_slide(tmp_path_factory.mktemp("two") / "two.tif", img, factors=(1, 2), mpp=0.5)


def test_heatmap_grid_and_png(two_colour_slide, tmp_path):
    tiles = tile(two_colour_slide, magnification=20, size=64)
    tiles["x20"] = regions(tiles, magnification=20, size=64)
    out = tmp_path / "heat.png"
    grid = heatmap(RedClassifier(), tiles, out=out)
    rows, cols, x0, y0, step = tile_grid(tiles)
    assert step == 64 and (x0, y0) == (96, 96)
    assert grid.shape == (4, 6)
    assert np.isfinite(grid).all()  # the tissue block is one full rectangle of tiles
    np.testing.assert_allclose(grid[:, :3], 0.5 + 90 / 255)
    np.testing.assert_allclose(grid[:, 3:], 0.5 - 90 / 255)
    png = np.asarray(Image.open(out))
    assert png.shape[0] >= 384 and png.ndim == 3
    assert os.stat(out).st_mode & 0o777 == 0o666 & ~_umask()
    blue = heatmap(RedClassifier(), tiles, class_="blue")
    np.testing.assert_allclose(blue, 1 - grid)
    with pytest.raises(ValueError, match="class_='green' is not one of"):
        heatmap(RedClassifier(), tiles, class_="green")
    sparse = tiles.drop(index=[0, 7]).reset_index(drop=True)
    grid = heatmap(RedClassifier(), sparse)
    assert grid.shape == (4, 6) and np.isnan(grid[0, 0]) and np.isnan(grid[1, 1]) and np.isfinite(grid).sum() == 22
    mixed = pd.concat([tiles, tiles.assign(slide="other.tif")])
    with pytest.raises(ValueError, match="2 slides"):
        heatmap(RedClassifier(), mixed)


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask
