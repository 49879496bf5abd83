"""BackboneEmbedder: a scikit-learn transformer turning images into frozen-backbone embeddings."""

from __future__ import annotations

import copy
import os
import threading
from collections import OrderedDict
from numbers import Integral, Real
from pathlib import Path

import numpy as np
import torch
from sklearn.base import BaseEstimator, TransformerMixin, _fit_context
from sklearn.utils._param_validation import Interval, StrOptions
from sklearn.utils.validation import check_is_fitted
from torch import nn
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from ._device import PRECISIONS, autocast, resolve_device, resolve_precision
from .backbones import load_backbone
from .cache import EmbeddingCache, as_cache
from .io import as_sources, read_image
from .transforms import RESIZE_POLICIES, fit_geometry
from .views import View, apply_color, feature_names, resolve_views

# Backbones loaded by name in this process, most recent last; at most a couple are kept (a ViT-g is GBs).
_SHARED_BACKBONES: OrderedDict[tuple, tuple[nn.Module, dict, dict]] = OrderedDict()
_MAX_SHARED_BACKBONES = 2
_SHARED_LOCK = threading.Lock()


def _mtime(path) -> float | None:
    try:
        return os.stat(path).st_mtime_ns if path is not None else None
    except OSError:
        return None  # load_backbone reports the missing file


class ViewDataset(Dataset):
    """Sample ``i`` -> uint8 tensor ``(n_views, H, W, 3)``: every view of one sample, each file decoded once.

    Normalisation is left to the device (batched), so workers ship compact uint8 tensors.
    """

    def __init__(self, sources, views, indices, size, *, policy, interpolation, crop_pct, scale):
        self.sources = sources
        self.indices = np.asarray(indices)
        self.size = size
        self.geometry = dict(policy=policy, interpolation=interpolation, crop_pct=crop_pct, scale=scale)
        # Group colours by source, keeping the documented view order, so each image is read once.
        self.groups: list[tuple[str, list[str]]] = []
        for view in views:
            if self.groups and self.groups[-1][0] == view.source:
                self.groups[-1][1].append(view.color)
            else:
                self.groups.append((view.source, [view.color]))

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, k: int) -> torch.Tensor:
        i = int(self.indices[k])
        images = []
        for source, colors in self.groups:
            where = f"sample {i}, source {source!r}"
            img = fit_geometry(read_image(self.sources[source][i], where), self.size, where=where, **self.geometry)
            images.extend(apply_color(img, color) for color in colors)
        return torch.from_numpy(np.stack(images))


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
    colors : list of {"rgb", "gray"}, default=("rgb",)
        Colour versions of every source; ``"gray"`` is luminance replicated to 3 channels.
    image_size : int or (int, int), default=None
        Backbone input size; ``None`` takes it from the backbone's pretrained data config.
    resize : {"pad", "stretch", "crop", "none"}, default="pad"
        Geometry policy, see :mod:`skdfl.transforms`. ``"pad"`` scales without distortion and pads.
    scale : float, default=None
        With ``resize="pad"``: a fixed scale factor instead of "fit to the input size".
    batch_size : int, default=32
        Images (samples) per forward pass.
    num_workers : int, default=0
        DataLoader worker processes decoding files; ``0`` decodes in the main process. Decoding and
        resizing a 700x460 PNG costs ~10 ms, serial with the forward pass when ``0``: on a GPU machine set
        it to the number of spare CPU cores (on a 2-core CPU-only machine a worker only steals cores).
    device : str, default="auto"
        ``"auto"`` picks CUDA, then MPS, then CPU.
    precision : {"auto", "fp32", "bf16", "fp16"}, default="auto"
        Autocast precision of the forward pass. ``"auto"`` is bf16 on a CPU with native bf16 support
        (with ``channels_last``, measured ~3x faster than fp32 for DenseNet-121 on 2 cores, embeddings
        within cosine 0.998 of fp32; ``benchmarks/bench_precision.py``), fp32 on other CPUs, fp16 on
        CUDA/MPS.
    random_state : int, default=0
        Seed of the weights of a random-init backbone (``pretrained=False``), so refits and clones embed
        identically. Pretrained weights do not depend on it.
    verbose : int, default=1
        ``0`` is silent; ``>=1`` shows a progress bar while embedding.
    cache : str, Path or EmbeddingCache, default=None
        Folder of an on-disk embedding cache (:class:`skdfl.cache.EmbeddingCache`). ``transform`` then
        looks every (sample, view) up by content and runs the backbone only on the missing ones, so
        cross-validation, grid searches and separate processes sharing the folder embed each image once.
        ``None`` disables caching.

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
    embedding_dim_ : int
        Features per view; the output has ``len(views_) * embedding_dim_`` columns.
    feature_names_in_ : ndarray of str
        Source columns seen in ``fit`` (DataFrame input only).
    n_features_in_ : int
        Number of source columns seen in ``fit`` (DataFrame input only).

    Notes
    -----
    Output columns are ordered view by view (sources in ``views`` order, colours in ``colors`` order
    within each source) and named ``<source>_<color>_<k>`` by :meth:`get_feature_names_out`.
    """

    _parameter_constraints = {
        "backbone": [str, nn.Module],
        "pretrained": ["boolean"],
        "checkpoint_path": [str, Path, None],
        "views": [list, tuple, str, None],
        "colors": [list, tuple, str],
        "image_size": [Interval(Integral, 1, None, closed="left"), tuple, list, None],
        "resize": [StrOptions(set(RESIZE_POLICIES))],
        "scale": [Interval(Real, 0, None, closed="neither"), None],
        "batch_size": [Interval(Integral, 1, None, closed="left")],
        "num_workers": [Interval(Integral, 0, None, closed="left")],
        "device": [str, torch.device],
        "precision": [StrOptions(set(PRECISIONS))],
        "random_state": [Interval(Integral, 0, None, closed="left")],
        "verbose": ["verbose"],
        "cache": [str, Path, EmbeddingCache, None],
    }

    def __init__(
        self,
        backbone="resnet50.tv_in1k",
        *,
        pretrained=True,
        checkpoint_path=None,
        views=None,
        colors=("rgb",),
        image_size=None,
        resize="pad",
        scale=None,
        batch_size=32,
        num_workers=0,
        device="auto",
        precision="auto",
        random_state=0,
        verbose=1,
        cache=None,
    ):
        self.backbone = backbone
        self.pretrained = pretrained
        self.checkpoint_path = checkpoint_path
        self.views = views
        self.colors = colors
        self.image_size = image_size
        self.resize = resize
        self.scale = scale
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.device = device
        self.precision = precision
        self.random_state = random_state
        self.verbose = verbose
        self.cache = cache

    # ------------------------------------------------------------------ fit
    @_fit_context(prefer_skip_nested_validation=True)
    def fit(self, X, y=None):
        """Load the backbone and resolve the views present in ``X``. No image is embedded."""
        sources, _ = as_sources(X)
        self.views_ = resolve_views(list(sources), self.views, self.colors)
        if hasattr(X, "columns"):
            self.feature_names_in_ = np.asarray([str(c) for c in X.columns], dtype=object)
            self.n_features_in_ = len(self.feature_names_in_)
        else:
            for attr in ("feature_names_in_", "n_features_in_"):
                self.__dict__.pop(attr, None)
        if isinstance(self.backbone, nn.Module):
            self.module_, self.data_config_ = self._load(copy.deepcopy(self.backbone))
            self.input_size_ = self._input_size()
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
        """Embed ``X``; returns float32 ``(n_samples, len(views_) * embedding_dim_)``."""
        check_is_fitted(self)
        sources, _ = as_sources(X)
        self._check_sources(sources)
        n = len(next(iter(sources.values())))
        if self.cache is not None:
            return as_cache(self.cache).embed(self, sources, np.arange(n))
        return self._embed(sources, np.arange(n))

    def _check_sources(self, sources) -> None:
        missing = sorted({v.source for v in self.views_} - set(sources))
        if missing:
            raise ValueError(
                f"X lacks the source columns {missing} this embedder was fitted with; got {list(sources)}"
            )

    def _dataset(self, sources, indices) -> ViewDataset:
        return ViewDataset(
            sources,
            self.views_,
            indices,
            self.input_size_,
            policy=self.resize,
            interpolation=self.data_config_.get("interpolation", "bicubic"),
            crop_pct=self.data_config_.get("crop_pct", 1.0) or 1.0,
            scale=self.scale,
        )

    def _embed(self, sources, indices) -> np.ndarray:
        """Embeddings of samples ``indices`` of ``sources``, shape ``(len(indices), n_views * dim)``."""
        device = resolve_device(self.device)
        dtype = resolve_precision(self.precision, device)
        memory_format = torch.channels_last if device.type in ("cpu", "cuda") else torch.contiguous_format
        module = self.module_.to(device=device, memory_format=memory_format)
        mean = torch.tensor(self.data_config_["mean"], device=device).view(1, 3, 1, 1) * 255.0
        std = torch.tensor(self.data_config_["std"], device=device).view(1, 3, 1, 1) * 255.0

        n_views, dim = len(self.views_), self.embedding_dim_
        out = np.empty((len(indices), n_views * dim), dtype=np.float32)
        loader = DataLoader(
            self._dataset(sources, indices),
            batch_size=self.batch_size,
            num_workers=self.num_workers,
            pin_memory=device.type == "cuda",
            persistent_workers=False,
        )
        start = 0
        with torch.inference_mode(), tqdm(
            total=len(indices), desc="embedding", unit="img", disable=not self.verbose, leave=False
        ) as bar:
            for batch in loader:
                b = batch.shape[0]
                # NHWC -> NCHW is a view with channels_last strides: no copy, the layout the model wants.
                x = batch.to(device, non_blocking=True).flatten(0, 1).permute(0, 3, 1, 2).float()
                x = ((x - mean) / std).contiguous(memory_format=memory_format)
                with autocast(device, dtype):
                    feats = self._forward(module, x)
                out[start : start + b] = feats.float().reshape(b, n_views * dim).cpu().numpy()
                start += b
                bar.update(b)
        if not np.isfinite(out).all():
            raise FloatingPointError(
                "the backbone produced NaN/inf embeddings; try precision='fp32'"
            )
        return out

    def get_feature_names_out(self, input_features=None):
        """``<source>_<color>_<k>`` for every output column, in concatenation order."""
        check_is_fitted(self)
        return feature_names(self.views_, self.embedding_dim_)

    # ---------------------------------------------------------- persistence
    def __getstate__(self):
        state = super().__getstate__()
        module = state.get("module_")
        # A model pickled on a GPU must unpickle on a CPU-only machine.
        if module is not None and any(p.device.type != "cpu" for p in module.parameters()):
            state["module_"] = copy.deepcopy(module).cpu()
        return state

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.two_d_array = False
        tags.input_tags.three_d_array = True
        tags.input_tags.string = True
        tags.transformer_tags.preserves_dtype = []
        return tags


__all__ = ["BackboneEmbedder", "View", "ViewDataset"]
