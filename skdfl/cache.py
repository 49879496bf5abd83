"""Content-addressed, on-disk cache of embeddings, shared by folds, clones and processes.

``BackboneEmbedder(cache=DIR)`` looks every (sample, view) up here before running the backbone and stores
what it had to compute, so ``GridSearchCV`` / ``cross_validate`` / Optuna over a ``Pipeline`` embed each
image once, whatever the number of folds, clones or worker processes.

Layout and keys
---------------
``DIR/<namespace>/<kk>/<key>.emb``

*namespace* (16 hex digits, described by ``DIR/<namespace>/namespace.json``) hashes everything that
changes the numbers but not the image: backbone identity and architecture, a sha256 of its weights
(parameters and buffers), pooling, input size, resize policy and its parameters, normalisation, the
*resolved* autocast precision (``precision="auto"`` keys as bf16 or fp32 on a CPU, fp16 on a GPU), the
embedding dimension and the skdfl version (a release may change preprocessing; a stale embedding is worse
than a re-extraction).

*key* is one **view** of one sample: ``sha256(namespace, content key of the source cell, colour)``. Entries
are per view rather than per sample so that trying ``views=["x20"]`` and then ``views=["x20", "x5"]``, or
adding ``"gray"`` to ``colors``, reuses every embedding already computed. The source column's *name* is not
part of the key: the same image under another column name has the same embedding.

The content key of a cell is

* an array: sha256 of its shape and uint8 pixels (after the float-to-uint8 conversion of
  :func:`skdfl.io.read_image`, so a float and a uint8 copy of one image share an entry);
* a file path, with ``file_key="stat"`` (default): absolute path, size and modification time in
  nanoseconds. Costs one ``stat``, reads nothing, so a warm cache never touches the image files; a file
  rewritten in place with the same size within the filesystem's timestamp granularity would be missed, and
  moving or copying the data set (another mount point on a cluster node) invalidates the entries;
* a file path, with ``file_key="content"``: sha256 of the file's bytes. Survives moves and copies and is
  exact, at the cost of reading every file on every lookup (cheap next to decoding and a forward pass, but
  it is I/O on network storage).

Entries are sharded by the first two hex digits of the key (256 folders) so no folder holds millions of
files.

Safety
------
An entry is ``b"SKDFLEMB" | uint32 dim | uint32 crc32(payload) | float32[dim]``, written to a temporary file
in its final folder and renamed over the target (``os.replace``, atomic on POSIX, NFS included), so readers
never see a partial entry and concurrent writers of the same key simply race to write identical bytes. An
entry with a wrong length, magic or checksum (a truncated copy, a disk error) is reported with a
:class:`CacheCorruptionWarning`, recomputed and rewritten; it is never returned. Entries are not fsync'ed:
after a power loss a torn entry fails its checksum and is recomputed.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import struct
import tempfile
import warnings
import weakref
import zlib
from pathlib import Path

import numpy as np
from torch import nn

from ._device import resolve_device, resolve_precision
from .backbones import weights_fingerprint as _backbone_fingerprint
from .io import ImageReadError, read_image

CACHE_FORMAT = 1
FILE_KEYS = ("stat", "content")

_MAGIC = b"SKDFLEMB"
_HEADER = struct.Struct("<8sII")
_SUFFIX = ".emb"
_NAMESPACE_FILE = "namespace.json"

# Fingerprints of fitted backbones, computed once per module object: hashing a ViT-L takes ~1 s.
_FINGERPRINTS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


class CacheCorruptionWarning(UserWarning):
    """A cache entry failed its integrity check; it was recomputed and rewritten."""


class CacheWriteWarning(UserWarning):
    """Embeddings could not be written to the cache (read-only or full disk); they were still returned."""


# --------------------------------------------------------------------------------------------- hashing
def weights_fingerprint(module: nn.Module) -> str:
    """sha256 (hex) of a module's parameters and buffers: :func:`skdfl.backbones.weights_fingerprint`.

    Memoised per module object, because hashing a ViT-L takes about a second and a fitted backbone is
    frozen.
    """
    try:
        return _FINGERPRINTS[module]
    except KeyError:
        pass
    digest = _backbone_fingerprint(module)
    _FINGERPRINTS[module] = digest
    return digest


def file_digest(path: str | os.PathLike, *, block: int = 1 << 20) -> str:
    """sha256 (hex) of a file's bytes, read in 1 MiB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(block):
            h.update(chunk)
    return h.hexdigest()


def content_key(cell, *, file_key: str = "stat", where: str = "image") -> str:
    """Key (hex) of one cell of ``X``: an image array or an image file path. See the module docstring.

    ``where`` names the cell in error messages (e.g. ``"sample 3, source 'x20'"``).
    """
    if isinstance(cell, (str, os.PathLike)):
        path = os.path.abspath(os.fspath(cell))
        if file_key == "content":
            try:
                return "file-sha256:" + file_digest(path)
            except FileNotFoundError:
                raise ImageReadError(f"image file not found: {path}") from None
        if file_key != "stat":
            raise ValueError(f"file_key must be one of {FILE_KEYS}, got {file_key!r}")
        try:
            st = os.stat(path)
        except FileNotFoundError:
            raise ImageReadError(f"image file not found: {path}") from None
        return hashlib.sha256(f"file|{path}|{st.st_size}|{st.st_mtime_ns}".encode()).hexdigest()
    if isinstance(cell, np.ndarray):
        img = np.ascontiguousarray(read_image(cell, where))
        h = hashlib.sha256(f"array|{img.shape}|".encode())
        h.update(memoryview(img).cast("B"))
        return h.hexdigest()
    raise TypeError(
        f"{where}: cannot build a cache key for a cell of type {type(cell).__name__}; the cache supports image "
        "arrays and file paths (use cache=None for other inputs)"
    )


def _stable_json(obj) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)


def embedding_namespace(embedder) -> dict:
    """Everything besides the image that determines a fitted embedder's output for one view.

    The returned dict is JSON-serialisable; its hash is the cache namespace and it is also recorded in
    embedding stores (:mod:`skdfl.store`) to refuse resuming with another configuration.
    """
    from . import __version__

    module = embedder.module_
    backbone = embedder.backbone
    name = backbone if isinstance(backbone, str) else f"{type(backbone).__module__}.{type(backbone).__qualname__}"
    dtype = resolve_precision(embedder.precision, resolve_device(embedder.device))
    config = embedder.data_config_
    pool = getattr(module, "global_pool", None)
    return {
        "format": CACHE_FORMAT,
        "skdfl": __version__,
        "backbone": name,
        # repr covers layer hyper-parameters that the weights' shapes do not (strides, activations).
        "architecture": hashlib.sha256(repr(module).encode()).hexdigest()[:16],
        "weights": weights_fingerprint(module),
        "pooling": None if pool is None else repr(pool),
        "input_size": list(embedder.input_size_),
        "resize": embedder.resize,
        "scale": embedder.scale,
        "interpolation": config.get("interpolation", "bicubic"),
        "crop_pct": config.get("crop_pct", 1.0) or 1.0,
        "mean": [float(m) for m in config["mean"]],
        "std": [float(s) for s in config["std"]],
        "precision": "fp32" if dtype is None else str(dtype).removeprefix("torch."),
        "embedding_dim": int(embedder.embedding_dim_),
    }


def namespace_id(description: dict) -> str:
    return hashlib.sha256(_stable_json(description).encode()).hexdigest()[:16]


# ----------------------------------------------------------------------------------------- atomic I/O
def atomic_write(path: str | os.PathLike, data: bytes, *, fsync: bool = False) -> None:
    """Write ``data`` to ``path`` atomically: a temporary file in the same folder, then ``os.replace``.

    ``fsync=True`` makes the content durable before the rename (power-loss safety, not needed against a
    killed process).
    """
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=path.suffix, dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            if fsync:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def encode_entry(vector: np.ndarray) -> bytes:
    payload = np.ascontiguousarray(vector, dtype="<f4").tobytes()
    return _HEADER.pack(_MAGIC, len(payload) // 4, zlib.crc32(payload)) + payload


def decode_entry(data: bytes, dim: int) -> np.ndarray | None:
    """The float32 vector of an entry, or ``None`` if the bytes are not a complete, intact entry."""
    if len(data) != _HEADER.size + 4 * dim:
        return None
    magic, n, crc = _HEADER.unpack_from(data)
    payload = memoryview(data)[_HEADER.size :]
    if magic != _MAGIC or n != dim or zlib.crc32(payload) != crc:
        return None
    return np.frombuffer(payload, dtype="<f4")


# --------------------------------------------------------------------------------------------- cache
class EmbeddingCache:
    """Per-view embedding cache on disk; pass it (or just a folder) as ``BackboneEmbedder(cache=...)``.

    Parameters
    ----------
    directory : str or Path
        Root folder (``~`` is expanded), created on first write. Share it between processes and machines (a network
        filesystem works: writes are atomic renames).
    file_key : {"stat", "content"}, default="stat"
        How image *files* are identified: path + size + mtime (no read) or a sha256 of their bytes
        (survives moving the data set). Arrays are always keyed by their pixels. See :mod:`skdfl.cache`.

    Attributes
    ----------
    hits, misses, corrupt : int
        (sample, view) lookups through this object. Counters are per object: :func:`sklearn.base.clone`
        deep-copies the parameter with fresh counters, and ``cache="DIR"`` makes a new object per call.
    """

    def __init__(self, directory, *, file_key: str = "stat"):
        if file_key not in FILE_KEYS:
            raise ValueError(f"file_key must be one of {FILE_KEYS}, got {file_key!r}")
        self.directory = Path(directory).expanduser()
        self.file_key = file_key
        self.hits = self.misses = self.corrupt = 0
        self._made: set[Path] = set()

    def __repr__(self) -> str:
        return f"EmbeddingCache({str(self.directory)!r}, file_key={self.file_key!r})"

    def __eq__(self, other) -> bool:
        return (
            isinstance(other, EmbeddingCache)
            and self.directory == other.directory
            and self.file_key == other.file_key
        )

    def __hash__(self) -> int:
        return hash((self.directory, self.file_key))

    def __deepcopy__(self, memo):
        # clone() deep-copies parameters; the copy must point at the same folder, with fresh counters.
        return type(self)(self.directory, file_key=self.file_key)

    # ------------------------------------------------------------------ entries
    def _entry_path(self, namespace: str, key: str) -> Path:
        return self.directory / namespace / key[:2] / f"{key}{_SUFFIX}"

    def _ensure_namespace(self, namespace: str, description: dict) -> None:
        folder = self.directory / namespace
        if folder in self._made:
            return
        folder.mkdir(parents=True, exist_ok=True)
        meta = folder / _NAMESPACE_FILE
        if not meta.exists():
            atomic_write(meta, (json.dumps(description, indent=2, sort_keys=True) + "\n").encode())
        self._made.add(folder)

    def get(self, namespace: str, key: str, dim: int) -> np.ndarray | None:
        """The cached vector, or ``None`` when absent or corrupt (counted in :attr:`corrupt`)."""
        try:
            with open(self._entry_path(namespace, key), "rb") as f:
                data = f.read()
        except FileNotFoundError:
            self.misses += 1
            return None
        vector = decode_entry(data, dim)
        if vector is None:
            self.corrupt += 1
            self.misses += 1
            return None
        self.hits += 1
        return vector

    def put(self, namespace: str, key: str, vector: np.ndarray) -> None:
        """Store ``vector`` under ``key`` atomically."""
        path = self._entry_path(namespace, key)
        if path.parent not in self._made:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._made.add(path.parent)
        atomic_write(path, encode_entry(vector))

    def clear(self) -> None:
        """Delete every entry and namespace under :attr:`directory` (the folder itself is kept)."""
        if self.directory.is_dir():
            for child in self.directory.iterdir():
                if child.is_dir() and (child / _NAMESPACE_FILE).exists():
                    shutil.rmtree(child)
        self._made.clear()

    # -------------------------------------------------------------------- hook
    def embed(self, embedder, sources, indices) -> np.ndarray:
        """Embeddings of samples ``indices`` of ``sources`` through a fitted ``embedder``, via the cache.

        Looks every (sample, view) up; runs the backbone once per *distinct* missing (image, colour), in
        blocks so that progress survives an interrupted run; returns exactly what
        ``embedder._embed(sources, indices)`` would (up to batch-composition rounding of the backbone).
        """
        description = embedding_namespace(embedder)
        namespace = namespace_id(description)
        self._ensure_namespace(namespace, description)
        views, dim = embedder.views_, embedder.embedding_dim_
        indices = np.asarray(indices)
        n, n_views = len(indices), len(views)

        cell_keys = {
            source: [
                content_key(sources[source][int(i)], file_key=self.file_key, where=f"sample {i}, source {source!r}")
                for i in indices
            ]
            for source in {v.source for v in views}
        }
        keys = [
            [hashlib.sha256(f"{namespace}|{cell_keys[v.source][k]}|{v.color}".encode()).hexdigest() for v in views]
            for k in range(n)
        ]

        out = np.empty((n, n_views * dim), dtype=np.float32)
        found: dict[str, np.ndarray] = {}
        # Samples grouped by the tuple of views they still need; duplicates are scheduled once.
        todo: dict[tuple[int, ...], list[int]] = {}
        corrupt_before = self.corrupt
        for k in range(n):
            need = []
            for j in range(n_views):
                key = keys[k][j]
                if key in found:
                    continue
                vector = self.get(namespace, key, dim)
                if vector is None:
                    found[key] = None  # scheduled
                    need.append(j)
                else:
                    found[key] = vector
            if need:
                todo.setdefault(tuple(need), []).append(k)
        if self.corrupt > corrupt_before:
            warnings.warn(
                f"{self.corrupt - corrupt_before} corrupt or truncated cache entries under {self.directory} "
                "were ignored and are being recomputed",
                CacheCorruptionWarning,
                stacklevel=3,
            )

        block = max(1024, 32 * embedder.batch_size)
        write_failed = None
        for need, positions in todo.items():
            sub = twin(embedder, views_=[views[j] for j in need])
            for start in range(0, len(positions), block):
                part = positions[start : start + block]
                feats = sub._embed(sources, indices[part]).reshape(len(part), len(need), dim)
                for row, k in enumerate(part):
                    for col, j in enumerate(need):
                        key = keys[k][j]
                        found[key] = feats[row, col]
                        if write_failed is None:
                            try:
                                self.put(namespace, key, feats[row, col])
                            except OSError as exc:
                                write_failed = exc

        if write_failed is not None:
            warnings.warn(
                f"could not write to the embedding cache {self.directory} ({write_failed}); "
                "the embeddings were computed but not cached",
                CacheWriteWarning,
                stacklevel=3,
            )
        for k in range(n):
            for j in range(n_views):
                out[k, j * dim : (j + 1) * dim] = found[keys[k][j]]
        return out


def twin(embedder, **attributes):
    """A shallow copy of a fitted embedder with some attributes replaced (shares the module).

    ``copy.copy`` would go through ``__getstate__``, which moves a GPU module to the CPU.
    """
    other = object.__new__(type(embedder))
    other.__dict__.update(embedder.__dict__)
    other.__dict__.update(attributes)
    return other


def as_cache(cache) -> EmbeddingCache:
    """``cache`` parameter of :class:`~skdfl.BackboneEmbedder` -> :class:`EmbeddingCache`."""
    if isinstance(cache, EmbeddingCache):
        return cache
    if isinstance(cache, (str, os.PathLike)):
        return EmbeddingCache(cache)
    raise TypeError(f"cache must be a folder path or an EmbeddingCache, got {type(cache).__name__}")


__all__ = [
    "CacheCorruptionWarning",
    "CacheWriteWarning",
    "EmbeddingCache",
    "atomic_write",
    "content_key",
    "embedding_namespace",
    "file_digest",
    "namespace_id",
    "weights_fingerprint",
]
