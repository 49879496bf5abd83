"""Dask execution of a store's chunks: one backbone per worker, rows written by workers or by the client.

``extract_to_store(X, path, embedder, client=client)`` is the only change from a single-process run. The
fitted embedder is broadcast once, so every worker deserialises **one** backbone and keeps it for all its
chunks (it moves to the worker's GPU on first use with ``device="auto"``); every task embeds one chunk of
the input and, by default, writes its rows straight into the preallocated store and drops the chunk's
marker, exactly as a local run does. Workers therefore need the store's folder on a shared filesystem;
with ``write_on="client"`` they send the rows back and the client writes them instead.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable

import numpy as np
import pandas as pd

from ..io import as_sources
from ._chunks import ChunkWriter, embed_chunk

WRITE_ON = ("workers", "client")


def get_client(client=None):
    """``client``, or the current Dask client; a clear error when dask.distributed or a client is missing."""
    try:
        from distributed import get_client as current_client
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError("distributed extraction needs dask.distributed: pip install 'skdfl[dask]'") from exc
    if client is not None:
        return client
    try:
        return current_client()
    except ValueError:
        raise ValueError(
            "no Dask client: create one first, e.g. `from dask.distributed import Client; "
            "client = Client('tcp://scheduler:8786')` (or LocalCluster())"
        ) from None


def _part(X, start: int, stop: int):
    """The cells of rows ``[start, stop)`` to send with a task, and the row offset they start at.

    Sliceable inputs travel as their slice; any other sequence (a lazy reader) is shipped whole, once.
    """
    if isinstance(X, (pd.DataFrame, pd.Series)):
        return X.iloc[start:stop], start
    if isinstance(X, (np.ndarray, list, tuple)):
        return X[start:stop], start
    return None, 0


def _run_chunk(embedder, part, writer: ChunkWriter, chunk: int, start: int, stop: int, offset: int, write: bool):
    sources, _ = as_sources(part)
    rows = embed_chunk(embedder, sources, start, stop, offset)
    if write:
        return writer.write(chunk, start, stop, rows)
    return chunk, start, stop, rows


def extract_distributed(
    X,
    embedder,
    writer: ChunkWriter,
    pending,
    client=None,
    *,
    callback: Callable[[dict], None] | None = None,
    write_on: str = "workers",
    retries: int = 1,
) -> None:
    """Embed the ``pending`` chunks of ``X`` on a Dask cluster into the store of ``writer``.

    Called by :func:`skdfl.storage.extract_to_store` with ``client=``; use that. Parameters not shown
    there: ``write_on`` (``"workers"`` write rows themselves: needs a shared filesystem; ``"client"``
    gathers rows and writes them locally) and ``retries`` (per chunk, e.g. after a worker is lost).
    """
    if write_on not in WRITE_ON:
        raise ValueError(f"write_on must be one of {WRITE_ON}, got {write_on!r}")
    from distributed import as_completed

    client = get_client(client)
    if not pending:
        return
    run = uuid.uuid4().hex[:8]
    # One deserialised backbone per worker, shared by all its tasks.
    [model] = client.scatter([embedder], broadcast=True, hash=False)
    whole = None
    futures = []
    for k, start, stop in pending:
        part, offset = _part(X, start, stop)
        if part is None:
            if whole is None:
                [whole] = client.scatter([X], broadcast=True, hash=False)
            part = whole
        futures.append(
            client.submit(
                _run_chunk, model, part, writer, k, start, stop, offset, write_on == "workers",
                key=f"skdfl-chunk-{k}-{run}", pure=False, retries=retries,
            )
        )
    try:
        for future in as_completed(futures):
            result = future.result()
            if write_on == "client":
                k, start, stop, rows = result
                result = writer.write(k, start, stop, rows)
            future.release()
            if callback is not None:
                callback(result)
    except BaseException:
        client.cancel(futures)
        raise


__all__ = ["WRITE_ON", "extract_distributed", "get_client"]
