"""``load_backbone``: a name, a checkpoint or a module in; a frozen pooled-feature extractor out.

This module builds architectures and loads weight files into them. Finding the files is
:mod:`~skdfl.backbones.weights`' job, reading them :func:`~skdfl.backbones.load_state_dict`'s, and
mapping published key layouts onto timm :mod:`~skdfl.backbones.adapters`'.
"""

from __future__ import annotations

from pathlib import Path

import timm
from torch import nn

from ._checkpoint import load_state_dict, read_weights_config, spec_from_weights, weights_config_path
from .adapters import ADAPTERS, BUILD_HOOKS, TokenPooling, load_into
from .keras import load_keras_into
from .registry import BackboneSpec, get_spec, model_data_config, timm_spec
from .weights import WeightsNotFoundError, check_downloadable, locate_weights, resolve_weights

__all__ = ["build_model", "load_backbone", "load_weights"]


def build_model(spec: BackboneSpec, **kwargs) -> nn.Module:
    """The spec's timm architecture with random weights and no classifier (``num_classes=0``).

    ``kwargs`` are ``timm.create_model`` arguments overriding the spec's ``timm_kwargs``.
    """
    model_kwargs = {**spec.timm_kwargs, **kwargs}
    model_kwargs.setdefault("num_classes", 0)
    model = timm.create_model(spec.timm_model, pretrained=False, **model_kwargs)
    if spec.build_hook:
        model = BUILD_HOOKS[spec.build_hook](model)
    return model


def load_weights(
    model: nn.Module, spec: BackboneSpec | None, path: str | Path, *, strict: bool = True
) -> nn.Module:
    """Load the weights file ``path`` into ``model`` through the spec's adapter (timm layout without a spec).

    Raises
    ------
    CheckpointMismatchError
        The adapted checkpoint does not match the model (names the keys and the file).
    """
    if spec is not None and spec.adapter == "keras":
        load_keras_into(
            model, path, spec.timm_model, bgr_to_rgb=spec.build_hook == "keras_resnet", strict=strict
        )
        return model
    state = load_state_dict(path, key=None if spec is None else spec.checkpoint_key)
    adapter = ADAPTERS[spec.adapter] if spec is not None and spec.adapter in ADAPTERS else ADAPTERS["timm"]
    load_into(model, adapter(state, model, spec), strict=strict, source=str(path))
    return model


def _frozen(model: nn.Module, spec: BackboneSpec | None) -> nn.Module:
    if spec is not None and spec.pooling == "token+mean":
        model = TokenPooling(model)
    return model.eval().requires_grad_(False)


def _own_checkpoint_spec(backbone: str, checkpoint_path: str | Path) -> BackboneSpec | None:
    """The spec described by the JSON config beside a checkpoint that skdfl wrote, if there is one."""
    config = read_weights_config(checkpoint_path)
    if config is None:
        return None
    if config["timm_model"] != backbone.split(".")[0]:
        raise ValueError(
            f"checkpoint {checkpoint_path} holds a timm {config['timm_model']!r} (see "
            f"{weights_config_path(checkpoint_path)}), not {backbone!r}: pass backbone={config['timm_model']!r}"
        )
    return spec_from_weights(checkpoint_path, name=backbone)


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
        A registry name or alias (see :func:`list_backbones`), any timm model name (an untagged name
        means timm's default pretrained tag, e.g. ``"resnet50"`` is ``"resnet50.a1_in1k"``), or a module
        mapping ``(n, 3, H, W)`` to ``(n, dim)``.
    pretrained : bool, default=True
        Load pretrained weights, resolved in the order: ``checkpoint_path``, the weights directory,
        the Hugging Face / timm cache (and installed packages), then a download when online.
        ``False`` builds the architecture with random weights, offline.
    checkpoint_path : path, optional
        Local weights loaded through the backbone's adapter (safetensors, ``torch.load`` with
        ``weights_only=True``, or Keras ``.keras`` / ``.h5``). Takes precedence over ``pretrained``.
        For a plain timm name, a JSON config written beside the file by :func:`save_weights` supplies
        the architecture arguments, pooling and preprocessing.
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
        if checkpoint_path is not None:  # a module of the caller's own: its keys as saved, no adapter
            load_into(backbone, load_state_dict(checkpoint_path), strict=strict, source=str(checkpoint_path))
        return backbone.eval().requires_grad_(False), model_data_config(backbone)
    if not isinstance(backbone, str):
        raise TypeError(f"backbone must be a name or a torch.nn.Module, got {type(backbone).__name__}")

    spec = get_spec(backbone)
    if spec is None and checkpoint_path is not None:
        spec = _own_checkpoint_spec(backbone, checkpoint_path)
    if spec is not None:
        # Resolve first: a missing file must fail before minutes of random init of a ViT-g.
        path = resolve_weights(spec, checkpoint_path) if checkpoint_path is not None or pretrained else None
        model = build_model(spec, **kwargs)
        if path is not None:
            load_weights(model, spec, path, strict=strict)
        config = spec.data_config
        if "img_size" in kwargs:
            size = kwargs["img_size"]
            config["input_size"] = (3, *((size, size) if isinstance(size, int) else tuple(size)))
        return _frozen(model, spec), config

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
    tspec = timm_spec(backbone)
    path = checkpoint_path
    if path is None and pretrained:
        if tspec is None:
            raise WeightsNotFoundError(
                f"timm has no pretrained weights for {backbone!r}; use pretrained=False or checkpoint_path="
            )
        path = locate_weights(tspec)
        if path is None:
            check_downloadable(tspec)
            model = timm.create_model(backbone, pretrained=True, **kwargs)
    if path is not None:
        load_weights(model, tspec, path, strict=strict)
    return _frozen(model, None), model_data_config(model)
