"""Checkpoint files: read any published checkpoint as tensors only; write and describe skdfl's own.

Reading (:func:`load_state_dict`) never executes pickled code: safetensors, or ``torch.load`` with
``weights_only=True`` and a short allowlist of code-free objects.

skdfl's own backbone checkpoints (e.g. a pretrained encoder) are a safetensors file of a timm model's
state dict plus a JSON config beside it (``encoder.safetensors`` -> ``encoder.json``) recording how to
rebuild the architecture and preprocess its input. :func:`save_weights` writes both;
:func:`skdfl.backbones.load_backbone` reads the config when given such a ``checkpoint_path``, and
:func:`spec_from_weights` turns the pair into a registry entry.
"""

from __future__ import annotations

import json
import pickle
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn

from ..storage import atomic_path
from .adapters import BUILD_HOOKS, TokenPooling
from .registry import DATA_CONFIG_KEYS, POOLINGS, BackboneSpec, model_data_config

__all__ = [
    "CONFIG_FORMAT",
    "READABLE_FORMATS",
    "UnsafeCheckpointError",
    "load_state_dict",
    "read_weights_config",
    "save_weights",
    "spec_from_weights",
    "weights_config_path",
]

# Non-tensor objects that training scripts routinely pickle next to the weights (DINO/Lightning store
# their argparse namespace, best scores as numpy scalars). They carry no code, so allowing them keeps
# those checkpoints loadable with ``weights_only=True``; anything else is refused.
_BENIGN_GLOBALS = {
    "argparse.Namespace",
    "numpy.core.multiarray.scalar",
    "numpy._core.multiarray.scalar",
    "numpy.dtype",
    "numpy.core.multiarray._reconstruct",
    "numpy._core.multiarray._reconstruct",
    "numpy.ndarray",
    "collections.OrderedDict",
    "builtins.set",
}


class UnsafeCheckpointError(pickle.UnpicklingError):
    """A checkpoint needs arbitrary pickled objects (code) to load and was refused."""


# ----------------------------------------------------------------------------- reading checkpoints
def _numpy_scalar_globals() -> list:
    """What unpickling a numpy scalar (``np.float64(0.9)``, ``np.int64(3)``) needs: numpy's ``scalar``
    constructor, ``np.dtype`` and the dtype class of each numeric and boolean type. Pure data: these build
    numbers from bytes and run no other code."""
    import numpy as np

    types = (np.bool_, np.int8, np.int16, np.int32, np.int64, np.uint8, np.uint16, np.uint32, np.uint64,
             np.float16, np.float32, np.float64, np.longdouble, np.complex64, np.complex128)  # fmt: skip
    constructors = [
        _import_global(name)
        for name in ("numpy._core.multiarray.scalar", "numpy.core.multiarray.scalar")
    ]
    return [g for g in constructors if g is not None] + [np.dtype] + [type(np.dtype(t)) for t in types]


def _torch_load_allowing(path: Path, extra_globals=()):
    """``torch.load(weights_only=True)`` that also accepts numpy scalars and ``extra_globals``, and names the
    file when it is empty or unreadable."""
    if path.stat().st_size == 0:
        raise ValueError(f"checkpoint {path} is empty (0 bytes): an interrupted download or copy? Fetch it again")
    with torch.serialization.safe_globals([*_numpy_scalar_globals(), *extra_globals]):
        try:
            return torch.load(path, map_location="cpu", weights_only=True)
        except EOFError as err:
            raise ValueError(f"checkpoint {path} ends too early (truncated file?): {err!r}") from err
        except RuntimeError as err:  # e.g. "PytorchStreamReader failed reading zip archive"
            raise RuntimeError(f"cannot read checkpoint {path}: {err}") from err
        except OSError as err:  # a truncated zip checkpoint gives a bare "[Errno 22] Invalid argument"
            raise ValueError(f"cannot read checkpoint {path} (truncated or not a checkpoint?): {err}") from err


def _torch_load(path: Path):
    try:
        return _torch_load_allowing(path)
    except pickle.UnpicklingError as err:
        try:
            wanted = set(torch.serialization.get_unsafe_globals_in_checkpoint(str(path)))
        except Exception:  # not a zip checkpoint (legacy format): nothing to allowlist from here
            wanted = set()
        if not wanted or not wanted <= _BENIGN_GLOBALS:
            refused = sorted(wanted - _BENIGN_GLOBALS) or ["<see below>"]
            raise UnsafeCheckpointError(
                f"refused to load {path}: it needs pickled objects that could run code "
                f"({', '.join(refused)}). skdfl only reads tensors (safetensors or torch.load with "
                "weights_only=True). If you trust the file, convert it once in a separate environment: "
                "torch.save(obj['state_dict'] or model.state_dict(), 'clean.pth'), or save it as "
                f".safetensors. Loader said: {str(err).splitlines()[0]}"
            ) from err
    allowed = [_import_global(name) for name in sorted(wanted)]
    return _torch_load_allowing(path, [g for g in allowed if g is not None])


def _import_global(qualname: str):
    module, _, attr = qualname.rpartition(".")
    try:
        mod = __import__(module, fromlist=[attr])
        return getattr(mod, attr)
    except (ImportError, AttributeError):
        return None


def _flatten_tensors(obj, prefix: str = "") -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    for key, value in obj.items():
        name = f"{prefix}{key}"
        if isinstance(value, torch.Tensor):
            out[name] = value
        elif (
            isinstance(value, Mapping) and value and all(isinstance(v, torch.Tensor) for v in value.values())
        ):
            out.update(_flatten_tensors(value, f"{name}."))
    return out


def _is_safetensors(path: Path) -> bool:
    # A hub may serve either format under a name chosen in advance: sniff the header, not the suffix.
    # safetensors = 8-byte little-endian header length, then a JSON object.
    with open(path, "rb") as fh:
        head = fh.read(9)
    if len(head) < 9 or head[8:9] != b"{":
        return False
    return 0 < int.from_bytes(head[:8], "little") < 100_000_000


def load_state_dict(path: str | Path, *, key: str | None = None) -> dict[str, torch.Tensor]:
    """Read a checkpoint's tensors without executing pickled code.

    Parameters
    ----------
    path : str or Path
        ``.safetensors``, or anything ``torch.save`` wrote (``.pth``, ``.pt``, ``.bin``, ``.ckpt``,
        ``.pth.tar``, ``.torch``); read with ``weights_only=True``.
    key : str, optional
        Entry holding the state dict (``"teacher"`` for DINO, ``"state_dict"`` for Lightning). When
        omitted, the first of ``state_dict``, ``model``, ``teacher``, ``module`` that holds a dict is
        used, else the top level. A file that is already a flat state dict is accepted either way.

    Returns
    -------
    dict of str to torch.Tensor

    Raises
    ------
    FileNotFoundError
        ``path`` does not exist.
    UnsafeCheckpointError
        The file needs arbitrary pickled objects to load. Numpy scalars (a best score, an epoch) are
        allowed: they are data.
    ValueError
        The file is empty, truncated, or a corrupt safetensors file (the message names it).
    KeyError
        ``key`` is not in the checkpoint and its top level holds no tensors.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    if path.suffix in (".keras", ".h5", ".hdf5"):
        raise ValueError(
            f"{path} is a Keras checkpoint: load it with backbone='resnet50.keras_in1k' or "
            "'densenet121.keras_in1k' (skdfl.backbones.keras maps Keras ResNet-50 / DenseNet-121 onto timm)"
        )
    if path.suffix == ".safetensors" or _is_safetensors(path):
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(str(path), device="cpu")
        except SafetensorError as err:
            raise ValueError(
                f"{path} is not a valid safetensors file ({path.stat().st_size} bytes; {err}): a truncated or "
                "corrupt download? Fetch it again"
            ) from err
    state = _torch_load(path)
    if not isinstance(state, Mapping):
        raise TypeError(f"{path} holds a {type(state).__name__}, not a state dict")
    if key is not None and key in state:
        state = state[key]
    elif key is not None and not any(isinstance(v, torch.Tensor) for v in state.values()):
        raise KeyError(f"{path} has no entry {key!r}; top-level entries: {sorted(map(str, state))[:20]}")
    else:
        for candidate in ("state_dict", "model", "teacher", "module"):
            if isinstance(state.get(candidate), Mapping):
                state = state[candidate]
                break
    tensors = _flatten_tensors(state)
    if not tensors:
        raise ValueError(f"{path} holds no tensors (entries: {sorted(map(str, state))[:20]})")
    return tensors


# ----------------------------------------------------------------------------- skdfl's own checkpoints
#: ``format`` written by :func:`save_weights`.
CONFIG_FORMAT = "skdfl-backbone/1"
#: ``format`` values read: :func:`save_weights`' and ``skdfl.pretrain``'s ``save_backbone`` (whose extra
#: training-provenance keys are kept in the dict but not needed to rebuild the backbone).
READABLE_FORMATS = (CONFIG_FORMAT, "skdfl-pretrained-backbone/1")
_DESCRIPTION_KEYS = ("architecture", "pretraining_data", "method", "medical", "license", "notes")
#: Config keys that become :class:`BackboneSpec` fields.
_SPEC_KEYS = ("timm_model", "timm_kwargs", "build_hook", "embedding_dim", "pooling", *DATA_CONFIG_KEYS,
              *_DESCRIPTION_KEYS)  # fmt: skip


def weights_config_path(path: str | Path) -> Path:
    """The JSON config beside a weights file: ``encoder.safetensors`` -> ``encoder.json``."""
    return Path(path).with_suffix(".json")


def save_weights(
    module: nn.Module,
    path: str | Path,
    *,
    timm_model: str | None = None,
    timm_kwargs: Mapping | None = None,
    data_config: Mapping | None = None,
    **description,
) -> tuple[Path, Path]:
    """Write a timm backbone's weights (safetensors) and the JSON config that rebuilds it.

    Both files are written atomically, the weights first, so a config always describes complete weights.

    Parameters
    ----------
    module : torch.nn.Module
        A timm model (``num_classes=0``), or one wrapped in :class:`TokenPooling`.
    path : str or Path
        The ``.safetensors`` file; the config goes to :func:`weights_config_path` of it.
    timm_model : str, optional
        timm architecture; defaults to the module's ``pretrained_cfg["architecture"]``.
    timm_kwargs : dict, optional
        ``timm.create_model`` arguments that rebuild the architecture (JSON values only).
    data_config : dict, optional
        Preprocessing the weights expect (``input_size``, ``mean``, ``std``, ``interpolation``,
        ``crop_pct``); defaults to the module's timm data config.
    **description
        ``architecture``, ``pretraining_data``, ``method``, ``medical``, ``license``, ``notes``,
        ``build_hook``, ``embedding_dim`` or ``pooling`` (the last two are read from the module when
        omitted); any other JSON value is recorded as provenance (epochs, loss, parameters, ...).

    Returns
    -------
    weights_path, config_path : pathlib.Path
    """
    path = Path(path)
    if path.suffix != ".safetensors":
        raise ValueError(f"save_weights writes safetensors: give a path ending in .safetensors, got {path}")
    pooling = description.pop("pooling", None)
    if isinstance(module, TokenPooling):
        pooling, embedding_dim, model = "token+mean", module.num_features, module.model
    else:
        model, embedding_dim = module, getattr(module, "num_features", None)
        pooling = pooling or ("token" if getattr(module, "global_pool", None) == "token" else "avg")
    embedding_dim = description.pop("embedding_dim", embedding_dim)
    timm_model = timm_model or (getattr(model, "pretrained_cfg", None) or {}).get("architecture")
    if not timm_model:
        raise ValueError("the module has no timm pretrained_cfg: pass timm_model= (the timm architecture)")
    if not embedding_dim:
        raise ValueError("the module has no num_features: pass embedding_dim=")
    data_config = dict(data_config or model_data_config(model))
    config = {"format": CONFIG_FORMAT, "timm_model": timm_model, "timm_kwargs": dict(timm_kwargs or {}),
              "embedding_dim": int(embedding_dim), "pooling": pooling,
              **{k: list(data_config[k]) if isinstance(data_config[k], tuple) else data_config[k]
                 for k in DATA_CONFIG_KEYS if k in data_config},
              **description}  # fmt: skip
    try:
        text = json.dumps(config, indent=2)
    except TypeError as err:
        raise ValueError(f"the weights config must be plain JSON values ({err}): {config}") from err
    from safetensors.torch import save_file

    # clone(): safetensors refuses tensors sharing storage (tied weights, views of one buffer).
    tensors = {k: v.detach().to("cpu").contiguous().clone() for k, v in model.state_dict().items()}
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata={"format": "pt"})
    config_path = weights_config_path(path)
    with atomic_path(config_path) as tmp:
        tmp.write_text(text + "\n")
    return path, config_path


def read_weights_config(path: str | Path) -> dict | None:
    """The skdfl JSON config beside the weights file ``path``, or ``None`` when there is none.

    Written by :func:`save_weights` or ``skdfl.pretrain``'s ``save_backbone``; a JSON file of the same
    name written by another tool (no skdfl ``format`` key) counts as none.

    Raises
    ------
    ValueError
        The config is not valid JSON, has an unsupported version, or cannot rebuild a timm backbone
        (the message names the file).
    """
    config_path = weights_config_path(path)
    if Path(path).suffix == ".json" or not config_path.is_file():
        return None
    try:
        config = json.loads(config_path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"{config_path}: not valid JSON ({err})") from err
    fmt = config.get("format") if isinstance(config, dict) else None
    if not isinstance(fmt, str) or not fmt.startswith("skdfl-"):
        return None
    if fmt not in READABLE_FORMATS:
        raise ValueError(
            f"{config_path}: format {fmt!r} is not supported (this skdfl reads {READABLE_FORMATS})"
        )
    if not config.get("timm_model"):
        raise ValueError(
            f"{config_path}: no timm_model, so the encoder was a custom torch module that skdfl cannot "
            "rebuild; load it with BackboneEmbedder(backbone=<that module>, checkpoint_path=...)"
        )
    if not isinstance(config.get("embedding_dim"), int) or config["embedding_dim"] < 1:
        raise ValueError(
            f"{config_path}: embedding_dim must be a positive integer, got {config.get('embedding_dim')!r}"
        )
    if config.get("build_hook") not in (None, *BUILD_HOOKS):
        raise ValueError(
            f"{config_path}: unknown build_hook {config['build_hook']!r}; known: {sorted(BUILD_HOOKS)}"
        )
    if config.get("pooling", "avg") not in POOLINGS:
        raise ValueError(f"{config_path}: pooling must be one of {POOLINGS}, got {config['pooling']!r}")
    return config


def spec_from_weights(path: str | Path, *, name: str | None = None, **overrides) -> BackboneSpec:
    """A registry entry for weights with an skdfl JSON config beside them (see :func:`save_weights`).

    Parameters
    ----------
    path : str or Path
        The ``.safetensors`` file.
    name : str, optional
        Registry name; defaults to ``"<timm_model>.<file stem>"``.
    **overrides
        Any other :class:`BackboneSpec` field (``aliases``, ``medical``, ...).

    Returns
    -------
    BackboneSpec
        ``weights="local"`` with ``source`` the absolute path, so the file is found where it is; ready
        for :func:`~skdfl.backbones.register_backbone`.
    """
    path = Path(path).expanduser().resolve()
    if not path.is_file():
        raise FileNotFoundError(f"weights file not found: {path}")
    config = read_weights_config(path)
    if config is None:
        raise FileNotFoundError(
            f"{path} has no skdfl config {weights_config_path(path)}: write the weights with "
            "skdfl.backbones.save_weights, or build BackboneSpec(weights='local', source=path, ...) by hand"
        )
    fields = {
        k: tuple(config[k]) if isinstance(config[k], list) else config[k] for k in _SPEC_KEYS if k in config
    }
    fields = {"architecture": config["timm_model"], "pretraining_data": "", "method": "", "medical": False,
              **fields, "name": name or f"{config['timm_model']}.{path.stem}", "weights": "local",
              "source": str(path), "filename": path.name, "adapter": "timm", **overrides}  # fmt: skip
    fields["timm_kwargs"] = dict(fields.get("timm_kwargs") or {})
    return BackboneSpec(**fields)
