"""Fixtures for the Python blocks of README.md, which pytest-markdown-docs runs as tests.

Every ```python block of the README is a test (``--markdown-docs`` in ``addopts``, ``README.md`` in
``testpaths``). A block is standalone: it may only use the fixtures named in its info string
(```` ```python fixture:data_dir ````), which pytest-markdown-docs injects as global names:

``data_dir``
    ``pathlib.Path`` of the real images (``$SKDFL_DATA_DIR``, else ``../shared/data`` next to the
    repository); the block is skipped with a reason when it is absent, and marked ``data``.
``dask_client``
    A ``dask.distributed.Client`` on a small ``LocalCluster`` (two single-threaded in-process workers),
    shared by the blocks that use it; skipped when dask.distributed is not installed.
``example_slide``
    Writes ``slide.tif`` (a small pyramidal TIFF, 20x, pink "tissue" on white glass) and
    ``annotations.geojson`` (two labelled QuPath-style polygons on it) into the working directory.
``slow``
    No value: marks the block ``slow`` (deselected by default, ``python -m pytest -m slow`` runs it).

Whatever fixtures it names, every block runs in a fresh temporary working directory (so it writes
nothing into the repository), offline (``HF_HUB_OFFLINE=1``), with matplotlib's Agg backend and one torch
thread (tiny models on a shared machine are faster without OpenMP spinning).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

REPO_ROOT = Path(__file__).resolve().parent

#: README fixture name -> marker added to every block that uses it.
FIXTURE_MARKERS = {"data_dir": "data", "slow": "slow"}


def _is_readme_block(item) -> bool:
    return item.get_closest_marker("markdown-docs") is not None


@pytest.hookimpl(tryfirst=True)  # before `-m` deselects: the markers must already be there
def pytest_collection_modifyitems(config, items):
    for item in items:
        if not _is_readme_block(item):
            continue
        for fixture, marker in FIXTURE_MARKERS.items():
            if fixture in item.fixturenames:
                item.add_marker(marker)


@pytest.fixture(autouse=True)
def _readme_block_sandbox(request, tmp_path, monkeypatch):
    """Temporary working directory, offline hubs, Agg backend and one torch thread for README blocks."""
    if not _is_readme_block(request.node):
        yield
        return
    import torch

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("SKDFL_OFFLINE", "1")
    monkeypatch.setenv("MPLBACKEND", "Agg")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def slow():
    """Marks a README block ``slow`` (see :data:`FIXTURE_MARKERS`); holds no value."""
    return None


@pytest.fixture
def data_dir() -> Path:
    """The real-image folder, or a skip naming where it was looked for."""
    path = Path(os.environ.get("SKDFL_DATA_DIR", REPO_ROOT.parent / "shared" / "data")).resolve()
    if not path.is_dir():
        pytest.skip(f"real data not found at {path} (set SKDFL_DATA_DIR or put it at ../shared/data)")
    return path


@pytest.fixture(scope="session")
def dask_client():
    """A Client on a two-worker in-process LocalCluster, closed at the end of the session."""
    distributed = pytest.importorskip("distributed", reason="dask.distributed is not installed")
    with distributed.LocalCluster(
        n_workers=2, threads_per_worker=1, processes=False, dashboard_address=None, silence_logs=40
    ) as cluster, distributed.Client(cluster) as client:
        yield client


#: The example slide: 20x (0.5 um/px), 1344 x 896 level-0 pixels; tissue in the box below (x0, y0, x1, y1).
SLIDE_SIZE = (1344, 896)
SLIDE_TISSUE = (112, 112, 1232, 784)


@pytest.fixture
def example_slide(_readme_block_sandbox) -> Path:
    """``slide.tif`` + ``annotations.geojson`` in the working directory; returns the slide's path."""
    import tifffile

    width, height = SLIDE_SIZE
    x0, y0, x1, y1 = SLIDE_TISSUE
    rng = np.random.default_rng(0)
    image = np.full((height, width, 3), (242, 242, 240), dtype=np.uint8)  # glass
    texture = rng.integers(-40, 41, size=(y1 - y0, x1 - x0, 3))
    tissue = np.array([200, 110, 170]) + texture
    tissue[:, (x1 - x0) // 2 :] += np.array([-60, -30, 10])  # the right half stains darker
    image[y0:y1, x0:x1] = np.clip(tissue, 0, 255)

    path = Path("slide.tif").resolve()
    mpp = 0.5
    with tifffile.TiffWriter(path) as writer:
        for k, factor in enumerate((1, 4)):
            level = image[::factor, ::factor] if factor > 1 else image
            per_cm = 1e4 / (mpp * factor)
            writer.write(
                np.ascontiguousarray(level),
                tile=(64, 64),
                photometric="rgb",
                compression="zlib",
                resolution=(per_cm, per_cm),
                resolutionunit="CENTIMETER",
                **({"subfiletype": 1} if k else {}),
            )

    middle = (x0 + x1) // 2

    def polygon(name, left, right):
        ring = [[left, y0], [right, y0], [right, y1], [left, y1], [left, y0]]
        return {
            "type": "Feature",
            "geometry": {"type": "Polygon", "coordinates": [ring]},
            "properties": {"objectType": "annotation", "classification": {"name": name}},
        }

    collection = {
        "type": "FeatureCollection",
        "features": [polygon("tumour", x0, middle), polygon("stroma", middle, x1)],
    }
    Path("annotations.geojson").write_text(json.dumps(collection))
    return path
