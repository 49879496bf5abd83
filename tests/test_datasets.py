"""Synthetic multi-zoom data and real-data loaders."""

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from skdfl.datasets import load_csv, load_data, load_image_folder, make_tissue_patches


def test_make_tissue_patches_views_share_a_centre_and_classes_balance():
    X, y = make_tissue_patches(24, n_classes=3, patch_size=32, context_factor=4, stain_jitter=0.0,
                               random_state=1)
    assert list(X.columns) == ["x20", "x5"] and len(X) == 24
    assert X.x20[0].shape == (32, 32, 3) and X.x20[0].dtype == np.uint8
    assert y.value_counts().tolist() == [8, 8, 8]
    # The x5 view is the whole field downsampled 4x: its central 8x8 block summarises the x20 patch.
    for i in range(5):
        centre = X.x5[i][12:20, 12:20].astype(float)
        x20_down = X.x20[i].reshape(8, 4, 8, 4, 3).mean((1, 3))
        assert np.abs(centre - x20_down).mean() < 3.0
    X2, y2 = make_tissue_patches(24, n_classes=3, patch_size=32, stain_jitter=0.0, random_state=1)
    assert np.array_equal(X.x20[3], X2.x20[3]) and y.equals(y2)


def test_make_tissue_patches_classes_differ_at_cell_level():
    X, y = make_tissue_patches(40, n_classes=2, random_state=0)
    purple = np.array([np.mean(im[..., 1] < 120) for im in X.x20])  # nucleus coverage
    means = pd.Series(purple).groupby(y.values).mean()
    assert means["tumor"] > 2 * means["stroma"]


def test_make_tissue_patches_validates():
    with pytest.raises(ValueError, match="n_classes"):
        make_tissue_patches(10, n_classes=7)


@pytest.fixture
def folder(tmp_path):
    for cls in ["a", "b"]:
        (tmp_path / cls).mkdir()
        for i in range(2):
            Image.fromarray(np.full((8, 8, 3), i * 50, np.uint8)).save(tmp_path / cls / f"{i}.png")
    (tmp_path / "labels.csv").write_text(
        "path,label,patient\na/0.png,a,p1\na/1.png,a,p2\nb/0.png,b,p1\nb/1.png,b,p3\n"
    )
    return tmp_path


def test_load_image_folder_and_csv(folder):
    X, y = load_image_folder(folder)
    assert y.tolist() == ["a", "a", "b", "b"] and X["image"][0].endswith("0.png")
    bunch = load_data(folder / "labels.csv")
    assert bunch.groups.tolist() == ["p1", "p2", "p1", "p3"]
    assert all(p.startswith(str(folder)) for p in bunch.X["path"])


def test_load_csv_errors_name_the_problem(folder):
    with pytest.raises(ValueError, match=r"missing column\(s\) \['diagnosis'\]"):
        load_csv(folder / "labels.csv", label_col="diagnosis")
    (folder / "bad.csv").write_text("path,label\nmissing.png,a\n")
    with pytest.raises(FileNotFoundError, match="missing.png"):
        load_csv(folder / "bad.csv")
    with pytest.raises(FileNotFoundError, match="nothere"):
        load_data(folder / "nothere.csv")


def test_load_data_ignores_an_empty_patient_column(folder):
    (folder / "nopatients.csv").write_text("path,label,patient\na/0.png,a,\nb/0.png,b,\n")
    assert load_data(folder / "nopatients.csv").groups is None
