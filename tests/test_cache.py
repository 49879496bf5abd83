"""The on-disk embedding cache: keys, reuse across folds and clones, concurrency, corruption."""

from __future__ import annotations

import errno
import multiprocessing
import os
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image
from sklearn.base import clone
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GridSearchCV
from sklearn.pipeline import make_pipeline
from torch import nn

from skdfl import BackboneEmbedder
from skdfl.io import ImageReadError, ImageSource, as_sources
from skdfl.storage import (
    CacheCorruptionWarning,
    CacheWriteWarning,
    EmbeddingCache,
    content_key,
    decode_entry,
    encode_entry,
    namespace_id,
)


class CountingNet(nn.Module):
    """Tiny CNN counting the images it embeds, across deep copies (``clone``), in a class attribute.

    ``BackboneEmbedder.fit`` probes the module with one all-zero image to find the embedding size; real
    (normalised) images are never all zero, so the probe is not counted.
    """

    rows = 0

    def __init__(self, dim: int = 8):
        super().__init__()
        self.conv = nn.Conv2d(3, dim, 3, stride=2)
        self.pool = nn.AdaptiveAvgPool2d(1)

    def forward(self, x):
        if bool(x.any()):
            type(self).rows += x.shape[0]
        return self.pool(torch.relu(self.conv(x))).flatten(1)


def _images(n, seed=0, size=24):
    return np.random.default_rng(seed).integers(0, 256, (n, size, size, 3), dtype=np.uint8)


def _embedder(cache=None, **kw):
    torch.manual_seed(0)
    params = dict(image_size=24, precision="fp32", device="cpu", verbose=0, batch_size=16, cache=cache)
    return BackboneEmbedder(CountingNet(), **{**params, **kw})


@pytest.fixture(autouse=True)
def _reset_counter():
    CountingNet.rows = 0


def test_cached_transform_matches_uncached_and_second_call_is_free(tmp_path):
    X = pd.DataFrame({"x20": list(_images(20, 0)), "x5": list(_images(20, 1))})
    plain = _embedder(colors=["rgb", "gray"]).fit(X).transform(X)
    CountingNet.rows = 0
    cached = _embedder(tmp_path, colors=["rgb", "gray"]).fit(X)
    first = cached.transform(X)
    assert CountingNet.rows == 20 * 4  # every (sample, view) once
    np.testing.assert_allclose(first, plain, rtol=1e-5, atol=1e-6)
    second = cached.transform(X)
    assert CountingNet.rows == 20 * 4
    np.testing.assert_array_equal(first, second)
    assert first.dtype == np.float32 and first.flags.writeable


def test_gridsearch_runs_backbone_once_per_unique_image(tmp_path):
    X = _images(60)
    X[50:] = X[:10]  # duplicates: 50 unique images
    y = np.arange(60) % 2
    pipe = make_pipeline(_embedder(tmp_path), LogisticRegression(max_iter=300))
    grid = {"logisticregression__C": [0.01, 0.1, 1.0, 10.0]}
    search = GridSearchCV(pipe, grid, cv=3, n_jobs=1).fit(X, y)
    # 4 settings x 3 folds + refit = 13 fits, 25 transforms: still one forward per unique image.
    assert CountingNet.rows == 50
    assert len(search.cv_results_["params"]) == 4
    GridSearchCV(clone(pipe), grid, cv=3, n_jobs=1).fit(X, y)
    assert CountingNet.rows == 50


def test_views_are_cached_separately(tmp_path):
    X = _images(12)
    _embedder(tmp_path).fit(X).transform(X)
    assert CountingNet.rows == 12
    both = _embedder(tmp_path, colors=["rgb", "gray"]).fit(X).transform(X)
    assert CountingNet.rows == 24  # only the gray view was new
    np.testing.assert_allclose(both, _embedder(colors=["rgb", "gray"]).fit(X).transform(X), rtol=1e-5, atol=1e-6)


def _entries(root: Path) -> list[Path]:
    return sorted(root.rglob("*.emb"))


def test_truncated_or_corrupt_entries_are_recomputed_never_returned(tmp_path):
    X = _images(10)
    emb = _embedder(tmp_path).fit(X)
    reference = emb.transform(X)
    entries = _entries(tmp_path)
    assert len(entries) == 10
    data = entries[0].read_bytes()
    entries[0].write_bytes(data[: len(data) // 2])  # truncated
    flipped = bytearray(entries[1].read_bytes())
    flipped[-1] ^= 0xFF  # same length, wrong bytes
    entries[1].write_bytes(bytes(flipped))
    CountingNet.rows = 0
    with pytest.warns(CacheCorruptionWarning, match="2 corrupt"):
        again = emb.transform(X)
    assert CountingNet.rows == 2
    np.testing.assert_allclose(again, reference, rtol=1e-5, atol=1e-6)
    assert all(decode_entry(p.read_bytes(), emb.embedding_dim_) is not None for p in _entries(tmp_path))


def test_entry_format_detects_damage():
    v = np.arange(5, dtype=np.float32)
    data = encode_entry(v)
    np.testing.assert_array_equal(decode_entry(data, 5), v)
    assert decode_entry(data[:-1], 5) is None
    assert decode_entry(data, 6) is None
    assert decode_entry(b"garbage" + data[7:], 5) is None


def test_namespace_covers_everything_that_changes_the_numbers():
    X = _images(2)
    base = _embedder().fit(X)
    ns = namespace_id(base.embedding_signature())
    assert namespace_id(_embedder().fit(X).embedding_signature()) == ns  # same seed, same weights
    variants = [
        _embedder(image_size=32),
        _embedder(resize="stretch"),
        _embedder(precision="bf16"),
        BackboneEmbedder(CountingNet(), image_size=24, precision="fp32", verbose=0),  # other weights
    ]
    ids = {namespace_id(v.fit(X).embedding_signature()) for v in variants}
    assert ns not in ids and len(ids) == len(variants)
    # "auto" keys on what it resolves to, not on the word.
    auto = _embedder(precision="auto").fit(X)
    resolved = auto.embedding_signature()["precision"]
    assert resolved in {"fp32", "bfloat16"}
    assert _embedder(precision="fp32" if resolved == "fp32" else "bf16").fit(X).embedding_signature() == (
        auto.embedding_signature() | {"precision": resolved}
    )


def test_content_keys(tmp_path):
    img = _images(1)[0]
    assert content_key(img) == content_key(img.astype(np.float64) / 255.0)  # same pixels, same key
    assert content_key(img) != content_key(np.ascontiguousarray(img[:, ::-1]))
    path = tmp_path / "a.png"
    Image.fromarray(img).save(path)
    stat_key = content_key(str(path))
    assert content_key(path) == stat_key
    copy = tmp_path / "b.png"
    copy.write_bytes(path.read_bytes())
    assert content_key(copy) != stat_key  # "stat" keys on the path
    assert content_key(copy, file_key="content") == content_key(path, file_key="content")
    os.utime(path, ns=(0, 10**9))
    assert content_key(path) != stat_key  # a touched file is re-embedded
    with pytest.raises(ImageReadError, match="missing.png"):
        content_key(tmp_path / "missing.png")
    with pytest.raises(ImageReadError, match="missing.png"):
        content_key(tmp_path / "missing.png", file_key="content")
    # A cell of no image type is refused as read_image refuses it, naming the type, not blaming the cache.
    with pytest.raises(ImageReadError, match="got float") as info:
        content_key(3.5)
    assert "cache" not in str(info.value)
    # An array, a PIL image and a tensor of the same pixels share one entry.
    assert content_key(Image.fromarray(img)) == content_key(img)
    assert content_key(torch.from_numpy(img).permute(2, 0, 1)) == content_key(img)


class FakeRegion:
    """The smallest :class:`~skdfl.io.ImageSource`: pixels held in memory under a name; counts its reads."""

    reads = 0

    def __init__(self, name, pixels):
        self.name, self.pixels = name, pixels

    def read_rgb(self):
        type(self).reads += 1
        return self.pixels

    def content_key(self):
        return f"fake|{self.name}"

    def __repr__(self):
        return f"FakeRegion({self.name!r})"


def test_image_source_cells_embed_like_arrays_and_are_cached(tmp_path):
    imgs = _images(6)
    regions = [FakeRegion(f"r{i}", img) for i, img in enumerate(imgs)]
    assert isinstance(regions[0], ImageSource) and not isinstance(imgs[0], ImageSource)
    plain = _embedder().fit(imgs).transform(imgs)
    CountingNet.rows = FakeRegion.reads = 0
    emb = _embedder(tmp_path).fit(regions)
    first = emb.transform(regions)
    np.testing.assert_allclose(first, plain, rtol=1e-5, atol=1e-6)
    assert CountingNet.rows == 6 and FakeRegion.reads == 6
    # A warm cache keys regions by content_key() alone: no pixel is read, no image embedded.
    objects = np.empty(6, dtype=object)
    objects[:] = regions
    for X in (pd.Series(regions), objects, pd.DataFrame({"image": regions})):
        np.testing.assert_array_equal(emb.transform(X), first)
    assert CountingNet.rows == 6 and FakeRegion.reads == 6
    assert content_key(regions[0]) == content_key(FakeRegion("r0", imgs[1]))  # the object vouches for its key
    assert content_key(regions[0]) != content_key(imgs[0])
    sources, _ = as_sources(pd.DataFrame({"x20": regions, "x5": list(imgs)}))
    assert sources["x20"][2] is regions[2]


def test_image_source_errors_name_the_cell():
    good = FakeRegion("ok", _images(1)[0])
    emb = _embedder().fit([good])
    with pytest.raises(ImageReadError, match=r"sample 1.*FakeRegion\('gray'\).*shape \(24, 24\)"):
        emb.transform([good, FakeRegion("gray", _images(1)[0][..., 0])])
    with pytest.raises(ImageReadError, match=r"FakeRegion\('list'\).*returned list"):
        emb.transform([FakeRegion("list", [[0]])])
    with pytest.raises(TypeError, match=r"FakeRegion\('nokey'\).*non-empty str"):
        content_key(type("NoKey", (FakeRegion,), {"content_key": lambda self: None})("nokey", None))
    with pytest.raises(ValueError, match="single ImageSource"):
        emb.transform(good)


def test_cache_parameter_is_cloned_and_validated(tmp_path):
    cache = EmbeddingCache(tmp_path, file_key="content")
    emb = _embedder(cache)
    twin = clone(emb)
    assert twin.cache == cache and twin.cache is not cache
    with pytest.raises(ValueError, match="file_key"):
        EmbeddingCache(tmp_path, file_key="mtime")
    with pytest.raises(Exception, match="cache"):
        _embedder(cache=3).fit(_images(2))


def test_file_inputs_are_cached(tmp_path):
    paths = []
    for i, img in enumerate(_images(6)):
        paths.append(str(tmp_path / f"{i}.png"))
        Image.fromarray(img).save(paths[-1])
    emb = _embedder(tmp_path / "cache").fit(paths)
    first = emb.transform(paths)
    assert CountingNet.rows == 6
    np.testing.assert_array_equal(emb.transform(paths), first)
    assert CountingNet.rows == 6


def _fill(emb, X, start, stop, barrier):
    torch.set_num_threads(1)  # a forked child must not reuse the parent's OpenMP pool
    barrier.wait(timeout=60)
    emb.transform(X[start:stop])


def test_two_processes_fill_one_cache_concurrently(tmp_path):
    X = _images(400, size=32)
    emb = _embedder(tmp_path, image_size=32).fit(X[:1])
    # Forked, not spawned: the children start in milliseconds (no torch/timm import) and the barrier makes
    # them write the overlapping rows 100-300 at the same time.
    ctx = multiprocessing.get_context("fork")
    barrier = ctx.Barrier(2)
    procs = [ctx.Process(target=_fill, args=(emb, X, a, b, barrier)) for a, b in ((0, 300), (100, 400))]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=120)
        assert p.exitcode == 0
    entries = _entries(tmp_path)
    assert len(entries) == 400
    assert all(decode_entry(p.read_bytes(), emb.embedding_dim_) is not None for p in entries)
    assert not list(tmp_path.rglob(".tmp-*"))  # no temporary file left behind
    CountingNet.rows = 0
    cache = EmbeddingCache(tmp_path)
    out = emb.set_params(cache=cache).embed_rows({"image": list(X)}, np.arange(400))
    assert cache.hits == 400 and CountingNet.rows == 0
    np.testing.assert_allclose(out, _embedder(image_size=32).fit(X[:1]).transform(X), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EROFS])
def test_new_cache_folder_on_a_full_or_readonly_disk_warns_and_still_embeds(tmp_path, monkeypatch, code):
    """Simulated with the OS calls failing under the cache folder (as root, chmod cannot make a folder
    read-only); the real read-only folder is the next test."""
    X = _images(4)
    expected = _embedder().fit(X).transform(X)
    root = tmp_path / "disk" / "new-cache"
    real_mkdir, real_mkstemp = os.mkdir, tempfile.mkstemp

    def under_root(path) -> bool:
        return path is not None and str(path).startswith(str(root))

    def failing_mkdir(path, *args, **kwargs):
        if under_root(path):
            raise OSError(code, os.strerror(code), str(path))
        return real_mkdir(path, *args, **kwargs)

    def failing_mkstemp(*args, dir=None, **kwargs):
        if under_root(dir):
            raise OSError(code, os.strerror(code), str(dir))
        return real_mkstemp(*args, dir=dir, **kwargs)

    monkeypatch.setattr(os, "mkdir", failing_mkdir)
    monkeypatch.setattr(tempfile, "mkstemp", failing_mkstemp)
    emb = _embedder(root).fit(X)
    with pytest.warns(CacheWriteWarning, match="new-cache"):
        out = emb.transform(X)
    np.testing.assert_allclose(out, expected, rtol=1e-6, atol=1e-7)
    assert not root.exists()


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root can write into a 0500 folder")
def test_new_cache_folder_under_a_readonly_folder_warns(tmp_path):
    X = _images(3)
    readonly = tmp_path / "ro"
    readonly.mkdir()
    readonly.chmod(0o500)
    try:
        emb = _embedder(readonly / "cache").fit(X)
        with pytest.warns(CacheWriteWarning):
            out = emb.transform(X)
        np.testing.assert_allclose(out, _embedder().fit(X).transform(X), rtol=1e-6, atol=1e-7)
    finally:
        readonly.chmod(0o700)


def test_full_disk_while_writing_an_entry_names_the_file_and_leaves_no_temporary(tmp_path, monkeypatch):
    cache = EmbeddingCache(tmp_path)
    namespace = cache.namespace({"test": 1})

    real_fdopen = os.fdopen

    class FullDiskFile:
        """The temporary file of atomic_write on a disk that fills up: write() fails as the OS does."""

        def __init__(self, fd, *args, **kwargs):
            self.file = real_fdopen(fd, *args, **kwargs)

        def __getattr__(self, name):
            return getattr(self.file, name)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.file.close()

        def write(self, data):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))  # no filename, like the real one

    monkeypatch.setattr(os, "fdopen", FullDiskFile)
    with pytest.raises(OSError, match=r"No space left.*ab12\.emb") as info:
        cache.put(namespace, "ab12", np.ones(3, np.float32))
    assert info.value.errno == errno.ENOSPC
    monkeypatch.undo()
    assert not list(tmp_path.rglob(".tmp-*")) and not list(tmp_path.rglob("*.emb"))
