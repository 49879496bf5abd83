"""The chunk: unit of work, of memory and of resumption of a store, shared by local and Dask extraction.

A store's rows ``[0, n)`` are cut into chunks of ``chunk_size`` rows (:func:`chunk_bounds`). Whoever
computes a chunk (this process or a Dask worker) embeds its rows through the embedder's public extraction
protocol (:meth:`skdfl.BackboneEmbedder.embed_rows`) and hands them to a :class:`ChunkWriter`, which writes
them at their fixed offset in the preallocated data file and then drops the chunk's marker file.
"""

from __future__ import annotations

import json
import os
import zlib
from dataclasses import dataclass

import numpy as np

from ._atomic import atomic_write, error_naming

META_FILE = "store.json"
DATA_FILE = "embeddings.npy"
CHUNKS_DIR = "chunks"
INDEX_FILE = "index.json"
LOCK_FILE = ".skdfl-store.lock"


def chunk_bounds(n: int, chunk_size: int) -> list[tuple[int, int, int]]:
    """``(chunk, start, stop)`` of every chunk of ``n`` rows."""
    return [(k, start, min(n, start + chunk_size)) for k, start in enumerate(range(0, n, chunk_size))]


def marker_path(path: str | os.PathLike, chunk: int) -> str:
    """The marker file of ``chunk`` in the store folder ``path``; it exists once the chunk is durable."""
    return os.path.join(path, CHUNKS_DIR, f"{chunk:08d}.json")


@dataclass(frozen=True)
class ChunkWriter:
    """Writes rows of a preallocated store from any process; picklable (paths and numbers only)."""

    path: str
    dtype: str
    n_features: int
    offset: int

    def write(self, chunk: int, start: int, stop: int, rows: np.ndarray) -> dict:
        """Write ``rows`` as store rows ``[start, stop)``, make them durable, then mark the chunk done."""
        if rows.shape != (stop - start, self.n_features):
            raise ValueError(f"chunk {chunk}: got rows of shape {rows.shape}, expected {(stop - start, self.n_features)}")
        data = np.ascontiguousarray(rows, dtype=self.dtype)
        if not np.isfinite(data).all():
            hint = "; use dtype='float32'" if self.dtype == "float16" else ""
            raise FloatingPointError(f"chunk {chunk} (rows {start}-{stop}): non-finite embeddings in {self.dtype}{hint}")
        buf = memoryview(data).cast("B")
        data_file = os.path.join(self.path, DATA_FILE)
        try:
            fd = os.open(data_file, os.O_WRONLY)
            try:
                pos, done = self.offset + start * self.n_features * data.itemsize, 0
                while done < len(buf):
                    done += os.pwrite(fd, buf[done:], pos + done)
                # The rows must be on disk before their marker can exist (power-loss ordering).
                os.fsync(fd)
            finally:
                os.close(fd)
        except OSError as exc:
            raise error_naming(exc, data_file, f"writing rows {start}-{stop} of the store") from exc
        marker = {"chunk": chunk, "start": start, "stop": stop, "crc32": zlib.crc32(buf)}
        atomic_write(marker_path(self.path, chunk), json.dumps(marker).encode())
        return marker


def embed_chunk(embedder, sources: dict, start: int, stop: int, offset: int = 0) -> np.ndarray:
    """Embeddings of store rows ``[start, stop)``, i.e. of cells ``start - offset ...`` of ``sources``.

    No embedding cache and no progress bar: the store is the cache, and the caller reports per chunk.
    """
    return embedder.embed_rows(sources, np.arange(start - offset, stop - offset), use_cache=False, verbose=0)


def extract_chunk(embedder, sources: dict, writer: ChunkWriter, chunk: int, start: int, stop: int, offset: int = 0):
    """Embed rows ``[start, stop)`` (cells ``start - offset ...`` of ``sources``) and write them."""
    return writer.write(chunk, start, stop, embed_chunk(embedder, sources, start, stop, offset))


__all__ = [
    "CHUNKS_DIR",
    "DATA_FILE",
    "INDEX_FILE",
    "LOCK_FILE",
    "META_FILE",
    "ChunkWriter",
    "chunk_bounds",
    "embed_chunk",
    "extract_chunk",
    "marker_path",
]
