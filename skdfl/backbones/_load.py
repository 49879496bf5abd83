"""``load_backbone``: a name, a checkpoint or a module in; a frozen pooled-feature extractor out."""

from __future__ import annotations

import shutil
from pathlib import Path

import timm
import torch
from timm.data import resolve_model_data_config
from torch import nn

from .adapters import ADAPTERS, BUILD_HOOKS, TokenPooling, load_into
from .registry import IMAGENET_MEAN, IMAGENET_STD, BackboneSpec, get_spec
from .weights import (
    WeightsNotFoundError,
    download_url,
    file_sha256,
    host_reachable,
    is_offline,
    load_state_dict,
    weights_dir,
)

__all__ = ["fetch_weights", "load_backbone", "resolve_weights"]


def _hf_endpoint() -> str:
    from huggingface_hub import constants

    return constants.ENDPOINT.rstrip("/") + "/"  # honours HF_ENDPOINT (mirrors)


def _fallback_data_config(model: nn.Module) -> dict:
    try:
        cfg = dict(resolve_model_data_config(model))
    except Exception:  # a plain nn.Module without timm metadata
        cfg = {}
    cfg.setdefault("input_size", (3, 224, 224))
    cfg.setdefault("mean", IMAGENET_MEAN)
    cfg.setdefault("std", IMAGENET_STD)
    cfg.setdefault("interpolation", "bicubic")
    cfg.setdefault("crop_pct", 1.0)
    return {k: cfg[k] for k in ("input_size", "mean", "std", "interpolation", "crop_pct")}


# ----------------------------------------------------------------------------- weight resolution
def _timm_spec(name: str) -> BackboneSpec | None:
    """A throw-away spec for any timm ``arch.tag`` name, so it resolves like registry entries."""
    from timm.models import get_pretrained_cfg

    if "." not in name:
        return None
    cfg = get_pretrained_cfg(name)
    if cfg is None:
        return None
    return BackboneSpec(
        name=name, architecture=name.split(".")[0], timm_model=name.split(".")[0], pretraining_data="",
        method="", medical=False, embedding_dim=0, weights="timm", hf_hub_id=cfg.hf_hub_id or None,
        url=cfg.url or None, source=cfg.hf_hub_id or cfg.url or name, filename=f"{name}.safetensors",
        hf_filenames=((cfg.hf_hub_filename,) if cfg.hf_hub_filename else ("model.safetensors", "pytorch_model.bin")),
    )  # fmt: skip


def _hf_cached(repo: str, filenames) -> Path | None:
    from huggingface_hub import try_to_load_from_cache

    for filename in filenames:
        found = try_to_load_from_cache(repo, filename)
        if isinstance(found, str):
            return Path(found)
    return None


def _torch_hub_cached(url: str) -> Path | None:
    path = Path(torch.hub.get_dir()) / "checkpoints" / Path(url.split("?")[0]).name
    return path if path.is_file() else None


def _package_file(spec: BackboneSpec) -> Path | None:
    if spec.package_file is None:
        return None
    import importlib.util

    found = importlib.util.find_spec(spec.package_file[0])
    if found is None or not found.submodule_search_locations:
        return None
    path = Path(next(iter(found.submodule_search_locations))) / spec.package_file[1]
    return path if path.is_file() else None


def _online(url: str) -> bool:
    return not is_offline() and host_reachable(url)


def _download(spec: BackboneSpec, dest: Path, *, copy: bool = True) -> tuple[Path, str]:
    """Fetch the spec's weights into ``dest``; return the path and its SHA-256.

    Hub files land in the Hugging Face cache first; ``copy=False`` returns that cached file instead of
    duplicating it into the weights directory (``fetch_weights`` copies, so the directory is portable).
    """
    if spec.weights in ("hf", "timm") and spec.hf_hub_id:
        from huggingface_hub import hf_hub_download
        from huggingface_hub.errors import EntryNotFoundError

        last: Exception | None = None
        for filename in spec.hf_filenames:
            try:
                cached = Path(hf_hub_download(spec.hf_hub_id, filename))
            except EntryNotFoundError as err:  # try the next candidate file name
                last = err
                continue
            if not copy:
                return cached, ""
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(cached, dest)
            return dest, file_sha256(dest)
        raise WeightsNotFoundError(f"{spec.hf_hub_id} has none of {list(spec.hf_filenames)}") from last
    if spec.url:
        return dest, download_url(spec.url, dest)
    raise WeightsNotFoundError(f"{spec.name}: no download source; {spec.how_to_get()}")


def _not_found(spec: BackboneSpec, why: str) -> WeightsNotFoundError:
    target = weights_dir() / spec.filename
    fetch = (
        f" On a machine with internet, `skdfl fetch-weights {spec.name}` downloads it into the weights "
        "directory (copy that directory to this machine)."
        if spec.weights != "manual"
        else ""
    )
    return WeightsNotFoundError(
        f"no weights for backbone {spec.name!r} ({why}). Place the file `{spec.filename}` in "
        f"{weights_dir()} (i.e. {target}; set SKDFL_WEIGHTS_DIR to use another directory), or pass "
        f"checkpoint_path=. Source: {spec.how_to_get()}.{fetch}"
    )


def resolve_weights(
    spec: BackboneSpec, checkpoint_path: str | Path | None = None, *, download: bool = True
) -> Path:
    """Find (or fetch) the weights file of ``spec``, in the documented order.

    Parameters
    ----------
    spec : BackboneSpec
    checkpoint_path : path, optional
        Used as is when given.
    download : bool, default=True
        Allow a download (only attempted when online) into the weights directory.

    Returns
    -------
    pathlib.Path

    Raises
    ------
    WeightsNotFoundError
        Nothing found locally and no download possible; names the file and the directory.
    """
    if checkpoint_path is not None:
        path = Path(checkpoint_path).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"checkpoint_path does not exist: {path}")
        return path
    local = weights_dir() / spec.filename
    if local.is_file():
        return local
    cached = None
    if spec.hf_hub_id:
        cached = _hf_cached(spec.hf_hub_id, spec.hf_filenames)
    if cached is None and spec.url:
        cached = _torch_hub_cached(spec.url)
    if cached is None:
        cached = _package_file(spec)
    if cached is not None:
        return cached
    if spec.weights == "manual":
        raise _not_found(spec, "these weights have no public download")
    if not download:
        raise _not_found(spec, "not found locally and downloads are disabled")
    if is_offline():
        raise _not_found(spec, "offline: HF_HUB_OFFLINE or SKDFL_OFFLINE is set")
    probe = _hf_endpoint() if spec.weights in ("hf", "timm") and spec.hf_hub_id else (spec.url or "")
    if not host_reachable(probe):
        raise _not_found(spec, f"cannot reach {probe.split('/')[2] if '://' in probe else probe}")
    path, _ = _download(spec, local, copy=False)
    return path


def fetch_weights(name: str, *, force: bool = False) -> tuple[Path, str]:
    """Download a backbone's weights into the weights directory (to prepare an offline machine).

    Parameters
    ----------
    name : str
        Registry name, alias or timm ``arch.tag`` name.
    force : bool, default=False
        Download again even if the file is already there.

    Returns
    -------
    path : pathlib.Path
    sha256 : str
    """
    spec = get_spec(name) or _timm_spec(name)
    if spec is None:
        raise KeyError(f"unknown backbone {name!r}: see `skdfl backbones`")
    dest = weights_dir() / spec.filename
    if dest.is_file() and not force:
        return dest, file_sha256(dest)
    if spec.weights == "package":
        found = _package_file(spec)
        if found is not None and not force:
            return found, file_sha256(found)
    if spec.weights == "manual":
        raise _not_found(spec, "these weights have no public download")
    if is_offline():
        raise _not_found(spec, "offline: HF_HUB_OFFLINE or SKDFL_OFFLINE is set")
    probe = _hf_endpoint() if spec.hf_hub_id and spec.weights in ("hf", "timm") else (spec.url or "")
    if not host_reachable(probe):
        raise _not_found(spec, f"cannot reach {probe}")
    return _download(spec, dest)


# ----------------------------------------------------------------------------- building
def _build(spec: BackboneSpec, kwargs: dict) -> nn.Module:
    model_kwargs = {**spec.timm_kwargs, **kwargs}
    model_kwargs.setdefault("num_classes", 0)
    model = timm.create_model(spec.timm_model, pretrained=False, **model_kwargs)
    if spec.build_hook:
        model = BUILD_HOOKS[spec.build_hook](model)
    return model


def _load_file(model: nn.Module, spec: BackboneSpec, path: Path, strict: bool) -> nn.Module:
    if spec.adapter == "keras":
        from .adapters import set_bn_eps
        from .keras import convert_keras

        conv = convert_keras(
            path, spec.timm_model, bgr_to_rgb=spec.build_hook == "keras_resnet", strict=strict
        )
        set_bn_eps(model, conv.bn_eps)
        load_into(model, conv.state_dict, strict=strict, source=str(path))
        return model
    state = load_state_dict(path, key=spec.checkpoint_key)
    state = ADAPTERS[spec.adapter if spec.adapter in ADAPTERS else "timm"](state, model, spec)
    load_into(model, state, strict=strict, source=str(path))
    return model


def _finish(model: nn.Module, spec: BackboneSpec | None, data_config: dict) -> tuple[nn.Module, dict]:
    if spec is not None and spec.pooling == "token+mean":
        model = TokenPooling(model)
    model.eval().requires_grad_(False)
    return model, data_config


def load_backbone(
    backbone: str | nn.Module,
    *,
    pretrained: bool = True,
    checkpoint_path: str | Path | None = None,
    strict: bool = True,
    **kwargs,
) -> tuple[nn.Module, dict]:
    """Build a frozen backbone returning pooled ``(n, dim)`` features, and its data config.

    Parameters
    ----------
    backbone : str or torch.nn.Module
        A registry name or alias (see :func:`list_backbones`), any timm model name (with pretrained tag,
        e.g. ``"resnet50.tv_in1k"``), or a module mapping ``(n, 3, H, W)`` to ``(n, dim)``.
    pretrained : bool, default=True
        Load pretrained weights, resolved in the order: ``checkpoint_path``, the weights directory,
        the Hugging Face / timm cache (and installed packages), then a download when online.
        ``False`` builds the architecture with random weights, offline.
    checkpoint_path : path, optional
        Local weights loaded through the backbone's adapter (safetensors, ``torch.load`` with
        ``weights_only=True``, or Keras ``.keras`` / ``.h5``). Takes precedence over ``pretrained``.
    strict : bool, default=True
        Require the checkpoint to cover every backbone parameter exactly; ``False`` only warns.
    **kwargs
        Extra ``timm.create_model`` arguments (e.g. ``img_size``), overriding the registry's.

    Returns
    -------
    module : torch.nn.Module
        Eval mode, ``requires_grad=False``, with ``num_features``.
    data_config : dict
        ``input_size``, ``mean``, ``std``, ``interpolation``, ``crop_pct``.

    Raises
    ------
    WeightsNotFoundError
        Pretrained weights requested but not found, and no download possible (names the file).
    UnsafeCheckpointError
        The checkpoint needs pickled code to load.
    CheckpointMismatchError
        The checkpoint does not match the architecture (names the keys).
    """
    if isinstance(backbone, nn.Module):
        model = backbone
        if checkpoint_path is not None:
            load_into(model, load_state_dict(checkpoint_path), strict=strict, source=str(checkpoint_path))
        model.eval().requires_grad_(False)
        return model, _fallback_data_config(model)
    if not isinstance(backbone, str):
        raise TypeError(f"backbone must be a name or a torch.nn.Module, got {type(backbone).__name__}")

    spec = get_spec(backbone)
    if spec is not None:
        # Resolve first: a missing file must fail before minutes of random init of a ViT-g.
        path = resolve_weights(spec, checkpoint_path) if checkpoint_path is not None or pretrained else None
        model = _build(spec, kwargs)
        if path is not None:
            model = _load_file(model, spec, path, strict)
        config = spec.data_config
        if "img_size" in kwargs:
            size = kwargs["img_size"]
            size = (size, size) if isinstance(size, int) else tuple(size)
            config["input_size"] = (3, *size)
        return _finish(model, spec, config)

    # Any other timm name. Tags timm knows resolve like registry entries (weights dir, caches, clear
    # offline error) but are loaded by timm itself when found only on the hub, so its own filters apply.
    kwargs.setdefault("num_classes", 0)
    try:
        model = timm.create_model(backbone, pretrained=False, **kwargs)
    except RuntimeError as err:
        raise KeyError(
            f"unknown backbone {backbone!r}: not in the skdfl registry (see list_backbones()) "
            f"and not a timm model name ({err})"
        ) from err
    tspec = _timm_spec(backbone)
    if checkpoint_path is not None:
        state = ADAPTERS["timm"](load_state_dict(checkpoint_path), model, tspec)
        load_into(model, state, strict=strict, source=str(checkpoint_path))
    elif pretrained:
        if tspec is None:
            raise WeightsNotFoundError(
                f"timm name {backbone!r} has no pretrained tag; use e.g. "
                f"{(timm.list_pretrained(backbone.split('.')[0] + '.*') or ['<arch>.<tag>'])[0]!r}, "
                "pretrained=False, or checkpoint_path="
            )
        local = weights_dir() / tspec.filename
        cached = local if local.is_file() else None
        if cached is None and tspec.hf_hub_id:
            cached = _hf_cached(tspec.hf_hub_id, tspec.hf_filenames)
        if cached is None and tspec.url:
            cached = _torch_hub_cached(tspec.url)
        if cached is not None:
            state = ADAPTERS["timm"](load_state_dict(cached), model, tspec)
            load_into(model, state, strict=strict, source=str(cached))
        else:
            probe = _hf_endpoint() if tspec.hf_hub_id else (tspec.url or "")
            if is_offline():
                raise _not_found(tspec, "offline: HF_HUB_OFFLINE or SKDFL_OFFLINE is set")
            if not host_reachable(probe):
                raise _not_found(tspec, f"cannot reach {probe}")
            model = timm.create_model(backbone, pretrained=True, **kwargs)
    config = _fallback_data_config(model)
    return _finish(model, None, config)
