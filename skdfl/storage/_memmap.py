"""A store's data file read back as a memory map that travels between processes as a file reference."""

from __future__ import annotations

import sys

import numpy as np


class StoreArray(np.memmap):
    """A read-only ``numpy.memmap`` of a store that pickles as a *reference* (path, dtype, shape, offset).

    Joblib (loky) and Dask ship it to workers without copying the data: each worker re-maps the file
    (which must be visible to it). Slices and fancy-indexed subsets are ordinary arrays and pickle by value.
    """

    def __array_finalize__(self, obj):
        super().__array_finalize__(obj)
        self._store_ref = None

    def __reduce_ex__(self, protocol):
        ref = getattr(self, "_store_ref", None)
        if ref is None or self._mmap is None:
            return np.asarray(self).__reduce_ex__(protocol)
        return open_store_array, ref

    def __reduce__(self):
        return self.__reduce_ex__(2)


def open_store_array(filename: str, dtype: str, shape: tuple, offset: int) -> StoreArray:
    """Map ``shape`` elements of ``dtype`` at byte ``offset`` of ``filename``, read-only."""
    arr = StoreArray(filename, dtype=np.dtype(dtype), mode="r", offset=offset, shape=tuple(shape))
    arr._store_ref = (filename, np.dtype(dtype).str, tuple(shape), offset)
    return arr


_DASK_REGISTERED = False


def register_dask_serializers() -> None:
    """Make Dask ship a whole :class:`StoreArray` by reference rather than copying its bytes.

    Dask picks serialisers by type along the MRO and would use its ndarray serialiser; declining the
    "dask" family sends the array through pickle, i.e. :meth:`StoreArray.__reduce_ex__`. Only the sending
    process needs this; it runs when a store is opened with ``distributed`` imported, and on every worker
    through :func:`skdfl.distributed.dask_backend`.
    """
    global _DASK_REGISTERED
    if _DASK_REGISTERED or "distributed" not in sys.modules:
        return
    from distributed.protocol import dask_serialize

    @dask_serialize.register(StoreArray)
    def _decline(arr):
        raise NotImplementedError("StoreArray travels by pickle (a file reference)")

    _DASK_REGISTERED = True


register_dask_serializers()

__all__ = ["StoreArray", "open_store_array", "register_dask_serializers"]
