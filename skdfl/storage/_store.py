"""Streaming, resumable extraction of embeddings to an on-disk store, read back memory-mapped.

A store is a folder::

    store.json          what was extracted (embedding configuration, shape, dtype, chunking, views)
    embeddings.npy      (n_samples, n_features) float32 or float16, a plain .npy file
    chunks/00000012.json  one marker per finished chunk: rows, crc32 of its bytes
    index.json          the DataFrame/Series index of X, when it had one (pandas "table" JSON: dtypes kept)

Why ``.npy`` + per-chunk markers rather than zarr: ``np.load(mmap_mode="r")`` gives a zero-copy
``numpy.memmap`` that every scikit-learn estimator and :class:`~skdfl.heads.FocalHeadClassifier` take as
is, with no extra dependency; preallocating the file once lets any process (a Dask worker on another node
of a shared filesystem) write its rows with ``pwrite`` at a fixed offset, and per-chunk marker files,
created by atomic rename after the rows are fsync'ed, are a multi-writer manifest that needs no lock and
no append (``O_APPEND`` is not atomic on NFS). zarr would add compression, which embeddings barely
benefit from, and a dependency.

Resuming after ``kill -9`` skips the chunks with a marker whose checksum still matches and recomputes the
others (a half-written chunk has no marker); ``store.json`` is marked complete only when every chunk is.
Peak memory is one chunk of images and embeddings, independent of ``n_samples``: images are read through
the input's ``__getitem__`` one batch at a time and rows go to the file with ``pwrite``, never through a
writable memory map whose dirty pages would count against the process.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
import zlib
from collections.abc import Iterable
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from filelock import FileLock, Timeout
from sklearn.base import clone
from sklearn.exceptions import NotFittedError
from sklearn.utils.validation import check_is_fitted
from tqdm.auto import tqdm

from ..io import ImageReadError, as_sources
from ..views import View, feature_names
from ._atomic import TMP_PREFIX, atomic_write_json, default_file_mode, error_naming
from ._cache import content_key
from ._chunks import (
    CHUNKS_DIR,
    DATA_FILE,
    INDEX_FILE,
    LOCK_FILE,
    META_FILE,
    ChunkWriter,
    chunk_bounds,
    extract_chunk,
    marker_path,
)
from ._memmap import open_store_array, register_dask_serializers

STORE_FORMAT = 1
# Progress bars appear only for jobs still running after this long (tqdm's delay): no flash on small calls.
PROGRESS_DELAY_S = 2.0
DTYPES = ("float32", "float16")
# What an embedder must offer the store: the public extraction protocol of BackboneEmbedder.
_EMBEDDER_PROTOCOL = ("embed_rows", "check_sources", "embedding_signature")


class IncompleteStoreError(RuntimeError):
    """The store's extraction has not finished; resume it with the same call (or ``skdfl embed``)."""


class StoreMismatchError(ValueError):
    """The folder holds a store of a different extraction (backbone, weights, views, inputs...)."""


# ------------------------------------------------------------------------------------------- inputs
def _first_sample(X):
    """A one-sample version of ``X`` in a layout ``BackboneEmbedder.fit`` accepts."""
    if isinstance(X, (pd.DataFrame, pd.Series)):
        return X.iloc[:1]
    return [X[0]]


def _cell_key(cell) -> str:
    try:
        return content_key(cell)
    except (TypeError, ImageReadError):
        # A cell that cannot be read is reported, naming its sample and source, when it is embedded.
        return hashlib.sha256(f"{type(cell).__qualname__}|{cell!r}".encode()).hexdigest()


def _input_digest(sources: dict, n: int, chunk_size: int) -> str:
    """A cheap fingerprint of the input: its length and the first cell of every chunk.

    Catches resuming with another data set or order without reading every image again.
    """
    h = hashlib.sha256(f"{n}".encode())
    for name in sorted(sources):
        for start in range(0, n, chunk_size):
            h.update(f"|{name}|{start}|{_cell_key(sources[name][start])}".encode())
    return h.hexdigest()


def _prepare_embedder(embedder, X, sources):
    """Fit a clone of ``embedder`` on one sample of ``X`` if it is not fitted; check its sources."""
    if not all(callable(getattr(embedder, name, None)) for name in _EMBEDDER_PROTOCOL):
        raise TypeError(
            f"embedder must be a BackboneEmbedder (or offer its extraction protocol: "
            f"{', '.join(_EMBEDDER_PROTOCOL)}), got {type(embedder).__name__}"
        )
    try:
        check_is_fitted(embedder)
    except NotFittedError:
        embedder = clone(embedder).fit(_first_sample(X))
    embedder.check_sources(sources)
    return embedder


# -------------------------------------------------------------------------------------- store on disk
def _data_offset(data_file: Path) -> int:
    with open(data_file, "rb") as f:
        version = np.lib.format.read_magic(f)
        if version == (1, 0):
            np.lib.format.read_array_header_1_0(f)
        else:
            np.lib.format.read_array_header_2_0(f)
        return f.tell()


def _read_meta(path: Path) -> dict | None:
    try:
        return json.loads((path / META_FILE).read_text())
    except FileNotFoundError:
        return None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"{path / META_FILE} is not a valid skdfl store description: {exc}") from exc


def _write_meta(path: Path, meta: dict) -> None:
    atomic_write_json(path / META_FILE, meta, fsync=True)


def _remove_store(path: Path) -> None:
    """Delete only the files a store consists of (never anything else a user put in the folder)."""
    for name in (META_FILE, DATA_FILE, INDEX_FILE):
        try:
            (path / name).unlink()
        except FileNotFoundError:
            pass
    shutil.rmtree(path / CHUNKS_DIR, ignore_errors=True)


def _create_store(path: Path, meta: dict, index: pd.Index | None) -> None:
    """Write a new, empty store; on any failure (a full disk...) remove what was written and re-raise."""
    _remove_store(path)  # leftovers of a creation interrupted before store.json existed
    tmp = path / f"{TMP_PREFIX}{DATA_FILE}"
    try:
        (path / CHUNKS_DIR).mkdir()
        shape, dtype = tuple(meta["shape"]), np.dtype(meta["dtype"])
        # open_memmap seeks to the end and writes one byte: a sparse file, nothing is zero-filled in RAM.
        np.lib.format.open_memmap(tmp, mode="w+", dtype=dtype, shape=shape)._mmap.close()
        os.replace(tmp, path / DATA_FILE)
        if index is not None:
            pd.DataFrame(index=index).to_json(path / INDEX_FILE, orient="table")
        _write_meta(path, meta)  # last: a folder without store.json is not a store
    except BaseException as exc:
        tmp.unlink(missing_ok=True)
        _remove_store(path)
        if isinstance(exc, OSError):
            raise error_naming(exc, path, "creating the embedding store") from exc
        raise


def _foreign_entries(path: Path) -> list[str]:
    """Names in the folder ``path`` that no store writes (its files, lock, temporary files)."""
    ours = {META_FILE, DATA_FILE, INDEX_FILE, CHUNKS_DIR, LOCK_FILE}
    return sorted(p.name for p in path.iterdir() if p.name not in ours and not p.name.startswith(TMP_PREFIX))


@contextmanager
def _store_lock(path: Path, verbose: int):
    """Hold the store's lock file: one extraction at a time per store, across threads and processes.

    A second ``extract_to_store`` on the same path (another process, a double-clicked job) waits for the
    first, then finds its chunks done. The OS releases the lock of a killed process.
    """
    lock = FileLock(path / LOCK_FILE, mode=default_file_mode())
    try:
        lock.acquire(timeout=0)
    except Timeout:
        if verbose:
            print(f"waiting for another extraction into {path} to finish", file=sys.stderr, flush=True)
        lock.acquire()
    try:
        yield
    finally:
        lock.release()


def _done_chunks(path: Path, bounds, *, verify: bool) -> dict[int, dict]:
    """Markers of finished chunks; with ``verify``, only those whose bytes still match their crc32."""
    done = {}
    data = None
    if verify:
        data = np.load(path / DATA_FILE, mmap_mode="r")
    for k, start, stop in bounds:
        try:
            marker = json.loads(Path(marker_path(path, k)).read_text())
        except (FileNotFoundError, json.JSONDecodeError, UnicodeDecodeError):
            continue
        if marker.get("start") != start or marker.get("stop") != stop:
            continue
        if data is not None and zlib.crc32(memoryview(np.ascontiguousarray(data[start:stop])).cast("B")) != marker.get("crc32"):
            continue
        done[k] = marker
    del data
    return done


def _describe(embedder, n: int, dtype: str, chunk_size: int, digest: str, index) -> dict:
    # An augmentation bank multiplies the columns (augmentation-major); a stain colour depends on its
    # reference image. Both change the numbers without changing the embedder's per-view signature.
    augmentations = list(getattr(embedder, "augmentations_", ["identity"]))
    stain = {color: normalizer.fingerprint() for color, normalizer in getattr(embedder, "stain_normalizers_", {}).items()}
    return {
        "format": STORE_FORMAT,
        "complete": False,
        "shape": [n, len(augmentations) * len(embedder.views_) * embedder.embedding_dim_],
        "augmentations": augmentations,
        "stain": stain,
        "dtype": dtype,
        "chunk_size": chunk_size,
        "n_chunks": -(-n // chunk_size),
        "views": [list(v) for v in embedder.views_],
        "embedding_dim": int(embedder.embedding_dim_),
        "embedding": embedder.embedding_signature(),
        "input_digest": digest,
        "has_index": index is not None,
    }


def _extract_locked(path, X, sources, embedder, meta, index, n, chunk_size, *, resume, overwrite, verify,
                    client, write_on, verbose) -> None:
    """The body of :func:`extract_to_store`, run while holding the store's lock."""
    old = _read_meta(path)
    if old is not None and overwrite:
        old = None
    if old is not None:
        if not resume:
            raise FileExistsError(f"{path} already holds an embedding store; pass resume=True or overwrite=True")
        # Stores written before augmentation banks and stain colours existed had neither.
        old = {"augmentations": ["identity"], "stain": {}, **old}
        diff = [k for k in _MUST_MATCH if old.get(k) != meta[k]]
        if diff:
            raise StoreMismatchError(
                f"the store at {path} was made by a different extraction (differs in: {', '.join(diff)}); "
                "pass overwrite=True to replace it or choose another path"
            )
    if old is None:
        if _foreign_entries(path):
            raise FileExistsError(f"{path} is a non-empty folder that is not an embedding store; choose another path")
        _create_store(path, meta, index)

    bounds = chunk_bounds(n, chunk_size)
    done = _done_chunks(path, bounds, verify=verify and old is not None)
    pending = [b for b in bounds if b[0] not in done]
    if pending or not (old or {}).get("complete"):
        if (old or {}).get("complete"):
            _write_meta(path, {**old, "complete": False})  # a repair is under way
        writer = ChunkWriter(str(path), meta["dtype"], meta["shape"][1], _data_offset(path / DATA_FILE))
        rows_done = n - sum(stop - start for _, start, stop in pending)
        with tqdm(total=n, initial=rows_done, desc="extracting", unit="sample", disable=not verbose,
                  delay=PROGRESS_DELAY_S) as bar:
            progress = lambda marker: bar.update(marker["stop"] - marker["start"])  # noqa: E731
            if client is not None:
                from ._dask import extract_distributed

                extract_distributed(X, embedder, writer, pending, client, callback=progress, write_on=write_on)
            else:
                for k, start, stop in pending:
                    progress(extract_chunk(embedder, sources, writer, k, start, stop))
        missing = set(range(len(bounds))) - set(_done_chunks(path, bounds, verify=False))
        if missing:
            raise IncompleteStoreError(f"{path}: chunks {sorted(missing)[:10]} were not written; run again to resume")
        _write_meta(path, {**meta, "complete": True})


_MUST_MATCH = ("format", "shape", "dtype", "chunk_size", "views", "augmentations", "stain", "embedding",
               "input_digest")


def extract_to_store(
    X,
    path,
    embedder,
    *,
    chunk_size: int = 4096,
    dtype: str = "float32",
    resume: bool = True,
    overwrite: bool = False,
    verify: bool = True,
    client=None,
    write_on: str = "workers",
    verbose: int = 1,
) -> EmbeddingStore:
    """Embed ``X`` chunk by chunk into the store folder ``path``; resumable, memory-bounded, distributable.

    Parameters
    ----------
    X : DataFrame, array or sequence
        One column per source (DataFrame of paths or arrays), an ``(n, H, W, 3)`` array (a memory-mapped
        one works), or any sequence with ``__len__``/``__getitem__`` returning paths or images. Images are
        read lazily, one batch at a time.
    path : str or Path
        Store folder (created). See :mod:`skdfl.storage` for its layout.
    embedder : BackboneEmbedder
        Fitted, or unfitted (then a clone is fitted on the first sample of ``X``). Its ``cache`` is not
        used: the store is the cache. For a bitwise-reproducible store use ``precision="fp32"``.
    chunk_size : int, default=4096
        Samples per chunk: the unit of memory, of resumption and of distribution.
    dtype : {"float32", "float16"}, default="float32"
        Storage type. ``float16`` halves the file; consumers that need float32 then copy what they read.
    resume : bool, default=True
        If ``path`` holds an unfinished (or finished) store of the same extraction, keep its finished
        chunks. A store of a different extraction (other backbone, weights, geometry, views, inputs...)
        is an error naming the differences.
    overwrite : bool, default=False
        Delete an existing store at ``path`` first.
    verify : bool, default=True
        When ``path`` already holds this store (finished or not), re-check the crc32 of its finished
        chunks (one read of the file) and recompute those that fail.
    client : distributed.Client, default=None
        Run the chunks on a Dask cluster, one backbone per worker (see :mod:`skdfl.distributed`).
    write_on : {"workers", "client"}, default="workers"
        With ``client``: who writes the rows. ``"workers"`` needs ``path`` on a filesystem every worker
        sees; ``"client"`` ships the rows back to this process instead.
    verbose : int, default=1
        ``0`` is silent; ``>=1`` shows a progress bar over samples once the extraction has run for
        2 seconds.

    Returns
    -------
    EmbeddingStore
        The finished store, read back memory-mapped (:func:`load_store`).

    Notes
    -----
    One extraction at a time writes a store: calls on the same ``path`` (threads, processes, jobs on one
    shared filesystem) take turns through a lock file in the folder (``filelock``); a later one finds the
    chunks of the earlier done. A failure to create the store (a full or read-only disk) removes what was
    written and raises an ``OSError`` naming the folder.
    """
    if not isinstance(chunk_size, (int, np.integer)) or chunk_size < 1:
        raise ValueError(f"chunk_size must be a positive integer, got {chunk_size!r}")
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {DTYPES}, got {dtype!r}")
    path = Path(path).expanduser()
    if path.exists() and not path.is_dir():
        raise NotADirectoryError(f"store path {path} exists and is not a folder")

    sources, index = as_sources(X)
    n = len(next(iter(sources.values())))
    embedder = _prepare_embedder(embedder, X, sources)
    meta = _describe(embedder, n, dtype, int(chunk_size), _input_digest(sources, n, int(chunk_size)), index)

    if path.is_dir() and _read_meta(path) is None and _foreign_entries(path):
        raise FileExistsError(f"{path} is a non-empty folder that is not an embedding store; choose another path")
    path.mkdir(parents=True, exist_ok=True)
    with _store_lock(path, verbose):
        _extract_locked(path, X, sources, embedder, meta, index, n, int(chunk_size),
                        resume=resume, overwrite=overwrite, verify=verify, client=client, write_on=write_on,
                        verbose=verbose)
    return load_store(path)


# -------------------------------------------------------------------------------------------- reading
@dataclass(frozen=True)
class EmbeddingStore:
    """A finished (or explicitly partial) store, read back memory-mapped.

    Attributes
    ----------
    path : Path
    embeddings : StoreArray
        ``(n_samples, n_features)`` read-only memory map; pass it straight to estimators.
    feature_names : ndarray of str
        ``<source>_<color>_<k>`` per column, as :meth:`BackboneEmbedder.get_feature_names_out`.
    index : pandas.Index or None
        The index of the DataFrame/Series the store was extracted from.
    meta : dict
        The content of ``store.json`` (embedding configuration, dtype, chunking, views).
    """

    path: Path
    embeddings: np.ndarray = field(repr=False)
    feature_names: np.ndarray = field(repr=False)
    index: pd.Index | None = field(repr=False)
    meta: dict = field(repr=False)

    def __len__(self) -> int:
        return self.embeddings.shape[0]

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self.embeddings.shape)


def load_store(path, *, allow_partial: bool = False, verify: bool = False) -> EmbeddingStore:
    """Open a store written by :func:`extract_to_store` (or ``skdfl embed``) without loading it.

    Parameters
    ----------
    path : str or Path
    allow_partial : bool, default=False
        Open an unfinished store; its unwritten rows read as zeros.
    verify : bool, default=False
        Check every chunk against its crc32 (reads the whole file once) and raise on a mismatch.
    """
    path = Path(path).expanduser()
    meta = _read_meta(path) if path.is_dir() else None
    if meta is None:
        raise FileNotFoundError(f"no embedding store at {path} (missing {META_FILE})")
    bounds = chunk_bounds(meta["shape"][0], meta["chunk_size"])
    if not meta.get("complete") and not allow_partial:
        n_done = len(_done_chunks(path, bounds, verify=False))
        raise IncompleteStoreError(
            f"the store at {path} is incomplete ({n_done} of {len(bounds)} chunks); resume the extraction "
            "(extract_to_store / skdfl embed with the same arguments) or pass allow_partial=True"
        )
    if verify:
        good = _done_chunks(path, bounds, verify=True)
        bad = sorted(set(range(len(bounds))) - set(good))
        if bad and meta.get("complete"):
            raise ValueError(f"the store at {path} is corrupt: chunks {bad[:10]} fail their checksum")
    register_dask_serializers()
    data_file = path / DATA_FILE
    embeddings = open_store_array(str(data_file.resolve()), meta["dtype"], tuple(meta["shape"]), _data_offset(data_file))
    views = [View(*v) for v in meta["views"]]
    index = None
    if meta.get("has_index"):
        index = pd.read_json(path / INDEX_FILE, orient="table").index
    augmentations = meta.get("augmentations", ["identity"])
    names = feature_names(views, meta["embedding_dim"], augmentations if len(augmentations) > 1 else None)
    return EmbeddingStore(path, embeddings, names, index, meta)


def iter_chunks(store: EmbeddingStore, size: int = 65536) -> Iterable[tuple[int, np.ndarray]]:
    """``(start, float32 block)`` over a store: process a float16 store in bounded memory."""
    for start in range(0, len(store), size):
        yield start, np.asarray(store.embeddings[start : start + size], dtype=np.float32)


__all__ = [
    "DTYPES",
    "EmbeddingStore",
    "IncompleteStoreError",
    "StoreMismatchError",
    "extract_to_store",
    "iter_chunks",
    "load_store",
]
