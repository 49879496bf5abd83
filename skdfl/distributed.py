"""Dask: extraction over a cluster into one store, and joblib's Dask backend for searches over embeddings.

Extraction: ``extract_to_store(X, path, embedder, client=client)`` (:mod:`skdfl.storage`) is the only
change from a single-process run; the chunks run on the cluster (:func:`extract_distributed`), one
backbone per worker.

Searches: :func:`dask_backend` is ``joblib.parallel_config(backend="dask")`` checked against a live client;
inside it ``GridSearchCV(..., n_jobs=-1)`` and ``cross_validate`` spread fits over the cluster. A store's
memory map (:class:`skdfl.storage.StoreArray`) travels to workers as a file reference, not as its bytes.
"""

from __future__ import annotations

import contextlib

from .storage import extract_distributed, get_client, register_dask_serializers


@contextlib.contextmanager
def dask_backend(client=None, **kwargs):
    """``with dask_backend(client): GridSearchCV(..., n_jobs=-1).fit(X, y)`` runs the fits on Dask.

    A thin, checked ``joblib.parallel_config(backend="dask")``: it fails early with a clear message when no
    client exists, and makes sure the workers know how to receive a store's memory map by reference.
    ``kwargs`` go to ``parallel_config`` (e.g. ``scatter=[X, y]``).
    """
    import joblib

    client = get_client(client)
    client.run(register_dask_serializers)
    with joblib.parallel_config(backend="dask", client=client, **kwargs):
        yield client


__all__ = ["dask_backend", "extract_distributed"]
