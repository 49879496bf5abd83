"""Streaming extraction to an on-disk store: lazy input, resume after kill -9, memmap read-back.

The ``skdfl embed`` command is tested in tests/test_cli_embed.py.
"""

from __future__ import annotations

import errno
import multiprocessing
import os
import pickle
import signal
import threading
import time
from contextlib import contextmanager

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image
from sklearn.linear_model import LogisticRegression
from sklearn.utils.validation import check_array
from torch import nn

from skdfl import BackboneEmbedder
from skdfl.io import as_sources
from skdfl.storage import (
    EmbeddingCache,
    IncompleteStoreError,
    StoreArray,
    StoreMismatchError,
    extract_to_store,
    iter_chunks,
    load_store,
)


class Net(nn.Module):
    def __init__(self, dim: int = 6):
        super().__init__()
        self.conv = nn.Conv2d(3, dim, 3, stride=2)
        self.pool = nn.AdaptiveAvgPool2d(1)

    def forward(self, x):
        return self.pool(torch.relu(self.conv(x))).flatten(1)


class SeededImages:
    """A lazy sequence of random images: image ``i`` is generated on access, from seed ``(seed, i)``."""

    def __init__(self, n: int, size: int = 24, seed: int = 0):
        self.n, self.size, self.seed = n, size, seed
        self.reads = 0
        self.delay = 0.0

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        if not 0 <= i < self.n:
            raise IndexError(i)
        self.reads += 1
        if self.delay:
            time.sleep(self.delay)
        rng = np.random.default_rng([self.seed, int(i)])
        return rng.integers(0, 256, (self.size, self.size, 3), dtype=np.uint8)


def _embedder(**kw):
    torch.manual_seed(0)
    params = dict(image_size=24, precision="fp32", device="cpu", verbose=0, batch_size=10)
    return BackboneEmbedder(Net(), **{**params, **kw})


@contextmanager
def _single_thread():
    """One intra-op thread, as in a forked child: bitwise-comparable runs."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _png_frame(tmp_path, n):
    rows = {"x20": [], "x5": []}
    rng = np.random.default_rng(1)
    for i in range(n):
        for source, size in (("x20", 24), ("x5", 40)):
            path = tmp_path / f"{source}_{i}.png"
            Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(path)
            rows[source].append(str(path))
    return pd.DataFrame(rows, index=pd.Index([f"s{i}" for i in range(n)], name="sample"))


def test_store_of_file_paths_equals_transform(tmp_path):
    X = _png_frame(tmp_path, 23)
    emb = _embedder(colors=["rgb", "gray"])
    store = extract_to_store(X, tmp_path / "store", emb, chunk_size=10, verbose=0)
    fitted = _embedder(colors=["rgb", "gray"]).fit(X)
    expected = fitted.transform(X)
    assert isinstance(store.embeddings, StoreArray) and store.embeddings.dtype == np.float32
    assert store.shape == expected.shape == (23, 4 * 6)
    np.testing.assert_allclose(store.embeddings, expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(store.feature_names, fitted.get_feature_names_out())
    pd.testing.assert_index_equal(store.index, X.index)
    assert store.meta["complete"] and store.meta["n_chunks"] == 3
    assert not store.embeddings.flags.writeable
    again = extract_to_store(X, tmp_path / "store", emb, chunk_size=10, verbose=0)  # finished: nothing to do
    np.testing.assert_array_equal(again.embeddings, store.embeddings)


def test_lazy_sequence_and_float16(tmp_path):
    X = SeededImages(45)
    store = extract_to_store(X, tmp_path / "s16", _embedder(), chunk_size=20, dtype="float16", verbose=0)
    assert store.embeddings.dtype == np.float16
    dense = np.stack([X[i] for i in range(len(X))])
    expected = _embedder().fit(dense).transform(dense)
    np.testing.assert_allclose(store.embeddings.astype(np.float32), expected, rtol=1e-2, atol=1e-3)
    blocks = list(iter_chunks(store, size=16))
    assert [s for s, _ in blocks] == [0, 16, 32] and blocks[0][1].dtype == np.float32


def test_lazy_sources_reads_nothing():
    X = SeededImages(10)
    sources, index = as_sources(X)
    n = len(sources["image"])
    assert sources["image"] is X and index is None and n == 10 and X.reads == 0
    with pytest.raises(ValueError, match="single path"):
        as_sources("a.png")
    with pytest.raises(ValueError, match="unsupported input type"):
        as_sources(3)
    with pytest.raises(ValueError, match=r"\(n, H, W, 3\)"):
        as_sources(np.zeros((4, 8, 8)))


def _extract_in_child(X, path, chunk_size):
    torch.set_num_threads(1)  # a forked child must not reuse the parent's OpenMP pool
    X.delay = 0.004  # slow the child down so it is killed mid-run
    extract_to_store(X, path, _embedder(), chunk_size=chunk_size, verbose=0)


def _markers(path):
    return {p.name: p.stat().st_mtime_ns for p in (path / "chunks").glob("*.json")}


def test_resume_after_kill9_equals_uninterrupted_run(tmp_path):
    n, chunk = 600, 25
    X = SeededImages(n)
    path = tmp_path / "killed"
    child = multiprocessing.get_context("fork").Process(target=_extract_in_child, args=(X, path, chunk))
    child.start()
    deadline = time.monotonic() + 60
    while len(_markers(path)) < 3 and time.monotonic() < deadline and child.is_alive():
        time.sleep(0.02)
    os.kill(child.pid, signal.SIGKILL)
    child.join()
    assert child.exitcode == -signal.SIGKILL
    before = _markers(path)
    assert 3 <= len(before) < n // chunk, "the child was not killed mid-run"

    with pytest.raises(IncompleteStoreError, match="incomplete"):
        load_store(path)
    partial = load_store(path, allow_partial=True, verify=True)  # every marked chunk is intact
    assert partial.meta["complete"] is False

    with _single_thread():
        resumed = extract_to_store(X, path, _embedder(), chunk_size=chunk, verbose=0)
        # finished chunks were neither recomputed nor rewritten
        done_rows = len(before) * chunk
        assert X.reads <= (n - done_rows) + n // chunk + 1  # + the input spot-check, + the fit sample
        assert {k: v for k, v in _markers(path).items() if k in before} == before
        clean = extract_to_store(SeededImages(n), tmp_path / "clean", _embedder(), chunk_size=chunk, verbose=0)
    np.testing.assert_array_equal(np.asarray(resumed.embeddings), np.asarray(clean.embeddings))
    assert load_store(path, verify=True).meta["complete"]


def test_corrupt_chunk_is_recomputed_on_rerun(tmp_path):
    X = SeededImages(30)
    path = tmp_path / "s"
    store = extract_to_store(X, path, _embedder(), chunk_size=10, verbose=0)
    good = np.array(store.embeddings)
    del store
    with open(path / "embeddings.npy", "r+b") as f:  # a disk error in chunk 1
        f.seek(-(15 * 6 * 4), os.SEEK_END)
        f.write(b"\x00" * 16)
    with pytest.raises(ValueError, match=r"corrupt: chunks \[1\]"):
        load_store(path, verify=True)
    X.reads = 0
    repaired = extract_to_store(X, path, _embedder(), chunk_size=10, verbose=0)
    assert X.reads <= 10 + 3 + 1
    np.testing.assert_array_equal(np.asarray(repaired.embeddings), good)


def test_resume_refuses_a_different_extraction(tmp_path):
    X = SeededImages(12)
    extract_to_store(X, tmp_path / "s", _embedder(), chunk_size=5, verbose=0)
    with pytest.raises(ValueError, match="differs in: .*embedding"):
        extract_to_store(X, tmp_path / "s", _embedder(image_size=32), chunk_size=5, verbose=0)
    with pytest.raises(ValueError, match="input_digest"):
        extract_to_store(SeededImages(12, seed=1), tmp_path / "s", _embedder(), chunk_size=5, verbose=0)
    with pytest.raises(FileExistsError, match="overwrite"):
        extract_to_store(X, tmp_path / "s", _embedder(), chunk_size=5, resume=False, verbose=0)
    other = extract_to_store(X, tmp_path / "s", _embedder(image_size=32), chunk_size=5, overwrite=True, verbose=0)
    assert other.meta["embedding"]["input_size"] == [32, 32]
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="not an embedding store"):
        extract_to_store(X, tmp_path / "junk", _embedder(), verbose=0)
    with pytest.raises(FileNotFoundError, match="no embedding store"):
        load_store(tmp_path / "nowhere")
    with pytest.raises(ValueError, match="dtype"):
        extract_to_store(X, tmp_path / "t", _embedder(), dtype="int8")


def test_mismatch_has_its_own_error_and_only_embedders_are_accepted(tmp_path):
    X = SeededImages(12)
    extract_to_store(X, tmp_path / "s", _embedder(), chunk_size=5, verbose=0)
    with pytest.raises(StoreMismatchError, match="differs in: .*embedding"):
        extract_to_store(X, tmp_path / "s", _embedder(image_size=32), chunk_size=5, verbose=0)
    with pytest.raises(TypeError, match="embed_rows"):
        extract_to_store(X, tmp_path / "t", LogisticRegression(), verbose=0)
    assert not (tmp_path / "t").exists()  # refused before anything was created


class Region:
    """An :class:`~skdfl.io.ImageSource` over one image of a :class:`SeededImages`."""

    def __init__(self, images, i):
        self.images, self.i = images, i

    def read_rgb(self):
        return self.images[self.i]

    def content_key(self):
        return f"seeded|{self.images.seed}|{self.i}"


def test_store_of_image_sources_equals_store_of_arrays(tmp_path):
    X = SeededImages(14)
    regions = pd.DataFrame({"image": [Region(X, i) for i in range(14)]})
    from_regions = extract_to_store(regions, tmp_path / "r", _embedder(), chunk_size=6, verbose=0)
    from_arrays = extract_to_store(X, tmp_path / "a", _embedder(), chunk_size=6, verbose=0)
    np.testing.assert_allclose(np.asarray(from_regions.embeddings), np.asarray(from_arrays.embeddings), rtol=1e-6)


def test_written_files_respect_the_umask(tmp_path):
    # A group-shared umask (not the usual 022), set after skdfl was imported: the files must follow it.
    previous = os.umask(0o027)
    try:
        store = extract_to_store(SeededImages(4), tmp_path / "s", _embedder(cache=EmbeddingCache(tmp_path / "c")),
                                 chunk_size=2, verbose=0)
        _embedder(cache=tmp_path / "c").fit(SeededImages(4)[0][None]).transform(np.stack([SeededImages(4)[0]]))
    finally:
        os.umask(previous)
    expected = 0o640
    files = [store.path / "store.json", *sorted((store.path / "chunks").glob("*.json")),
             *sorted((tmp_path / "c").rglob("*.emb")), *sorted((tmp_path / "c").rglob("namespace.json"))]
    assert len(files) == 5
    assert {oct(f.stat().st_mode & 0o777) for f in files} == {oct(expected)}


def test_store_array_pickles_by_reference(tmp_path):
    store = extract_to_store(SeededImages(40), tmp_path / "s", _embedder(), chunk_size=16, verbose=0)
    blob = pickle.dumps(store.embeddings, protocol=5)
    assert len(blob) < 1000  # a file reference, not 40 x 6 floats... nor 1.6M x 2048 of them
    back = pickle.loads(blob)
    assert isinstance(back, StoreArray)
    np.testing.assert_array_equal(back, store.embeddings)
    part = pickle.loads(pickle.dumps(store.embeddings[5:9]))  # a slice travels by value
    np.testing.assert_array_equal(part, store.embeddings[5:9])


def test_estimators_consume_the_memmap_without_copy(tmp_path):
    X = SeededImages(60)
    store = extract_to_store(X, tmp_path / "s", _embedder(), chunk_size=32, verbose=0)
    y = np.arange(60) % 2
    assert np.shares_memory(check_array(store.embeddings, dtype=np.float32), store.embeddings)
    LogisticRegression(max_iter=200).fit(store.embeddings, y)


def test_focal_head_fits_on_a_store(tmp_path):
    heads = pytest.importorskip("skdfl.heads", reason="skdfl.heads (FocalHeadClassifier) not available yet")
    store = extract_to_store(SeededImages(64), tmp_path / "s", _embedder(), chunk_size=32, verbose=0)
    y = np.arange(64) % 2
    clf = heads.FocalHeadClassifier(hidden_units=(8,), max_epochs=2, batch_size=16, device="cpu", random_state=0)
    clf.fit(store.embeddings, y)
    assert clf.predict_proba(store.embeddings).shape == (64, 2)


def _no_space(*args, **kwargs):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))  # as write() raises it: no filename


def test_full_disk_while_creating_a_store_names_it_and_leaves_nothing(tmp_path, monkeypatch):
    real_open_memmap = np.lib.format.open_memmap

    def open_memmap_on_a_full_disk(filename, *args, **kwargs):
        real_open_memmap(filename, *args, **kwargs)._mmap.close()  # the file exists, then the disk is full
        _no_space()

    monkeypatch.setattr(np.lib.format, "open_memmap", open_memmap_on_a_full_disk)
    path = tmp_path / "store"
    with pytest.raises(OSError, match=r"No space left on device.*store") as info:
        extract_to_store(SeededImages(6), path, _embedder(), chunk_size=4, verbose=0)
    assert info.value.errno == errno.ENOSPC and info.value.filename == str(path)
    assert sorted(p.name for p in path.iterdir() if not p.name.endswith(".lock")) == []
    monkeypatch.undo()
    assert extract_to_store(SeededImages(6), path, _embedder(), chunk_size=4, verbose=0).meta["complete"]


def test_full_disk_while_writing_rows_names_the_data_file(tmp_path, monkeypatch):
    X = SeededImages(10)
    path = tmp_path / "store"
    monkeypatch.setattr(os, "pwrite", _no_space)
    with pytest.raises(OSError, match=r"No space left on device.*rows 0-4.*embeddings\.npy") as info:
        extract_to_store(X, path, _embedder(), chunk_size=4, verbose=0)
    assert info.value.errno == errno.ENOSPC and info.value.filename == str(path / "embeddings.npy")
    assert not list(path.rglob(".tmp-*"))
    monkeypatch.undo()
    store = extract_to_store(X, path, _embedder(), chunk_size=4, verbose=0)  # resumes once there is space
    dense = np.stack([X[i] for i in range(len(X))])
    np.testing.assert_allclose(store.embeddings, _embedder().fit(dense).transform(dense), rtol=1e-5, atol=1e-6)


def test_two_extractions_started_together_on_a_new_path(tmp_path, monkeypatch):
    """Both succeed with the same store, 10 times in a row.

    The creation of the data file is slowed down (50 ms) to widen the window in which the other call
    used to find a half-created store (its temporary files "not a store", or deleted under it).
    """
    X = SeededImages(8)
    dense = np.stack([X[i] for i in range(len(X))])
    expected = _embedder().fit(dense).transform(dense)
    real_open_memmap = np.lib.format.open_memmap

    def slow_open_memmap(*args, **kwargs):
        array = real_open_memmap(*args, **kwargs)
        time.sleep(0.05)
        return array

    monkeypatch.setattr(np.lib.format, "open_memmap", slow_open_memmap)
    embedders = [_embedder().fit(dense[:1]), _embedder().fit(dense[:1])]
    for trial in range(10):
        path = tmp_path / f"store{trial}"
        barrier = threading.Barrier(2)
        results, errors = [None, None], []

        def extract(k, path=path, barrier=barrier, results=results, errors=errors):
            barrier.wait(timeout=30)
            try:
                results[k] = np.asarray(extract_to_store(X, path, embedders[k], chunk_size=3, verbose=0).embeddings)
            except Exception as exc:  # reported below with the trial number
                errors.append(exc)

        threads = [threading.Thread(target=extract, args=(k,)) for k in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=120)
        assert not errors, f"trial {trial}: {errors!r}"
        for result in results:
            np.testing.assert_allclose(result, expected, rtol=1e-5, atol=1e-6)
        assert not list(path.glob(".tmp-*"))


def test_a_folder_holding_only_skdfl_temporary_files_is_not_foreign(tmp_path):
    path = tmp_path / "store"
    path.mkdir()
    (path / ".tmp-store.json.abc123.part").write_text("{")  # left by a writer killed mid-rename
    store = extract_to_store(SeededImages(4), path, _embedder(), chunk_size=2, verbose=0)
    assert store.meta["complete"]


def test_store_of_an_augmentation_bank_keeps_every_block_and_its_names(tmp_path):
    X = SeededImages(6)
    embedder = _embedder(augmentations=["rot90", "flip_h"], resize="stretch")
    expected = embedder.fit_transform(np.stack([X[i] for i in range(len(X))]))
    store = extract_to_store(X, tmp_path / "s", _embedder(augmentations=["rot90", "flip_h"], resize="stretch"),
                             chunk_size=4, verbose=0)
    assert store.shape == expected.shape == (6, 3 * embedder.embedding_dim_)
    np.testing.assert_allclose(np.asarray(store.embeddings), expected, atol=1e-5)
    assert list(store.feature_names) == list(embedder.get_feature_names_out())
    assert store.feature_names[0].startswith("identity_")
    with pytest.raises(StoreMismatchError, match="augmentations"):
        extract_to_store(X, tmp_path / "s", _embedder(augmentations=["rot90"], resize="stretch"),
                         chunk_size=4, verbose=0)
