"""Content-keyed, on-disk store of embedding vectors, shared by folds, clones and processes.

The cache knows vectors and keys, not models: the caller (:class:`~skdfl.BackboneEmbedder` with
``cache=DIR``) decides what a namespace and a key stand for, looks its (sample, view) pairs up and puts
back what it had to compute; see the embedder's documentation for the keys it uses.

Layout
------
``DIR/<namespace>/<kk>/<key>.emb``

*namespace* (16 hex digits, :func:`namespace_id`) is the hash of a JSON description of everything besides
the image that determines the vectors stored under it; the description is kept in
``DIR/<namespace>/namespace.json`` so that a human can tell namespaces apart. *key* is a hex string
chosen by the caller; entries are sharded by its first two digits (256 folders) so no folder holds
millions of files.

Content keys of cells
---------------------
:func:`content_key` gives one cell of ``X`` a stable identity without embedding it:

* an array, a PIL image or a tensor: sha256 of its shape and uint8 pixels as
  :func:`skdfl.io.read_image` returns them (so a float and a uint8 copy of one image, or an array and a
  PIL image of it, share an entry);
* a file path, with ``file_key="stat"`` (default): absolute path, size and modification time in
  nanoseconds. Costs one ``stat``, reads nothing, so a warm cache never touches the image files; a file
  rewritten in place with the same size within the filesystem's timestamp granularity would be missed, and
  moving or copying the data set (another mount point on a cluster node) invalidates the entries;
* a file path, with ``file_key="content"``: sha256 of the file's bytes. Survives moves and copies and is
  exact, at the cost of reading every file on every lookup (cheap next to decoding and a forward pass, but
  it is I/O on network storage);
* an :class:`skdfl.io.ImageSource` (a slide region, ...): sha256 of ``"source|" + cell.content_key()``.
  Reads no pixels; the object vouches that one key means one image.

Safety
------
An entry is ``b"SKDFLEMB" | uint32 dim | uint32 crc32(payload) | float32[dim]``, written atomically
(:func:`~skdfl.storage.atomic_write`), so readers never see a partial entry and concurrent writers of the
same key simply race to write identical bytes. An entry with a wrong length, magic or checksum (a
truncated copy, a disk error) reads as missing and is counted in :attr:`EmbeddingCache.corrupt`; it is
never returned. Entries are not fsync'ed: after a power loss a torn entry fails its checksum.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import struct
import zlib
from pathlib import Path

import numpy as np

from ..io import ImageReadError, ImageSource, read_image
from ._atomic import atomic_write, atomic_write_json

FILE_KEYS = ("stat", "content")

_MAGIC = b"SKDFLEMB"
_HEADER = struct.Struct("<8sII")
_SUFFIX = ".emb"
_NAMESPACE_FILE = "namespace.json"


class CacheCorruptionWarning(UserWarning):
    """A cache entry failed its integrity check; it was recomputed and rewritten."""


class CacheWriteWarning(UserWarning):
    """Embeddings could not be written to the cache (read-only or full disk); they were still returned."""


# --------------------------------------------------------------------------------------------- hashing
def file_digest(path: str | os.PathLike, *, block: int = 1 << 20) -> str:
    """sha256 (hex) of a file's bytes, read in 1 MiB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(block):
            h.update(chunk)
    return h.hexdigest()


def content_key(cell, *, file_key: str = "stat", where: str = "image") -> str:
    """Key (hex) of one cell of ``X``: an image array, an image file path or an ImageSource.

    See the module docstring. ``where`` names the cell in error messages (e.g. ``"sample 3, source 'x20'"``).
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
    if isinstance(cell, ImageSource):
        key = cell.content_key()
        if not isinstance(key, str) or not key:
            raise TypeError(f"{where}: {cell!r}.content_key() returned {key!r}; it must be a non-empty str")
        return hashlib.sha256(f"source|{key}".encode()).hexdigest()
    # Arrays, PIL images and tensors: keyed by their pixels as read_image returns them, so one image in any
    # of these forms has one entry. read_image names the cell when it is missing or of no image type.
    img = np.ascontiguousarray(read_image(cell, where))
    h = hashlib.sha256(f"array|{img.shape}|".encode())
    h.update(memoryview(img).cast("B"))
    return h.hexdigest()


def namespace_id(description: dict) -> str:
    """16 hex digits identifying a JSON-serialisable description (key order does not matter)."""
    text = json.dumps(description, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def encode_entry(vector: np.ndarray) -> bytes:
    """The bytes of one cache entry holding ``vector`` (float32, with a length and a checksum)."""
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
    """A folder of float32 vectors under content keys; pass it (or just a folder) as ``BackboneEmbedder(cache=...)``.

    Parameters
    ----------
    directory : str or Path
        Root folder (``~`` is expanded), created on first write. Share it between processes and machines (a
        network filesystem works: writes are atomic renames).
    file_key : {"stat", "content"}, default="stat"
        How image *files* are identified by :meth:`cell_key`: path + size + mtime (no read) or a sha256 of
        their bytes (survives moving the data set). Arrays are always keyed by their pixels. See
        :mod:`skdfl.storage` (:func:`content_key`).

    Attributes
    ----------
    hits, misses, corrupt : int
        Lookups (:meth:`get`) through this object. Counters are per object: :func:`sklearn.base.clone`
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

    # ------------------------------------------------------------------ keys
    def cell_key(self, cell, *, where: str = "image") -> str:
        """:func:`content_key` of one cell of ``X`` with this cache's ``file_key``."""
        return content_key(cell, file_key=self.file_key, where=where)

    def namespace(self, description: dict) -> str:
        """The namespace id of ``description`` (:func:`namespace_id`); records the description on disk.

        Writing is lazy and best effort: a read-only cache still serves lookups.
        """
        namespace = namespace_id(description)
        folder = self.directory / namespace
        if folder not in self._made:
            try:
                folder.mkdir(parents=True, exist_ok=True)
                meta = folder / _NAMESPACE_FILE
                if not meta.exists():
                    atomic_write_json(meta, description)
                self._made.add(folder)
            except OSError:
                pass  # reported by put(), which the caller reports once
        return namespace

    # ------------------------------------------------------------------ entries
    def _entry_path(self, namespace: str, key: str) -> Path:
        return self.directory / namespace / key[:2] / f"{key}{_SUFFIX}"

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
        """Store ``vector`` under ``key`` atomically (``OSError`` on a read-only or full disk)."""
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


def as_cache(cache) -> EmbeddingCache:
    """A ``cache`` parameter (folder path or :class:`EmbeddingCache`) as an :class:`EmbeddingCache`."""
    if isinstance(cache, EmbeddingCache):
        return cache
    if isinstance(cache, (str, os.PathLike)):
        return EmbeddingCache(cache)
    raise TypeError(f"cache must be a folder path or an EmbeddingCache, got {type(cache).__name__}")


__all__ = [
    "FILE_KEYS",
    "CacheCorruptionWarning",
    "CacheWriteWarning",
    "EmbeddingCache",
    "as_cache",
    "content_key",
    "decode_entry",
    "encode_entry",
    "file_digest",
    "namespace_id",
]
