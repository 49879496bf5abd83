"""``skdfl tile`` and ``skdfl heatmap`` on a small pyramidal TIFF written by the test."""

from __future__ import annotations

import joblib
import numpy as np
import pandas as pd
import pytest
from PIL import Image
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from wsi_slides import GLASS, write_slide

from skdfl import BackboneEmbedder
from skdfl.cli import main
from skdfl.wsi import parse_view, region_views, tile

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def run(argv) -> int:
    return main([str(a) for a in argv])


@pytest.fixture(scope="module")
def slide(tmp_path_factory):
    img = np.empty((512, 768, 3), dtype=np.uint8)
    img[...] = GLASS
    img[64:448, 64:384] = (210, 60, 90)  # pink tissue, left
    img[64:448, 384:704] = (70, 50, 200)  # purple tissue, right
    return write_slide(tmp_path_factory.mktemp("cli") / "cli.tif", img, factors=(1, 2), mpp=None)


def test_tile_command_writes_the_tiles_csv(slide, tmp_path, capsys):
    out = tmp_path / "tiles.csv"
    assert run(["tile", slide, "--size", 64, "--out", out]) == 2
    assert "base_magnification=" in capsys.readouterr().err
    assert not out.exists()
    assert run(["tile", slide, "--magnification", 20, "--size", 64, "--out", out, "--base-magnification", 20]) == 0
    written = pd.read_csv(out)
    expected = tile(slide, magnification=20, size=64, base_magnification=20)
    assert list(written.columns) == ["slide", "x", "y"]
    assert written.values.tolist() == expected.values.tolist()
    assert len(written) == (640 // 64) * (384 // 64)
    assert f"wrote {len(written)} tile centres" in capsys.readouterr().out
    run(["tile", slide, "--size", 64, "--out", out, "--base-mpp", 0.5, "--all"])
    assert len(pd.read_csv(out)) == (768 // 64) * (512 // 64)


def test_heatmap_command_with_a_saved_multizoom_pipeline(slide, tmp_path):
    tiles = tile(slide, magnification=20, size=32, base_magnification=20)
    X = region_views(tiles, ["x20", "x5"], size=32, base_magnification=20)
    y = np.where(X["x"] < 384, "pink", "purple")
    model = make_pipeline(
        BackboneEmbedder("resnet18", pretrained=False, image_size=32, views=["x20", "x5"], device="cpu",
                         precision="fp32", verbose=0),
        LogisticRegression(max_iter=500),
    ).fit(X[["x20", "x5"]], y)
    path = tmp_path / "model.joblib"
    joblib.dump(model, path)
    png, csv = tmp_path / "heat.png", tmp_path / "proba.csv"
    code = run(["heatmap", path, slide, "--out", png, "--size", 32, "--base-magnification", 20,
                "--class", "purple", "--csv", csv])
    assert code == 0
    assert Image.open(png).size[0] > 300
    proba = pd.read_csv(csv)
    assert len(proba) == len(tiles)
    right = proba["x"] >= 384 + 16
    assert proba.loc[right, "probability"].mean() > 0.5 > proba.loc[~right, "probability"].mean()


def test_parse_view():
    assert parse_view("x20") == {"magnification": 20.0}
    assert parse_view("x2.5") == {"magnification": 2.5}
    assert parse_view("mpp0.5") == {"mpp": 0.5}
    with pytest.raises(ValueError, match="names no resolution"):
        parse_view("image")


def test_embed_command_reads_multizoom_regions_from_a_tiles_csv(slide, tmp_path):
    from skdfl import load_store

    tiles_csv = tmp_path / "tiles.csv"
    assert run(["tile", slide, "--size", 32, "--out", tiles_csv, "--base-magnification", 20]) == 0
    out = tmp_path / "store"
    code = run(["embed", tiles_csv, out, "--views", "x20,x5", "--region-size", 32, "--base-magnification", 20,
                "--backbone", "resnet18", "--random-init", "--image-size", 32, "--device", "cpu",
                "--precision", "fp32", "--quiet"])
    assert code == 0
    store = load_store(out)
    tiles = pd.read_csv(tiles_csv)
    X = region_views(tiles, ["x20", "x5"], size=32, base_magnification=20)[["x20", "x5"]]
    expected = BackboneEmbedder("resnet18", pretrained=False, image_size=32, views=["x20", "x5"], device="cpu",
                                precision="fp32", verbose=0).fit_transform(X)
    assert store.shape == expected.shape == (len(tiles), 2 * 512)
    np.testing.assert_allclose(np.asarray(store.embeddings), expected, atol=1e-5)
