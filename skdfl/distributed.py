"""Dask: extraction over a cluster into one store, and joblib's Dask backend for searches over embeddings.

Extraction: ``extract_to_store(X, path, embedder, client=client)`` is the only change from a single-process
run. The fitted embedder is broadcast once, so every worker deserialises **one** backbone and keeps it for
all its chunks (it moves to the worker's GPU on first use with ``device="auto"``); every task embeds one
chunk of the input and, by default, writes its rows straight into the preallocated store and drops the
chunk's marker, exactly as a local run does. Workers therefore need the store's folder on a shared
filesystem; with ``write_on="client"`` they send the rows back and the client writes them instead.

Searches: :func:`dask_backend` is ``joblib.parallel_config(backend="dask")`` checked against a live client;
inside it ``GridSearchCV(..., n_jobs=-1)`` and ``cross_validate`` spread fits over the cluster. A store's
memory map (:class:`skdfl.store.StoreArray`) travels to workers as a file reference, not as its bytes.
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Callable

import numpy as np
import pandas as pd

from .store import ChunkWriter, _quiet, extract_chunk, lazy_sources

WRITE_ON = ("workers", "client")


def _get_client(client=None):
    try:
        from distributed import get_client
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError("distributed extraction needs dask.distributed: pip install 'skdfl[dask]'") from exc
    if client is not None:
        return client
    try:
        return get_client()
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
    sources, _, _ = lazy_sources(part)
    if write:
        return extract_chunk(embedder, sources, writer, chunk, start, stop, offset)
    return chunk, start, stop, embedder._embed(sources, np.arange(start - offset, stop - offset))


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

    Called by :func:`skdfl.store.extract_to_store` with ``client=``; use that. Parameters not shown
    there: ``write_on`` (``"workers"`` write rows themselves: needs a shared filesystem; ``"client"``
    gathers rows and writes them locally) and ``retries`` (per chunk, e.g. after a worker is lost).
    """
    if write_on not in WRITE_ON:
        raise ValueError(f"write_on must be one of {WRITE_ON}, got {write_on!r}")
    from distributed import as_completed

    client = _get_client(client)
    if not pending:
        return
    run = uuid.uuid4().hex[:8]
    # One deserialised backbone per worker, shared by all its tasks.
    [model] = client.scatter([_quiet(embedder)], broadcast=True, hash=False)
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


@contextlib.contextmanager
def dask_backend(client=None, **kwargs):
    """``with dask_backend(client): GridSearchCV(..., n_jobs=-1).fit(X, y)`` runs the fits on Dask.

    A thin, checked ``joblib.parallel_config(backend="dask")``: it fails early with a clear message when no
    client exists, and makes sure the workers know how to receive a store's memory map by reference.
    ``kwargs`` go to ``parallel_config`` (e.g. ``scatter=[X, y]``).
    """
    import joblib

    client = _get_client(client)
    client.run(_register_on_worker)
    with joblib.parallel_config(backend="dask", client=client, **kwargs):
        yield client


def _register_on_worker() -> None:
    from .store import _register_dask_serializers

    _register_dask_serializers()


__all__ = ["dask_backend", "extract_distributed"]
