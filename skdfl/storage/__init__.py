"""Where embeddings are kept: a content-keyed vector cache and a chunked, resumable on-disk store.

Neither knows how an embedding is computed. The embedder (:class:`skdfl.BackboneEmbedder`) owns the
extraction loop and calls into this package: it looks (sample, view) vectors up in an
:class:`EmbeddingCache` and puts back the ones it computed (``BackboneEmbedder(cache=DIR)``);
:func:`extract_to_store` cuts ``X`` into chunks, has the embedder embed each one
(:meth:`~skdfl.BackboneEmbedder.embed_rows`, here or on Dask workers) and writes the rows to a
memory-mappable file, resumable after a crash.

=========================  ===========================================================================
:class:`EmbeddingCache`    per-view vectors under content keys, shared by folds, clones and processes
:func:`extract_to_store`   streaming, resumable, distributable extraction into a store folder
:func:`load_store`         a finished store read back memory-mapped (:class:`EmbeddingStore`)
:func:`atomic_write`       the one way skdfl replaces a file (temporary file + rename; ``atomic_path``)
:func:`content_key`        the identity of one cell of ``X`` (array pixels, file, ImageSource)
=========================  ===========================================================================
"""

from ._atomic import atomic_path, atomic_write, atomic_write_json
from ._cache import (
    FILE_KEYS,
    CacheCorruptionWarning,
    CacheWriteWarning,
    EmbeddingCache,
    as_cache,
    content_key,
    decode_entry,
    encode_entry,
    file_digest,
    namespace_id,
)
from ._chunks import ChunkWriter, chunk_bounds
from ._dask import WRITE_ON, extract_distributed, get_client
from ._memmap import StoreArray, register_dask_serializers
from ._store import (
    DTYPES,
    EmbeddingStore,
    IncompleteStoreError,
    StoreMismatchError,
    extract_to_store,
    iter_chunks,
    load_store,
)

__all__ = [
    "DTYPES",
    "FILE_KEYS",
    "WRITE_ON",
    "CacheCorruptionWarning",
    "CacheWriteWarning",
    "ChunkWriter",
    "EmbeddingCache",
    "EmbeddingStore",
    "IncompleteStoreError",
    "StoreArray",
    "StoreMismatchError",
    "as_cache",
    "atomic_path",
    "atomic_write",
    "atomic_write_json",
    "chunk_bounds",
    "content_key",
    "decode_entry",
    "encode_entry",
    "extract_distributed",
    "extract_to_store",
    "file_digest",
    "get_client",
    "iter_chunks",
    "load_store",
    "namespace_id",
    "register_dask_serializers",
]
