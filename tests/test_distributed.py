"""Extraction and searches on a Dask LocalCluster with two worker processes."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GridSearchCV, cross_validate

from skdfl import BackboneEmbedder
from skdfl.storage import extract_to_store

distributed = pytest.importorskip("distributed", reason="dask.distributed is not installed")


@pytest.fixture(scope="module")
def client():
    from distributed import Client, LocalCluster

    # Workers get OMP_NUM_THREADS=1 from the nanny: two single-threaded processes on the 2 cores.
    with LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None, silence_logs=40
    ) as cluster, Client(cluster) as c:
        yield c


def _embedder():
    # A timm name rather than a test-local class: workers unpickle the model without importing this file.
    return BackboneEmbedder(
        "test_resnet", pretrained=False, image_size=32, precision="fp32", device="cpu", batch_size=8, verbose=0
    )


@pytest.fixture(scope="module")
def frame(tmp_path_factory):
    root = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    cols = {"x20": [], "x5": []}
    for i in range(70):
        for source in cols:
            path = root / f"{source}_{i}.png"
            Image.fromarray(rng.integers(0, 256, (28, 28, 3), dtype=np.uint8)).save(path)
            cols[source].append(str(path))
    return pd.DataFrame(cols)


@pytest.mark.parametrize("write_on", ["workers", "client"])
def test_dask_extraction_equals_single_process(client, frame, tmp_path, write_on):
    from distributed import get_task_stream

    local = extract_to_store(frame, tmp_path / "local", _embedder(), chunk_size=16, verbose=0)
    with get_task_stream(client) as stream:
        dist = extract_to_store(
            frame, tmp_path / "dask", _embedder(), chunk_size=16, client=client, write_on=write_on, verbose=0
        )
    assert dist.meta["complete"] and dist.meta["embedding"] == local.meta["embedding"]
    # Same chunks, same batches, same single-threaded kernels: equal to float32 rounding at most.
    np.testing.assert_allclose(np.asarray(dist.embeddings), np.asarray(local.embeddings), rtol=1e-6, atol=1e-6)
    chunks = [t for t in stream.data if str(t["key"]).startswith("skdfl-chunk")]
    assert len(chunks) == 5
    assert len({t["worker"] for t in chunks}) == 2  # both workers took part


def test_dask_extraction_resumes_a_partial_store(client, frame, tmp_path):
    path = tmp_path / "s"
    extract_to_store(frame, path, _embedder(), chunk_size=16, verbose=0)
    for marker in sorted((path / "chunks").glob("*.json"))[::2]:
        marker.unlink()  # as if the run had been killed before these chunks were finished
    store = extract_to_store(frame, path, _embedder(), chunk_size=16, client=client, verbose=0)
    full = extract_to_store(frame, tmp_path / "full", _embedder(), chunk_size=16, verbose=0)
    np.testing.assert_allclose(np.asarray(store.embeddings), np.asarray(full.embeddings), rtol=1e-6, atol=1e-6)


def test_search_and_cross_validate_on_dask_over_a_store(client, frame, tmp_path):
    from skdfl.distributed import dask_backend

    store = extract_to_store(frame, tmp_path / "s", _embedder(), chunk_size=32, verbose=0)
    y = np.arange(len(frame)) % 2
    grid = {"C": [0.01, 0.1, 1.0, 10.0]}
    serial = GridSearchCV(LogisticRegression(max_iter=500), grid, cv=3).fit(store.embeddings, y)
    serial_scores = cross_validate(LogisticRegression(max_iter=500), store.embeddings, y, cv=3)
    with dask_backend(client):
        search = GridSearchCV(LogisticRegression(max_iter=500), grid, cv=3, n_jobs=-1).fit(store.embeddings, y)
        scores = cross_validate(LogisticRegression(max_iter=500), store.embeddings, y, cv=3, n_jobs=-1)
    np.testing.assert_allclose(search.cv_results_["mean_test_score"], serial.cv_results_["mean_test_score"])
    # Each fold's score, computed on a worker, equals the serial run's (same folds, deterministic solver).
    np.testing.assert_allclose(scores["test_score"], serial_scores["test_score"])


def test_dask_backend_without_a_client_is_a_clear_error(monkeypatch):
    import distributed as dd

    from skdfl.distributed import dask_backend

    def no_client():
        raise ValueError("No global client found")

    monkeypatch.setattr(dd, "get_client", no_client)
    with pytest.raises(ValueError, match="no Dask client"), dask_backend():
        pass


def test_cached_pipeline_search_on_dask_reuses_the_cache(client, frame, tmp_path):
    from sklearn.pipeline import make_pipeline

    from skdfl.distributed import dask_backend

    cache = tmp_path / "cache"
    embedder = _embedder().set_params(cache=str(cache), views=["x20"])
    embedder.fit(frame).transform(frame)  # warm the cache in this process
    entries = {p: p.stat().st_mtime_ns for p in cache.rglob("*.emb")}
    assert len(entries) == len(frame)
    y = np.arange(len(frame)) % 2
    grid = {"logisticregression__C": [0.01, 0.1, 1.0, 10.0]}
    pipe = make_pipeline(embedder, LogisticRegression(max_iter=500))
    with dask_backend(client):
        search = GridSearchCV(pipe, grid, cv=3, n_jobs=-1).fit(frame, y)
    # every worker-side transform was a hit: no entry was added or rewritten
    assert {p: p.stat().st_mtime_ns for p in cache.rglob("*.emb")} == entries
    serial = GridSearchCV(pipe, grid, cv=3).fit(frame, y)
    np.testing.assert_allclose(search.cv_results_["mean_test_score"], serial.cv_results_["mean_test_score"])
