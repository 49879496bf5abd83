"""Reading Keras checkpoints with h5py only (no TensorFlow): every weighted layer, by its real name.

Two file layouts are supported:

* Keras 3 ``.keras`` zip (``config.json`` + ``model.weights.h5``). The HDF5 names layers by class and
  creation order (``conv2d``, ``conv2d_1``, ..., ``batch_normalization_7``) following the order of the
  layers in ``config.json``, nesting sub-models under ``layers/<class>/layers/...``; the config gives
  each layer's real name (``conv2_block1_1_conv``), so the names are recovered by replaying that order.
* legacy Keras 2 ``.h5`` (``save_weights`` files such as Keras Applications' ``*_notop.h5``, or full
  ``model.save`` files with a ``model_weights`` group): layers are named groups listed in the
  ``layer_names`` attribute, each with a ``weight_names`` attribute.
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

__all__ = ["KerasLayer", "read_keras_weights"]

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
