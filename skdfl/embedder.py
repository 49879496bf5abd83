"""BackboneEmbedder: a scikit-learn transformer turning images into frozen-backbone embeddings.

The embedder owns the extraction loop and its one public entry point, :meth:`BackboneEmbedder.embed_rows`:
``transform``, the embedding cache, the chunked store and Dask workers all embed through it.

Cache keys
----------
With ``cache=DIR`` the embedder looks vectors up in an :class:`~skdfl.storage.EmbeddingCache`:

* the *namespace* is the hash of :meth:`BackboneEmbedder.embedding_signature`: everything besides the image
  that changes the numbers (backbone identity and architecture, a sha256 of its weights, pooling, input
  size, resize policy and its parameters, normalisation, the *resolved* autocast precision, the embedding
  dimension and the skdfl version: a release may change preprocessing, and a stale embedding is worse than
  a re-extraction);
* the *key* is one **view** of one sample: ``sha256(namespace | content key of the source cell | colour)``
  (:func:`skdfl.storage.content_key`). Entries are per view rather than per sample so that trying
  ``views=["x20"]`` and then ``views=["x20", "x5"]``, or adding ``"gray"`` to ``colors``, reuses every
  embedding already computed. The source column's *name* is not part of the key: the same image under
  another column name has the same embedding.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import os
import threading
import warnings
import weakref
from collections import OrderedDict
from collections.abc import Mapping
from numbers import Integral, Real
from pathlib import Path

import numpy as np
import torch
from sklearn.base import BaseEstimator, TransformerMixin, _fit_context
from sklearn.utils._param_validation import Interval, StrOptions
from sklearn.utils.validation import check_is_fitted
from torch import nn
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from ._decode import decode_jpegs, device_jpeg_decoder_available
from ._device import PRECISIONS, autocast, resolve_device, resolve_num_workers, resolve_precision
from ._version import __version__
from .augment import augmentation_key, check_augmentations, resolve_augmentations
from .backbones import load_backbone, weights_fingerprint
from .io import as_sources, read_image
from .loading import (
    DEVICE_COLORS,
    DeviceBatch,
    DeviceGeometryDataset,
    ViewDataset,
    prefetched_batches,
    stack_samples,
    threaded_items,
)
from .stain import make_stain_normalizers
from .storage import CacheCorruptionWarning, CacheWriteWarning, EmbeddingCache, as_cache
from .transforms import (
    RESIZE_POLICIES,
    TENSOR_INTERPOLATIONS,
    TENSOR_POLICIES,
    fit_geometry_tensors,
)
from .views import View, feature_names, resolve_views, to_gray_tensors

# Backbones loaded by name in this process, most recent last; at most a couple are kept (a ViT-g is GBs).
_SHARED_BACKBONES: OrderedDict[tuple, tuple[nn.Module, dict, dict]] = OrderedDict()
_MAX_SHARED_BACKBONES = 2
_SHARED_LOCK = threading.Lock()

# Fingerprints of fitted backbones, computed once per module object: hashing a ViT-L takes ~1 s.
_FINGERPRINTS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
# Version of the layout of embedding_signature(); part of every cache namespace and store description.
SIGNATURE_FORMAT = 1
# Progress bars appear only for calls still running after this many seconds (tqdm's delay).
PROGRESS_DELAY_S = 2.0
DECODE_MODES = ("auto", "cpu", "device")
WORKER_TYPES = ("auto", "thread", "process")
# num_workers="auto" starts at most this many decoding threads: on a 16-core H200 machine 8 threads built
# IDC PNG and JPEG items 1.36x and 1.50x faster than 15, which contend for the GIL; only the slowest files
# (700x460 PNG, 12 ms each) gained from 15 (1.23x) (benchmarks/bench_gpu_loader.py).
MAX_AUTO_THREADS = 8
# Device types on which decode="auto" decodes and fits images on the device (see the decode parameter).
AUTO_DEVICE_DECODE = ("cuda",)
# Device types on which a background thread makes the next forward batch (decoded, resized, on its own CUDA
# stream) while the current one runs. Not on a CPU: the forward pass already uses every core there.
PREFETCH_DEVICES = ("cuda",)
# On an accelerator, loader items are 1/8 of a batch or the nearest larger divisor (>= 8 samples).
LOADER_CHUNKS_PER_BATCH = 8
LOADER_MIN_CHUNK = 8


def _memoised_fingerprint(module: nn.Module) -> str:
    try:
        return _FINGERPRINTS[module]
    except KeyError:
        digest = _FINGERPRINTS[module] = weights_fingerprint(module)
        return digest


# torch.compile'd backbones, per backbone object and device: compiling again costs tens of seconds.
_COMPILED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _compiled(module: nn.Module, device: torch.device) -> nn.Module:
    per_device = _COMPILED.setdefault(module, {})
    if str(device) not in per_device:
        per_device[str(device)] = torch.compile(module)
    return per_device[str(device)]


def _mtime(path) -> float | None:
    try:
        return os.stat(path).st_mtime_ns if path is not None else None
    except OSError:
        return None  # load_backbone reports the missing file


class _DeferredHostCopies:
    """Rows of ``out`` filled from device tensors, each written one batch later than it is computed.

    On CUDA a batch's features are copied into page-locked memory without waiting, and read into ``out``
    only after the next batch has been queued: the host decodes and queues batch ``i + 1`` while the GPU
    still runs batch ``i``, instead of waiting for it at every batch. On other devices the copy is
    synchronous; the deferral (the same bookkeeping) then costs nothing.
    """

    def __init__(self, out: np.ndarray, device: torch.device):
        self.out = out
        self.cuda = device.type == "cuda"
        self.pending = None

    def add(self, start: int, rows: torch.Tensor) -> None:
        if self.cuda:
            host = torch.empty(rows.shape, dtype=rows.dtype, pin_memory=True)
            host.copy_(rows, non_blocking=True)
            done = torch.cuda.Event()
            done.record()
        else:
            host, done = rows.cpu(), None
        self.finish()
        self.pending = (start, host, done)

    def finish(self) -> None:
        if self.pending is not None:
            start, host, done = self.pending
            if done is not None:
                done.synchronize()
            self.out[start : start + len(host)] = host.numpy()
            self.pending = None


class BackboneEmbedder(TransformerMixin, BaseEstimator):
    """Embed images with a frozen, pretrained backbone; concatenate the embeddings of several views.

    Parameters
    ----------
    backbone : str or torch.nn.Module, default="resnet50.tv_in1k"
        A name known to :func:`skdfl.backbones.load_backbone` (any timm model name, with pretrained tag,
        or a registry name), or a module mapping ``(n, 3, H, W)`` float images to ``(n, dim)`` features.
    pretrained : bool, default=True
        Load the backbone's pretrained weights. ``False`` gives a random-init backbone (tests, baselines).
    checkpoint_path : str or Path, default=None
        Local weights file (``.safetensors`` or a ``torch.save`` state dict, loaded with
        ``weights_only=True``); takes precedence over ``pretrained``.
    views : list of str, default=None
        Source columns of a DataFrame ``X`` to embed, in this order (e.g. ``["x20", "x5"]``). ``None``:
        every column. Array and path-list inputs have the single source ``"image"``.
    colors : list of {"rgb", "gray", "macenko", "reinhard"}, default=("rgb",)
        Colour versions of every source; ``"gray"`` is luminance replicated to 3 channels, ``"macenko"``
        and ``"reinhard"`` are H&E stain-normalised (:mod:`skdfl.stain`), each image on its own.
    stain_reference : array-like of shape (H, W, 3) or str or Path, default=None
        Reference image (or its file) of the stain colours: fitted by :class:`skdfl.stain.MacenkoNormalizer`
        and :class:`skdfl.stain.ReinhardNormalizer` in ``fit``. ``None`` uses the published references
        documented in :mod:`skdfl.stain`. The reference is part of each stain view's cache key.
    augmentations : str or list of str, default=None
        Image-space augmentations embedded next to the plain images (the augmentation bank,
        :mod:`skdfl.augment`): ``"dihedral"`` (the 8 flips/rotations), or a list of names among
        ``"dihedral"``, ``"rot90"``, ``"rot180"``, ``"rot270"``, ``"flip_h"``, ``"flip_v"``,
        ``"transpose"``, ``"transverse"``, ``"hed_jitter"``, ``"scale_jitter"``, ``"random"`` (repeat a
        random one for more draws). Block 0 is always the plain image. Random draws are seeded by
        ``random_state`` and the image's pixels, so they are reproducible and cached. **Cost**: K
        augmentations multiply the extraction by K (reading is shared), once; with ``cache`` every
        (image, colour, augmentation) is an entry, so later fits and searches embed nothing.
    image_size : int or (int, int), default=None
        Backbone input size; ``None`` takes it from the backbone's pretrained data config.
    resize : {"pad", "stretch", "crop", "none"}, default="pad"
        Geometry policy, see :mod:`skdfl.transforms`. ``"pad"`` scales without distortion and pads.
    scale : float, default=None
        With ``resize="pad"``: a fixed scale factor instead of "fit to the input size".
    batch_size : int, default=32
        Images (samples) per forward pass.
    num_workers : int or "auto", default="auto"
        Workers decoding files; ``0`` decodes in the main process, serially with the forward pass.
        ``"auto"`` (:func:`skdfl._device.resolve_num_workers`): on CUDA/MPS every CPU core but one; on a
        CPU ``0`` up to 2 cores (a worker would only take cores from the forward pass), then one per 8
        cores; never more than there are loader items (a batch, or 1/8 of one on CUDA/MPS).
    worker_type : {"auto", "thread", "process"}, default="auto"
        What the ``num_workers`` workers are: ``"thread"``, a shared pool of threads in this process
        (no start-up per call; the decoders release the GIL; ``num_workers="auto"`` starts at most 8, since
        more contend for the GIL); ``"process"``, DataLoader worker processes (``X``'s cells must pickle).
        ``"auto"``: threads on CUDA/MPS, processes on a CPU.
    device : str, default="auto"
        ``"auto"`` picks CUDA, then MPS, then CPU.
    decode : {"auto", "cpu", "device"}, default="auto"
        Where images are decoded and brought to the input size. ``"cpu"``: in the loader (workers), with
        libjpeg-turbo's DCT scaling when a JPEG shrinks >= 2x and Pillow's resize. ``"device"``: the loader
        only reads JPEG files' bytes and decodes other images at full size; the device decodes the JPEGs of
        a batch in one call (nvJPEG on CUDA; libjpeg-turbo through torchvision on a CPU; the loader's
        decoders elsewhere), then resizes, pads and greys every image with torch's antialiased resize
        (:func:`skdfl.transforms.fit_geometry_tensors`: Pillow's kernels, pixels within rounding of
        Pillow's at full decode). Images of more than ~1 Mpx (``skdfl.loading.DEVICE_MAX_PIXELS``) are
        fitted in the loader as with ``"cpu"``, to bound memory. It applies when ``resize`` is ``"pad"`` or ``"stretch"``, the
        interpolation bilinear or bicubic, colours rgb/gray and no ``augmentations``; other settings take
        the CPU path, as does a batch the device decoder rejects. ``"auto"``: ``"device"`` on CUDA, ``"cpu"``
        elsewhere (``"device"`` on MPS is untested: torch's antialiased resize may lack MPS kernels). The
        embeddings differ slightly between the two (cosine > 0.999): the choice is part of
        :meth:`embedding_signature`. On CUDA, whatever ``decode``, a background thread prepares the next
        batch (decoding, resizing, the copy to the device) on a CUDA stream of its own while the current one
        runs through the backbone (:func:`skdfl.loading.prefetched_batches`; the device types it runs on are
        ``skdfl.embedder.PREFETCH_DEVICES``, which can be emptied to turn it off).
    precision : {"auto", "fp32", "bf16", "fp16"}, default="auto"
        Autocast precision of the forward pass. ``"auto"`` is bf16 on a CPU with native bf16 support
        (with ``channels_last``, measured ~3x faster than fp32 for DenseNet-121 on 2 cores, embeddings
        within cosine 0.998 of fp32; ``benchmarks/bench_precision.py``), fp32 on other CPUs, fp16 on
        CUDA/MPS.
    compile : bool, default=False
        Run the backbone through :func:`torch.compile` (compiled once per backbone object and device,
        on first use). Pays off for long extractions on a GPU; the first batch of each new shape waits
        for the compilation (tens of seconds). The embeddings match eager mode within rounding.
    random_state : int, default=0
        Seed of the weights of a random-init backbone (``pretrained=False``), so refits and clones embed
        identically, and of the random augmentations. Pretrained weights do not depend on it.
    verbose : int, default=1
        ``0`` is silent; ``>=1`` shows a progress bar of images (samples x views) for calls still running
        after 2 seconds (a quick ``predict`` shows none).
    cache : str, Path or EmbeddingCache, default=None
        Folder of an on-disk embedding cache (:class:`skdfl.storage.EmbeddingCache`). ``transform`` then
        looks every (sample, view) up by content and runs the backbone only on the missing ones, so
        cross-validation, grid searches and separate processes sharing the folder embed each image once.
        ``None`` disables caching.
    max_image_pixels : int, "pil" or None, default="pil"
        Largest image file (width x height) decoded, against decompression bombs; a larger one is an
        :class:`~skdfl.io.ImageReadError` naming the file. ``"pil"`` follows Pillow's
        ``PIL.Image.MAX_IMAGE_PIXELS`` (~89 Mpx warns, twice that is refused); ``None`` lifts the limit
        (trusted files only). See :func:`skdfl.io.read_image`.

    Attributes
    ----------
    module_ : torch.nn.Module
        The frozen backbone (kept on CPU when pickled). Embedders fitted in one process with the same
        ``backbone`` name, ``pretrained``, ``checkpoint_path`` and ``random_state`` share this object
        (it is frozen), so refitting clones in a search costs nothing; do not modify it in place.
    data_config_ : dict
        ``input_size``, ``mean``, ``std``, ``interpolation``, ``crop_pct`` of the backbone.
    input_size_ : tuple of int
        ``(H, W)`` the images are brought to.
    views_ : list of View
        ``(source, color)`` pairs in concatenation order.
    augmentations_ : list of str
        Labels of the augmentation blocks in output order, ``"identity"`` first (just that without
        ``augmentations``); repeated random augmentations are numbered (``"random"``, ``"random2"``).
    n_augmentations_ : int
        ``len(augmentations_)``: the bank size K a head reshapes the output with
        (:func:`skdfl.augment.bank_blocks`).
    stain_normalizers_ : dict of str to normaliser
        The fitted normaliser of each stain colour in ``colors`` (empty without one).
    embedding_dim_ : int
        Features per view; the output has ``n_augmentations_ * len(views_) * embedding_dim_`` columns.
    feature_names_in_ : ndarray of str
        Source columns seen in ``fit`` (DataFrame input only).
    n_features_in_ : int
        Number of source columns seen in ``fit`` (DataFrame input only).

    Notes
    -----
    Output columns are ordered view by view (sources in ``views`` order, colours in ``colors`` order
    within each source) and named ``<source>_<color>_<k>`` by :meth:`get_feature_names_out`. With
    ``augmentations``, these blocks repeat once per augmentation (augmentation-major, block 0 plain) and
    the names get the augmentation as a prefix: ``<augmentation>_<source>_<color>_<k>``.
    """

    _parameter_constraints = {
        "backbone": [str, nn.Module],
        "pretrained": ["boolean"],
        "checkpoint_path": [str, Path, None],
        "views": [list, tuple, str, None],
        "colors": [list, tuple, str],
        "stain_reference": ["array-like", str, Path, None],
        "augmentations": [list, tuple, str, None],
        "image_size": [Interval(Integral, 1, None, closed="left"), tuple, list, None],
        "resize": [StrOptions(set(RESIZE_POLICIES))],
        "scale": [Interval(Real, 0, None, closed="neither"), None],
        "batch_size": [Interval(Integral, 1, None, closed="left")],
        "num_workers": [Interval(Integral, 0, None, closed="left"), StrOptions({"auto"})],
        "worker_type": [StrOptions(set(WORKER_TYPES))],
        "compile": ["boolean"],
        "device": [str, torch.device],
        "decode": [StrOptions(set(DECODE_MODES))],
        "precision": [StrOptions(set(PRECISIONS))],
        "random_state": [Interval(Integral, 0, None, closed="left")],
        "verbose": ["verbose"],
        "cache": [str, Path, EmbeddingCache, None],
        "max_image_pixels": [Interval(Integral, 1, None, closed="left"), StrOptions({"pil"}), None],
    }

    def __init__(
        self,
        backbone="resnet50.tv_in1k",
        *,
        pretrained=True,
        checkpoint_path=None,
        views=None,
        colors=("rgb",),
        stain_reference=None,
        augmentations=None,
        image_size=None,
        resize="pad",
        scale=None,
        batch_size=32,
        num_workers="auto",
        worker_type="auto",
        device="auto",
        decode="auto",
        precision="auto",
        compile=False,
        random_state=0,
        verbose=1,
        cache=None,
        max_image_pixels="pil",
    ):
        self.backbone = backbone
        self.pretrained = pretrained
        self.checkpoint_path = checkpoint_path
        self.views = views
        self.colors = colors
        self.stain_reference = stain_reference
        self.augmentations = augmentations
        self.image_size = image_size
        self.resize = resize
        self.scale = scale
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.worker_type = worker_type
        self.device = device
        self.decode = decode
        self.precision = precision
        self.compile = compile
        self.random_state = random_state
        self.verbose = verbose
        self.cache = cache
        self.max_image_pixels = max_image_pixels

    # ------------------------------------------------------------------ fit
    @_fit_context(prefer_skip_nested_validation=True)
    def fit(self, X, y=None):
        """Load the backbone and resolve the views present in ``X``. No image is embedded."""
        sources, _ = as_sources(X)
        self.views_ = resolve_views(list(sources), self.views, self.colors)
        self.augmentations_ = resolve_augmentations(self.augmentations)
        self.n_augmentations_ = len(self.augmentations_)
        reference = None
        if self.stain_reference is not None:
            reference = read_image(self.stain_reference, "stain_reference")
        self.stain_normalizers_ = make_stain_normalizers(reference, colors=[v.color for v in self.views_])
        if hasattr(X, "columns"):
            self.feature_names_in_ = np.asarray([str(c) for c in X.columns], dtype=object)
            self.n_features_in_ = len(self.feature_names_in_)
        else:
            for attr in ("feature_names_in_", "n_features_in_"):
                self.__dict__.pop(attr, None)
        if isinstance(self.backbone, nn.Module):
            self.module_, self.data_config_ = self._load(copy.deepcopy(self.backbone))
            self.input_size_ = self._input_size()
            check_augmentations(self.augmentations_, self.input_size_)
            self.embedding_dim_ = self._probe_dim(self.module_, self.input_size_)
            return self
        # Clones fitted in one process (GridSearchCV folds, Optuna trials) share the frozen backbone
        # instead of rebuilding and re-probing it at every fit.
        path = self.checkpoint_path
        key = (self.backbone, bool(self.pretrained), None if path is None else str(path),
               _mtime(path), self.random_state)
        with _SHARED_LOCK:
            if key not in _SHARED_BACKBONES:
                _SHARED_BACKBONES[key] = (*self._load(self.backbone), {})
                while len(_SHARED_BACKBONES) > _MAX_SHARED_BACKBONES:
                    _SHARED_BACKBONES.popitem(last=False)
            _SHARED_BACKBONES.move_to_end(key)
            self.module_, config, dims = _SHARED_BACKBONES[key]
            self.data_config_ = dict(config)
            self.input_size_ = self._input_size()
            check_augmentations(self.augmentations_, self.input_size_)
            if self.input_size_ not in dims:
                dims[self.input_size_] = self._probe_dim(self.module_, self.input_size_)
            self.embedding_dim_ = dims[self.input_size_]
        return self

    def _load(self, backbone) -> tuple[nn.Module, dict]:
        # Random-init weights are seeded so that refits and clones embed identically.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.random_state)
            return load_backbone(backbone, pretrained=self.pretrained, checkpoint_path=self.checkpoint_path)

    @classmethod
    def _probe_dim(cls, module: nn.Module, size: tuple[int, int]) -> int:
        with torch.inference_mode():
            probe = torch.zeros(1, 3, *size, device=next(module.parameters(), torch.zeros(0)).device)
            return int(cls._forward(module, probe).shape[-1])

    def _input_size(self) -> tuple[int, int]:
        size = self.image_size if self.image_size is not None else self.data_config_["input_size"][-2:]
        if isinstance(size, Integral):
            return int(size), int(size)
        size = tuple(int(s) for s in size)
        if len(size) != 2 or min(size) < 1:
            raise ValueError(f"image_size must be an int or (height, width), got {self.image_size!r}")
        return size

    @staticmethod
    def _forward(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
        out = module(x)
        if out.ndim != 2:
            raise ValueError(
                f"the backbone returned shape {tuple(out.shape)}; it must return pooled (n, dim) features "
                "(create timm models with num_classes=0, or wrap the module with a pooling layer)"
            )
        return out

    # ------------------------------------------------------------ transform
    def transform(self, X):
        """Embed ``X``; returns float32 ``(n_samples, n_augmentations_ * len(views_) * embedding_dim_)``."""
        check_is_fitted(self)
        sources, _ = as_sources(X)
        return self.embed_rows(sources)

    # ------------------------------------------------- extraction protocol
    def embed_rows(self, sources, indices=None, *, use_cache=True, verbose=None) -> np.ndarray:
        """Embeddings of rows ``indices`` of ``sources``: the one way skdfl runs the backbone.

        ``transform``, :func:`~skdfl.storage.extract_to_store` (one call per chunk) and Dask workers all
        embed through this method, so its behaviour (geometry, normalisation, precision, batching,
        caching) is the same whichever way the embeddings are produced.

        Parameters
        ----------
        sources : mapping of str to sequence
            Source name -> cells, as returned by :func:`skdfl.io.as_sources`; it must hold every source of
            :attr:`views_` (extra sources are ignored). Cells are read only for the rows embedded.
        indices : array-like of int, default=None
            Rows to embed, in output order (repeats allowed); ``None`` embeds every row.
        use_cache : bool, default=True
            Look the (row, view) pairs up in the ``cache`` parameter's cache, when set, and store what had
            to be computed there. ``False`` always runs the backbone (the store passes ``False``: it is its
            own cache).
        verbose : int, default=None
            Overrides the ``verbose`` parameter for this call (callers with their own progress bar pass 0).

        Returns
        -------
        ndarray of shape (len(indices), n_augmentations_ * len(views_) * embedding_dim_), float32
            Views concatenated in :attr:`views_` order, one such block per augmentation (augmentation-major),
            as :meth:`get_feature_names_out` names them.
        """
        check_is_fitted(self)
        self.check_sources(sources)
        if indices is None:
            indices = np.arange(len(sources[self.views_[0].source]))
        indices = np.asarray(indices)
        if indices.ndim != 1 or not (indices.size == 0 or np.issubdtype(indices.dtype, np.integer)):
            raise ValueError(f"indices must be a 1-D array of row numbers, got {indices.dtype} of shape {indices.shape}")
        verbose = self.verbose if verbose is None else verbose
        if use_cache and self.cache is not None:
            return self._embed_cached(as_cache(self.cache), sources, indices, verbose)
        return self._embed_views(sources, indices, self._units(), verbose)

    def check_sources(self, sources) -> None:
        """Raise a ``ValueError`` naming the source columns this fitted embedder needs and ``sources`` lacks."""
        check_is_fitted(self)
        if not isinstance(sources, Mapping):
            raise TypeError(
                f"sources must map source names to cells (see skdfl.io.as_sources), got {type(sources).__name__}"
            )
        missing = sorted({v.source for v in self.views_} - set(sources))
        if missing:
            raise ValueError(
                f"X lacks the source columns {missing} this embedder was fitted with; got {list(sources)}"
            )

    def view_dataset(self, sources, indices=None, *, geometry="cpu") -> ViewDataset:
        """The torch ``Dataset`` :meth:`embed_rows` reads: item ``k`` holds every view of row ``indices[k]``.

        With ``geometry="cpu"``, items are uint8 tensors ``(n_augmentations_ * len(views_), H, W, 3)``
        (augmentation-major), brought to :attr:`input_size_`, augmented and coloured but not normalised
        (``embed_rows`` normalises whole batches on the device with ``data_config_["mean"]`` / ``["std"]``).
        For profiling the input pipeline and for custom loops (batch the items with :func:`stack_samples`,
        as ``embed_rows`` does). With ``geometry="device"``, the :class:`DeviceGeometryDataset` that
        ``embed_rows`` reads when images are fitted on the device (the ``decode`` parameter): items are
        ``(k, [JPEG bytes or full-size pixels of each source])``; a ``ValueError`` if this embedder's
        views need the CPU pipeline.
        """
        check_is_fitted(self)
        self.check_sources(sources)
        if geometry not in ("cpu", "device"):
            raise ValueError(f"geometry must be 'cpu' or 'device', got {geometry!r}")
        if indices is None:
            indices = np.arange(len(sources[self.views_[0].source]))
        device = resolve_device(self.device) if geometry == "device" else None
        return self._view_dataset(sources, indices, self._units(), device=device)

    def embedding_signature(self) -> dict:
        """Everything besides the image that determines this fitted embedder's output for one view.

        Two fitted embedders with equal signatures give equal embeddings of equal images (up to the
        rounding of batch composition), so the dict keys the embedding cache (its hash is the namespace)
        and is recorded in embedding stores, which refuse to resume with another one. JSON-serialisable.
        """
        check_is_fitted(self)
        module = self.module_
        backbone = self.backbone
        name = backbone if isinstance(backbone, str) else f"{type(backbone).__module__}.{type(backbone).__qualname__}"
        dtype = resolve_precision(self.precision, resolve_device(self.device))
        config = self.data_config_
        pool = getattr(module, "global_pool", None)
        return {
            "format": SIGNATURE_FORMAT,
            "skdfl": __version__,
            "backbone": name,
            # repr covers layer hyper-parameters that the weights' shapes do not (strides, activations).
            "architecture": hashlib.sha256(repr(module).encode()).hexdigest()[:16],
            "weights": _memoised_fingerprint(module),
            "pooling": None if pool is None else repr(pool),
            "input_size": list(self.input_size_),
            "resize": self.resize,
            "scale": self.scale,
            "interpolation": config.get("interpolation", "bicubic"),
            "crop_pct": config.get("crop_pct", 1.0) or 1.0,
            "mean": [float(m) for m in config["mean"]],
            "std": [float(s) for s in config["std"]],
            # JPEGs shrunk >= 2x are decoded at a reduced DCT scale (skdfl._decode); or images are decoded at
            # full size (JPEGs by the device) and resized on the device (decode="device"): other pixels.
            "jpeg_decode": "device" if self._geometry_on_device(resolve_device(self.device)) else "dct-scaled",
            "precision": "fp32" if dtype is None else str(dtype).removeprefix("torch."),
            "embedding_dim": int(self.embedding_dim_),
        }

    # ------------------------------------------------------------ internals
    def _geometry_on_device(self, device: torch.device) -> bool:
        """Whether images are resized on ``device`` and JPEGs decoded there (the ``decode`` parameter's rules).

        Decided per embedder, not per call, so that a cached (image, view) always has the same pixels.
        """
        mode = self.decode
        if mode == "cpu" or (mode == "auto" and device.type not in AUTO_DEVICE_DECODE):
            return False
        return (
            self.n_augmentations_ == 1
            and all(view.color in DEVICE_COLORS for view in self.views_)
            and self.resize in TENSOR_POLICIES
            and self.data_config_.get("interpolation", "bicubic") in TENSOR_INTERPOLATIONS
        )

    def _view_dataset(self, sources, indices, views, *, device=None) -> ViewDataset:
        """The CPU pipeline's :class:`ViewDataset`, or with ``device`` a :class:`DeviceGeometryDataset`."""
        extra = {} if device is None else {"jpeg_bytes": device_jpeg_decoder_available(device)}
        dataset_class = ViewDataset if device is None else DeviceGeometryDataset
        return dataset_class(
            sources,
            views,
            indices,
            self.input_size_,
            policy=self.resize,
            interpolation=self.data_config_.get("interpolation", "bicubic"),
            crop_pct=self.data_config_.get("crop_pct", 1.0) or 1.0,
            scale=self.scale,
            normalizers=self.stain_normalizers_,
            random_state=self.random_state,
            max_pixels=self.max_image_pixels,
            **extra,
        )

    def _units(self) -> list[tuple[str, View]]:
        """(augmentation, view) pairs in output order: augmentation-major."""
        return [(augmentation, view) for augmentation in self.augmentations_ for view in self.views_]

    def _entry_key(self, namespace: str, cell_key: str, augmentation: str, view: View) -> str:
        """Cache key of one (image, colour, augmentation); plain rgb/gray keys are those of skdfl 0.1."""
        color = view.color
        if color in self.stain_normalizers_:
            color = f"{color}@{self.stain_normalizers_[color].fingerprint()}"
        text = f"{namespace}|{cell_key}|{color}"
        suffix = augmentation_key(augmentation, self.random_state)
        if suffix:
            text += f"|{suffix}"
        return hashlib.sha256(text.encode()).hexdigest()

    def _embed_views(self, sources, indices, views, verbose) -> np.ndarray:
        """The extraction loop: ``views`` of rows ``indices``, shape ``(len(indices), len(views) * dim)``."""
        device = resolve_device(self.device)
        dtype = resolve_precision(self.precision, device)
        n_views, dim = len(views), self.embedding_dim_
        out = np.empty((len(indices), n_views * dim), dtype=np.float32)
        if len(indices) == 0:
            return out
        on_device = self._geometry_on_device(device)
        dataset = self._view_dataset(sources, indices, views, device=device if on_device else None)
        chunk = self._loader_chunk(device)
        workers = resolve_num_workers(self.num_workers, device, -(-len(indices) // chunk))
        collate = dataset.collate if on_device else stack_samples
        # Page-locked items make the host->GPU copy asynchronous (non_blocking in _device_batches).
        pin_memory = device.type == "cuda"
        threads = self.worker_type == "thread" or (self.worker_type == "auto" and device.type != "cpu")
        if workers > 0 and threads:
            if self.num_workers == "auto":
                workers = min(workers, MAX_AUTO_THREADS)
            loader = threaded_items(dataset, chunk, collate, workers, pin_memory=pin_memory)
        else:
            loader = DataLoader(dataset, batch_size=chunk, num_workers=workers, pin_memory=pin_memory,
                                persistent_workers=False, collate_fn=collate)  # fmt: skip
        memory_format = torch.channels_last if device.type in ("cpu", "cuda") else torch.contiguous_format
        module = self.module_.to(device=device, memory_format=memory_format)
        if self.compile:
            module = _compiled(module, device)
        # Normalisation runs on the device, batched: the loader ships uint8 (4x less to copy than float).
        # (x - mean) / std as one fused x * scale + shift: a pass less over the batch.
        mean = torch.tensor(self.data_config_["mean"], device=device).view(1, 3, 1, 1) * 255.0
        std = torch.tensor(self.data_config_["std"], device=device).view(1, 3, 1, 1) * 255.0
        scale, shift = 1.0 / std, -mean / std
        start = 0
        batches = self._device_batches(loader, dataset, device)
        if device.type in PREFETCH_DEVICES:
            batches = prefetched_batches(batches, device)
        # The bar counts images (samples x views) and appears only for calls still running after
        # PROGRESS_DELAY_S: a fitted model's predict on a few samples stays silent.
        # closing(): an error here stops the loader's threads and the prefetching thread now, not whenever
        # the traceback that holds this frame is freed.
        with contextlib.closing(batches), torch.inference_mode(), tqdm(
            total=len(indices) * n_views, desc="embedding", unit="img", disable=not verbose, leave=False,
            delay=PROGRESS_DELAY_S,
        ) as bar:
            copies = _DeferredHostCopies(out, device)
            for b, x in batches:
                x = torch.addcmul(shift, x, scale).contiguous(memory_format=memory_format)
                with autocast(device, dtype):
                    feats = self._forward(module, x)
                copies.add(start, feats.float().reshape(b, n_views * dim))
                start += b
                bar.update(b * n_views)
            copies.finish()
        if not np.isfinite(out).all():
            raise FloatingPointError(
                "the backbone produced NaN/inf embeddings; try precision='fp32'"
            )
        return out

    def _loader_chunk(self, device: torch.device) -> int:
        """Samples per loader item: a whole batch on a CPU, a fraction of one on an accelerator.

        A DataLoader worker builds a whole item alone, so at batch 256 a call of 1,024 images would keep
        only 4 of a GPU machine's decoding workers busy; smaller items spread the decoding over all of
        them, and :meth:`_device_batches` joins them back into ``batch_size`` forward passes.
        """
        if device.type == "cpu":
            return self.batch_size
        # A divisor of batch_size, so that joined items make exactly batch_size forward passes.
        for parts in range(LOADER_CHUNKS_PER_BATCH, 1, -1):
            if self.batch_size % parts == 0 and self.batch_size // parts >= LOADER_MIN_CHUNK:
                return self.batch_size // parts
        return self.batch_size

    def _device_batches(self, loader, dataset, device):
        """``(n_samples, images)`` forward batches of ``batch_size`` samples from the loader's items.

        Images are float ``(n_samples * n_views, 3, H, W)`` on ``device``, not yet normalised. Items of the
        CPU pipeline are copied to the device as they arrive (asynchronously from pinned memory) and joined
        there; :class:`DeviceBatch` items are joined first, so that the device decodes a batch in one call.
        """
        parts, pending = [], 0
        for item in loader:
            parts.append(item if isinstance(item, DeviceBatch) else item.to(device, non_blocking=True))
            pending += len(item)
            if pending >= self.batch_size:
                yield pending, self._join_items(parts, dataset, device)
                parts, pending = [], 0
        if parts:
            yield pending, self._join_items(parts, dataset, device)

    def _join_items(self, parts: list, dataset, device) -> torch.Tensor:
        if isinstance(parts[0], DeviceBatch):
            joined = DeviceBatch([k for p in parts for k in p.positions], [d for p in parts for d in p.data])
            return self._device_images(joined, dataset, device)
        images = torch.cat(parts) if len(parts) > 1 else parts[0]
        # NHWC -> NCHW is a view with channels_last strides: no copy, the layout the model wants.
        return images.flatten(0, 1).permute(0, 3, 1, 2).float()

    def _device_images(self, batch: DeviceBatch, dataset: DeviceGeometryDataset, device) -> torch.Tensor:
        """Decode, fit and colour a batch on ``device``: float ``(len(batch) * n_views, 3, H, W)``."""
        images: list = [None] * len(batch.data)
        # Images decoded by the loader go to the device one block per size: one copy, not one per image.
        by_shape: dict[tuple, list[int]] = {}
        for j, d in enumerate(batch.data):
            if d.ndim == 3:
                by_shape.setdefault(tuple(d.shape), []).append(j)
        for members in by_shape.values():
            block = torch.stack([batch.data[j] for j in members]).to(device, non_blocking=True).permute(0, 3, 1, 2)
            for j, image in zip(members, block, strict=True):
                images[j] = image
        jpeg = [j for j, d in enumerate(batch.data) if d.ndim == 1]
        if jpeg:
            try:
                decoded = decode_jpegs([batch.data[j] for j in jpeg], device)
            except RuntimeError:
                # A stream the device decoder rejects (nvJPEG lacks some JPEG variants): this batch takes
                # the CPU path, which decodes it or names the broken file.
                cpu = stack_samples([dataset.decoded(k) for k in batch.positions])
                return cpu.to(device).flatten(0, 1).permute(0, 3, 1, 2).float()
            for j, image in zip(jpeg, decoded, strict=True):
                images[j] = image
        fitted = fit_geometry_tensors(
            images,
            self.input_size_,
            self.resize,
            interpolation=self.data_config_.get("interpolation", "bicubic"),
            scale=self.scale,
        )
        fitted = fitted.view(len(batch), len(dataset.device_sources), *fitted.shape[1:])
        column = {source: j for j, source in enumerate(dataset.device_sources)}
        views = []
        for _, view in dataset.units:
            image = fitted[:, column[view.source]]
            views.append(image if view.color == "rgb" else to_gray_tensors(image))
        return torch.stack(views, 1).flatten(0, 1)

    def _embed_cached(self, cache: EmbeddingCache, sources, indices, verbose) -> np.ndarray:
        """:meth:`_embed_views` of every view through ``cache`` (keys: see the module docstring).

        Runs the backbone once per *distinct* missing (image, colour), in blocks so that progress survives
        an interrupted run; returns what ``_embed_views`` would (up to batch-composition rounding).
        """
        description = self.embedding_signature()
        namespace = cache.namespace(description)
        views, dim = self._units(), self.embedding_dim_
        n, n_views = len(indices), len(views)

        cell_keys = {
            source: [cache.cell_key(sources[source][int(i)], where=f"sample {i}, source {source!r}") for i in indices]
            for source in {v.source for _, v in views}
        }
        keys = [[self._entry_key(namespace, cell_keys[v.source][k], a, v) for a, v in views] for k in range(n)]

        found: dict[str, np.ndarray | None] = {}
        # Samples grouped by the tuple of views they still need; duplicates are scheduled once.
        todo: dict[tuple[int, ...], list[int]] = {}
        corrupt_before = cache.corrupt
        for k in range(n):
            need = []
            for j in range(n_views):
                key = keys[k][j]
                if key in found:
                    continue
                vector = cache.get(namespace, key, dim)
                if vector is None:
                    found[key] = None  # scheduled
                    need.append(j)
                else:
                    found[key] = vector
            if need:
                todo.setdefault(tuple(need), []).append(k)
        if cache.corrupt > corrupt_before:
            warnings.warn(
                f"{cache.corrupt - corrupt_before} corrupt or truncated cache entries under {cache.directory} "
                "were ignored and are being recomputed",
                CacheCorruptionWarning,
                stacklevel=4,
            )

        block = max(1024, 32 * self.batch_size)
        write_failed = None
        for need, positions in todo.items():
            need_views = [views[j] for j in need]
            for start in range(0, len(positions), block):
                part = positions[start : start + block]
                feats = self._embed_views(sources, indices[part], need_views, verbose)
                feats = feats.reshape(len(part), len(need), dim)
                for row, k in enumerate(part):
                    for col, j in enumerate(need):
                        key = keys[k][j]
                        found[key] = feats[row, col]
                        if write_failed is None:
                            try:
                                cache.put(namespace, key, feats[row, col])
                            except OSError as exc:
                                write_failed = exc
        if write_failed is not None:
            warnings.warn(
                f"could not write to the embedding cache {cache.directory} ({write_failed}); "
                "the embeddings were computed but not cached",
                CacheWriteWarning,
                stacklevel=4,
            )
        out = np.empty((n, n_views * dim), dtype=np.float32)
        for k in range(n):
            for j in range(n_views):
                out[k, j * dim : (j + 1) * dim] = found[keys[k][j]]
        return out

    def get_feature_names_out(self, input_features=None):
        """``<source>_<color>_<k>`` for every output column, in concatenation order."""
        check_is_fitted(self)
        augmentations = self.augmentations_ if self.n_augmentations_ > 1 else None
        return feature_names(self.views_, self.embedding_dim_, augmentations)

    # ---------------------------------------------------------- persistence
    def __getstate__(self):
        state = super().__getstate__()
        module = state.get("module_")
        # A model pickled on a GPU must unpickle on a CPU-only machine.
        if module is not None and any(p.device.type != "cpu" for p in module.parameters()):
            state["module_"] = copy.deepcopy(module).cpu()
        return state

    def __setstate__(self, state):
        # Models pickled before these parameters existed decoded every JPEG on the CPU, in processes.
        state.setdefault("decode", "cpu")
        state.setdefault("worker_type", "process")
        super().__setstate__(state)

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.two_d_array = False
        tags.input_tags.three_d_array = True
        tags.input_tags.string = True
        tags.transformer_tags.preserves_dtype = []
        return tags


__all__ = ["BackboneEmbedder", "View", "ViewDataset", "stack_samples"]
