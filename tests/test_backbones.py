"""Backbone zoo: registry metadata, weight resolution (offline), checkpoint adapters, safety.

The ``skdfl backbones`` / ``fetch-weights`` commands are tested in tests/test_cli_backbones.py.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import time

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never let a test reach a hub

import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402

from skdfl.backbones import (  # noqa: E402
    BackboneSpec,
    CheckpointMismatchError,
    TokenPooling,
    UnsafeCheckpointError,
    WeightsNotFoundError,
    get_spec,
    list_backbones,
    load_backbone,
    load_state_dict,
    register_backbone,
    weights_fingerprint,
)


@pytest.fixture(autouse=True)
def offline(monkeypatch, tmp_path):
    """Offline, with an empty weights directory and empty HF / torch hub caches."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("SKDFL_WEIGHTS_DIR", str(tmp_path / "weights"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "torch_hub"))
    # huggingface_hub reads HF_HUB_CACHE at import time; point its constant at the empty cache too.
    import huggingface_hub.constants as hfc

    monkeypatch.setattr(hfc, "HF_HUB_CACHE", str(tmp_path / "hf"))
    return tmp_path / "weights"


def _assert_params_equal(model: nn.Module, expected: dict[str, torch.Tensor]):
    state = model.state_dict()
    for key, value in expected.items():
        assert torch.equal(state[key], value), key


def _embed(model, data_config, n=2):
    size = data_config["input_size"][1:]
    with torch.inference_mode():
        return model(torch.rand(n, 3, *size))


# ----------------------------------------------------------------------------- registry
REQUIRED = {
    "resnet50.dino_in1k", "resnet50.swav_in1k", "vit_small_patch8_224.dino", "convnext_base.fb_in22k_ft_in1k",
    "vit_base_patch16_224.augreg_in21k_ft_in1k", "resnet50.tv_in1k", "resnet50.keras_in1k",
    "densenet121.keras_in1k", "resnet50.tcga_brca_simclr", "vit_small_patch16_224.tcga_brca_dino",
    "vit_small_patch16_256.hipt_tcga_dino", "resnet18.ciga_simclr", "resnet50.mpcs_breakhis",
    "efficientnet_b2.mpcs_breakhis", "vit_large_patch16_224.uni", "vit_giant_patch14_224.uni2_h",
    "vit_base_patch16_224.phikon", "vit_large_patch16_224.phikon_v2", "vit_huge_patch14_224.virchow2",
    "vit_giant_patch14_reg4_dinov2.h_optimus_0", "vit_giant_patch14_dinov2.prov_gigapath",
    "vit_small_patch16_224.kaiko", "vit_small_patch16_224.lunit_dino", "swin_tiny_patch4_window7_224.ctranspath",
}  # fmt: skip


def test_list_backbones_table():
    table = list_backbones()
    for col in ("name", "architecture", "pretraining_data", "method", "medical", "embedding_dim", "input_size",
                "mean", "std", "license", "source"):  # fmt: skip
        assert col in table.columns
    assert REQUIRED <= set(table["name"])
    assert table["name"].is_unique
    assert (table["embedding_dim"] > 0).all()
    assert set(list_backbones(medical=True)["medical"]) == {True}
    full = list_backbones(full=True)
    assert {"timm_model", "adapter", "notes", "hf_hub_id", "url"} <= set(full.columns)


def test_every_zoo_file_is_registered_and_registry_code_stays_small():
    """Entries live in zoo/ files (each listed in FAMILIES); the modules holding code stay under 400 lines."""
    import importlib
    import pkgutil
    from pathlib import Path

    from skdfl.backbones import zoo

    modules = [
        importlib.import_module(m.name) for m in pkgutil.walk_packages(zoo.__path__, "skdfl.backbones.zoo.")
    ]
    entry_files = [m for m in modules if hasattr(m, "SPECS")]
    assert set(entry_files) == set(zoo.FAMILIES), "a zoo file with SPECS is missing from zoo.FAMILIES"
    registered = set(list_backbones()["name"])
    assert {spec.name for m in entry_files for spec in m.SPECS} <= registered
    package = Path(zoo.__file__).parents[1]
    code = [
        p for p in package.rglob("*.py") if zoo.__name__.split(".")[-1] not in p.relative_to(package).parts
    ]
    sizes = {p.name: len(p.read_text().splitlines()) for p in code}
    assert len(sizes) >= 8 and max(sizes.values()) < 400, sizes


def test_every_non_timm_entry_names_its_exact_source():
    for row in list_backbones(full=True).itertuples():
        if row.weights == "url":
            assert row.url and row.url.startswith("https://"), row.name
        elif row.weights == "hf":
            assert row.hf_hub_id and "/" in row.hf_hub_id and row.hf_hub_id in row.source, row.name
        elif row.weights == "manual":
            assert row.source.startswith("https://"), row.name
        assert row.filename, row.name


def test_foundation_model_metadata():
    from timm.layers import SwiGLUPacked

    uni = get_spec("uni")
    assert uni.timm_model == "vit_large_patch16_224" and uni.timm_kwargs["init_values"] == 1e-5
    assert uni.timm_kwargs["dynamic_img_size"] and uni.pooling == "token" and uni.embedding_dim == 1024
    v2 = get_spec("Virchow2")
    assert v2.timm_kwargs["mlp_layer"] is SwiGLUPacked and v2.timm_kwargs["act_layer"] is nn.SiLU
    assert v2.pooling == "token+mean" and v2.embedding_dim == 2 * 1280 and v2.timm_kwargs["reg_tokens"] == 4
    h0 = get_spec("h-optimus-0")
    assert h0.mean == (0.707223, 0.578729, 0.703617) and h0.embedding_dim == 1536
    assert get_spec("uni2-h").timm_kwargs["reg_tokens"] == 8
    assert get_spec("prov-gigapath").crop_pct == pytest.approx(224 / 256)
    assert get_spec("lunit-vits16").mean[0] == pytest.approx(0.70322989)
    assert get_spec("kaiko-vits16").mean == (0.5, 0.5, 0.5)


def test_every_entry_builds_with_its_registered_dim():
    """Architecture kwargs are valid for timm; built on the meta device, so ViT-g costs nothing."""
    from skdfl.backbones._builder import build_model

    sizes = {}
    for spec in map(get_spec, list_backbones()["name"]):
        with torch.device("meta"):
            model = build_model(spec)
        width = model.num_features * (2 if spec.pooling == "token+mean" else 1)
        assert width == spec.embedding_dim, spec.name
        sizes[spec.name] = sum(p.numel() for p in model.parameters())
    # published parameter counts (model cards): UNI 303.4M, Virchow2 631.2M, UNI2-h 681M
    assert round(sizes["vit_large_patch16_224.uni"] / 1e6, 1) == 303.4
    assert round(sizes["vit_huge_patch14_224.virchow2"] / 1e6, 1) == 631.2
    assert round(sizes["vit_giant_patch14_224.uni2_h"] / 1e6) == 681


@pytest.mark.parametrize("name", ["resnet18.ciga_simclr", "efficientnet_b2.mpcs_breakhis"])
def test_registered_architecture_has_registered_dim(name):
    model, cfg = load_backbone(name, pretrained=False)
    out = _embed(model, cfg)
    assert out.shape == (2, get_spec(name).embedding_dim) == (2, model.num_features)
    assert not model.training and not any(p.requires_grad for p in model.parameters())
    assert set(cfg) >= {"input_size", "mean", "std", "interpolation", "crop_pct"}


def test_timm_name_without_weights_and_module_passthrough():
    model, cfg = load_backbone("test_resnet", pretrained=False)
    assert _embed(model, cfg).shape == (2, model.num_features)
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten())
    module, cfg = load_backbone(net)
    assert module is net and cfg["input_size"] == (3, 224, 224)
    with pytest.raises(KeyError, match="unknown backbone"):
        load_backbone("no_such_model_anywhere", pretrained=False)


# ----------------------------------------------------------------------------- adapters, one format each
def test_ciga_lightning_checkpoint_with_projection_head(tmp_path):
    import torchvision

    tv = torchvision.models.resnet18()
    state = {f"model.resnet.{k}": v for k, v in tv.state_dict().items() if not k.startswith("fc.")}
    state.update(
        {"model.resnet.fc.0.weight": torch.randn(512, 512), "model.resnet.fc.2.weight": torch.randn(128, 512)}
    )
    ckpt = {"state_dict": state, "epoch": 9, "hyper_parameters": argparse.Namespace(lr=0.1)}
    path = tmp_path / "_ckpt_epoch_9.ckpt"
    torch.save(ckpt, path)
    model, cfg = load_backbone("ciga-resnet18", checkpoint_path=path)
    _assert_params_equal(model, {k: v for k, v in tv.state_dict().items() if not k.startswith("fc.")})
    assert _embed(model, cfg).shape == (2, 512)


def test_swav_module_prefix_and_heads_dropped_from_weights_dir(offline):
    import torchvision

    tv = torchvision.models.resnet50()
    state = {f"module.{k}": v for k, v in tv.state_dict().items() if not k.startswith("fc.")}
    state.update(
        {
            "module.projection_head.0.weight": torch.randn(8, 2048),
            "module.prototypes.weight": torch.randn(3, 8),
        }
    )
    offline.mkdir(parents=True)
    torch.save(state, offline / get_spec("resnet50.swav_in1k").filename)
    model, cfg = load_backbone("resnet50.swav_in1k")  # pretrained=True, resolved from SKDFL_WEIGHTS_DIR
    _assert_params_equal(model, {k: v for k, v in tv.state_dict().items() if not k.startswith("fc.")})
    assert _embed(model, cfg, n=1).shape == (1, 2048)


def test_dino_teacher_nesting_and_vit_at_256(tmp_path):
    import timm

    ref = timm.create_model("vit_small_patch16_224", num_classes=0)
    teacher = {f"backbone.{k}": v for k, v in ref.state_dict().items()}
    teacher["head.mlp.0.weight"] = torch.randn(4, 384)
    path = tmp_path / "vit256_small_dino.pth"
    torch.save({"teacher": teacher, "student": {"junk": torch.zeros(1)}, "epoch": 100}, path)
    model, cfg = load_backbone("hipt-vit256", checkpoint_path=path)
    _assert_params_equal(model, ref.state_dict())
    assert cfg["input_size"] == (3, 256, 256) and cfg["mean"] == (0.5, 0.5, 0.5)
    assert _embed(model, cfg, n=1).shape == (1, 384)


def test_timm_safetensors_with_classifier(tmp_path):
    import timm
    from safetensors.torch import save_file

    ref = timm.create_model("resnet50", num_classes=1000)
    path = tmp_path / "resnet50.safetensors"
    save_file(ref.state_dict(), str(path))
    model, cfg = load_backbone("resnet50.tv_in1k", checkpoint_path=path)
    _assert_params_equal(model, {k: v for k, v in ref.state_dict().items() if not k.startswith("fc.")})
    assert cfg["crop_pct"] == 0.875 and _embed(model, cfg, n=1).shape == (1, 2048)


def _tiny_spec(**overrides) -> BackboneSpec:
    base = dict(name="test_vit.tiny", architecture="tiny", timm_model="test_vit", pretraining_data="none",
                method="random", medical=False, embedding_dim=64, weights="manual", source="https://example.org",
                filename="tiny.pth", input_size=(3, 160, 160), pooling="token")  # fmt: skip
    base.update(overrides)
    return register_backbone(BackboneSpec(**base), overwrite=True)


def test_hf_transformers_vit_keys(tmp_path):
    import timm

    ref = timm.create_model("test_vit", num_classes=0)
    sd = ref.state_dict()
    dim = ref.embed_dim
    hf = {"vit.embeddings.cls_token": sd["cls_token"], "vit.embeddings.position_embeddings": sd["pos_embed"],
          "vit.embeddings.patch_embeddings.projection.weight": sd["patch_embed.proj.weight"],
          "vit.embeddings.patch_embeddings.projection.bias": sd["patch_embed.proj.bias"],
          "vit.layernorm.weight": sd["norm.weight"], "vit.layernorm.bias": sd["norm.bias"],
          "vit.pooler.dense.weight": torch.randn(dim, dim)}  # fmt: skip
    for i in range(len(ref.blocks)):
        b, p = f"blocks.{i}.", f"vit.encoder.layer.{i}."
        for kind in ("weight", "bias"):
            q, k, v = sd[f"{b}attn.qkv.{kind}"].chunk(3, dim=0)
            hf.update({f"{p}attention.attention.query.{kind}": q, f"{p}attention.attention.key.{kind}": k,
                       f"{p}attention.attention.value.{kind}": v,
                       f"{p}attention.output.dense.{kind}": sd[f"{b}attn.proj.{kind}"],
                       f"{p}layernorm_before.{kind}": sd[f"{b}norm1.{kind}"],
                       f"{p}layernorm_after.{kind}": sd[f"{b}norm2.{kind}"],
                       f"{p}intermediate.dense.{kind}": sd[f"{b}mlp.fc1.{kind}"],
                       f"{p}output.dense.{kind}": sd[f"{b}mlp.fc2.{kind}"]})  # fmt: skip
    # Hub files may be safetensors under a .bin name: the format is sniffed, not taken from the suffix.
    from safetensors.torch import save_file

    path = tmp_path / "pytorch_model.bin"
    save_file({k: v.contiguous() for k, v in hf.items()}, str(path))
    _tiny_spec(name="test_vit.hf", adapter="hf_vit")
    model, cfg = load_backbone("test_vit.hf", checkpoint_path=path)
    _assert_params_equal(model, sd)
    x = torch.rand(1, 3, 160, 160)
    with torch.inference_mode():
        assert torch.allclose(model(x), ref.eval()(x), atol=1e-5)


def test_lukemelas_efficientnet_keys(tmp_path):
    import timm

    ref = timm.create_model("tf_efficientnet_b0", num_classes=0)
    sd = ref.state_dict()
    inv_ds = {"conv_dw.": "_depthwise_conv.", "bn1.": "_bn1.", "se.conv_reduce.": "_se_reduce.",
              "se.conv_expand.": "_se_expand.", "conv_pw.": "_project_conv.", "bn2.": "_bn2."}  # fmt: skip
    inv_ir = {"conv_pw.": "_expand_conv.", "bn1.": "_bn0.", "conv_dw.": "_depthwise_conv.", "bn2.": "_bn1.",
              "se.conv_reduce.": "_se_reduce.", "se.conv_expand.": "_se_expand.", "conv_pwl.": "_project_conv.",
              "bn3.": "_bn2."}  # fmt: skip
    flat = [(s, i, hasattr(blk, "conv_pwl")) for s, st in enumerate(ref.blocks) for i, blk in enumerate(st)]
    luke = {}
    for key, value in sd.items():
        for k, (s, i, inverted) in enumerate(flat):
            prefix = f"blocks.{s}.{i}."
            if key.startswith(prefix):
                rest = key[len(prefix) :]
                old = next(o for o in (inv_ir if inverted else inv_ds) if rest.startswith(o))
                luke[f"backbone._blocks.{k}.{(inv_ir if inverted else inv_ds)[old]}{rest[len(old) :]}"] = (
                    value
                )
                break
        else:
            top = {"conv_stem.": "_conv_stem.", "bn1.": "_bn0.", "conv_head.": "_conv_head.", "bn2.": "_bn1."}
            old = next(o for o in top if key.startswith(o))
            luke[f"backbone.{top[old]}{key[len(old) :]}"] = value
    luke["mlp.1.weight"] = torch.randn(8, ref.num_features)
    path = tmp_path / "mpcs.pth"
    torch.save(luke, path)
    spec = dataclasses.replace(
        get_spec("efficientnet_b2.mpcs_breakhis"),
        name="tf_efficientnet_b0.mpcs_test",
        timm_model="tf_efficientnet_b0",
        embedding_dim=ref.num_features,
        aliases=(),
    )
    register_backbone(spec, overwrite=True)
    model, cfg = load_backbone("tf_efficientnet_b0.mpcs_test", checkpoint_path=path)
    _assert_params_equal(model, sd)
    assert isinstance(model.bn1.act, nn.Identity)  # MPCS drops the stem/head Swish


def test_ctranspath_conv_stem_swin(tmp_path):
    import timm

    from skdfl.backbones.adapters import ConvStem

    kw = dict(embed_dim=32, depths=(1, 1, 1, 1), num_heads=(1, 1, 2, 2), embed_layer=ConvStem)
    _tiny_spec(name="swin.ctranspath_tiny", timm_model="swin_tiny_patch4_window7_224", timm_kwargs=kw,
               adapter="swin_original", checkpoint_key="model", drop_prefixes=("head.",), pooling="avg",
               input_size=(3, 224, 224), embedding_dim=256)  # fmt: skip
    ref = timm.create_model("swin_tiny_patch4_window7_224", num_classes=0, **kw)
    state = dict(ref.state_dict())
    state["head.weight"] = torch.randn(3, 256)
    path = tmp_path / "ctranspath.pth"
    torch.save({"model": state}, path)
    model, cfg = load_backbone("swin.ctranspath_tiny", checkpoint_path=path)
    _assert_params_equal(model, ref.state_dict())
    assert _embed(model, cfg, n=1).shape == (1, 256)


def test_token_plus_mean_pooling_skips_registers():
    import timm

    vit = timm.create_model("test_vit", num_classes=0, reg_tokens=4, global_pool="").eval()
    pooled = TokenPooling(vit)
    assert pooled.num_features == 2 * vit.num_features
    x = torch.rand(2, 3, 160, 160)
    with torch.inference_mode():
        tokens = vit.forward_features(x)
        expected = torch.cat([tokens[:, 0], tokens[:, 5:].mean(1)], dim=-1)
        assert torch.allclose(pooled(x), expected)
    _tiny_spec(name="test_vit.regs", timm_kwargs={"reg_tokens": 4, "global_pool": ""}, pooling="token+mean",
               embedding_dim=128)  # fmt: skip
    model, cfg = load_backbone("test_vit.regs", pretrained=False)
    assert isinstance(model, TokenPooling) and _embed(model, cfg).shape == (2, 128)


# ----------------------------------------------------------------------------- strictness and safety
def test_strict_loading_names_missing_and_unexpected_keys(tmp_path):
    import timm

    state = timm.create_model("resnet18", num_classes=0).state_dict()
    state.pop("layer4.1.bn2.weight")
    state["extra.weight"] = torch.zeros(1)
    path = tmp_path / "broken.pth"
    torch.save(state, path)
    with pytest.raises(CheckpointMismatchError, match=r"layer4\.1\.bn2\.weight.*extra\.weight"):
        load_backbone("resnet18.ciga_simclr", checkpoint_path=path)
    with pytest.warns(UserWarning, match="1 missing"):
        load_backbone("resnet18.ciga_simclr", checkpoint_path=path, strict=False)
    state["conv1.weight"] = torch.zeros(1, 1, 1, 1)
    torch.save(state, path)
    with pytest.raises(CheckpointMismatchError, match=r"conv1\.weight: checkpoint \(1, 1, 1, 1\)"):
        load_backbone("resnet18.ciga_simclr", checkpoint_path=path, strict=False)


class _Evil:
    def __init__(self, target):
        self.target = target

    def __reduce__(self):
        return (os.system, (f"echo pwned > {self.target}",))


def test_malicious_pickle_is_refused(tmp_path):
    marker = tmp_path / "pwned.txt"
    path = tmp_path / "evil.pth"
    torch.save({"state_dict": {"conv1.weight": torch.zeros(1)}, "payload": _Evil(marker)}, path)
    with pytest.raises(UnsafeCheckpointError, match="refused to load .*evil.pth.*posix.system|system"):
        load_state_dict(path)
    with pytest.raises(UnsafeCheckpointError):
        load_backbone("resnet18.ciga_simclr", checkpoint_path=path)
    assert not marker.exists()


def test_checkpoint_with_numpy_scalars_loads_but_other_numpy_objects_are_refused(tmp_path):
    """Issue 11, item 18: a best score / epoch saved as numpy scalars is data, not code."""
    path = tmp_path / "scores.pth"
    weights = {"conv1.weight": torch.arange(4.0)}
    torch.save({"state_dict": weights, "best_acc": np.float64(0.91), "epoch": np.int64(3),
                "lr": np.float32(1e-3), "flag": np.bool_(True)}, path)  # fmt: skip
    state = load_state_dict(path)
    assert state.keys() == weights.keys() and torch.equal(state["conv1.weight"], weights["conv1.weight"])
    # Still refused: code hiding next to numpy scalars.
    marker = tmp_path / "pwned.txt"
    evil = tmp_path / "evil.pth"
    torch.save({"state_dict": weights, "best_acc": np.float64(0.9), "payload": _Evil(marker)}, evil)
    with pytest.raises(UnsafeCheckpointError, match="refused to load"):
        load_state_dict(evil)
    assert not marker.exists()
    # The numpy allowance is scoped to our loads: torch's own allowlist is left as it was.
    assert not any("numpy" in repr(g) for g in torch.serialization.get_safe_globals())


def test_empty_truncated_and_corrupt_checkpoints_name_the_file(tmp_path):
    """Issue 11, item 19: no bare EOFError or safetensors header error without the file's name."""
    empty = tmp_path / "empty.pth"
    empty.write_bytes(b"")
    with pytest.raises(ValueError, match=r"empty\.pth is empty \(0 bytes\)"):
        load_state_dict(empty)
    good = tmp_path / "good.pth"
    torch.save({"conv1.weight": torch.zeros(64, 3, 7, 7)}, good)
    truncated = tmp_path / "truncated.pth"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises((ValueError, RuntimeError), match="truncated\\.pth"):
        load_state_dict(truncated)
    corrupt = tmp_path / "corrupt.safetensors"
    corrupt.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all}")
    with pytest.raises(ValueError, match="corrupt\\.safetensors is not a valid safetensors file"):
        load_state_dict(corrupt)
    with pytest.raises(ValueError, match="corrupt\\.safetensors"):
        load_backbone("resnet18", checkpoint_path=corrupt)


def test_missing_weights_offline_error_is_clear_and_fast(offline):
    start = time.perf_counter()
    with pytest.raises(WeightsNotFoundError) as err:
        load_backbone("uni")  # ViT-L: must fail before building the architecture
    msg = str(err.value)
    assert "uni_pytorch_model.bin" in msg and str(offline) in msg and "MahmoodLab/UNI" in msg
    with pytest.raises(WeightsNotFoundError, match=r"resnet18\.a1_in1k\.safetensors"):
        load_backbone("resnet18.a1_in1k")  # a plain timm tag resolves the same way
    with pytest.raises(WeightsNotFoundError, match="no public download"):
        load_backbone("mpcs-resnet50")
    assert time.perf_counter() - start < 5


def test_unreachable_hub_fails_fast_without_offline_flag(monkeypatch, offline):
    from skdfl.backbones import weights as W

    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.setattr(W, "_REACHABLE", {"huggingface.co": False})
    start = time.perf_counter()
    with pytest.raises(WeightsNotFoundError, match="cannot reach huggingface.co"):
        load_backbone("phikon")
    assert time.perf_counter() - start < 5


def test_weights_fingerprint_is_stable_and_sensitive():
    import timm

    a = timm.create_model("resnet50", num_classes=0)
    b = timm.create_model("resnet50", num_classes=0)
    b.load_state_dict(dict(reversed(list(a.state_dict().items()))))
    start = time.perf_counter()
    fa = weights_fingerprint(a)
    assert time.perf_counter() - start < 3
    assert fa == weights_fingerprint(b) and len(fa) == 64
    with torch.no_grad():
        next(b.parameters()).view(-1)[0] += 1e-3
    assert weights_fingerprint(b) != fa
    assert weights_fingerprint(a.to(torch.bfloat16)) != fa


def test_fetch_weights_downloads_with_checksum_then_loads_offline(monkeypatch, offline, tmp_path):
    """A loopback HTTP server stands in for the weights host."""
    import functools
    import hashlib
    import http.server
    import threading

    import timm

    from skdfl.backbones import fetch_weights

    served = tmp_path / "served"
    served.mkdir()
    ref = timm.create_model("test_resnet", num_classes=0)
    torch.save({"state_dict": {f"module.{k}": v for k, v in ref.state_dict().items()}}, served / "w.pth")
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(served))
    handler.log_message = lambda *a, **k: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/w.pth"
        _tiny_spec(name="test_resnet.url", timm_model="test_resnet", weights="url", url=url, source=url,
                   filename="test_resnet_w.pth", adapter="prefix", strip_prefixes=("module.",),
                   pooling="avg", embedding_dim=ref.num_features)  # fmt: skip
        with pytest.raises(WeightsNotFoundError, match="offline"):
            fetch_weights("test_resnet.url")
        monkeypatch.delenv("HF_HUB_OFFLINE")
        path, sha = fetch_weights("test_resnet.url")
    finally:
        server.shutdown()
        thread.join()
    assert path == offline / "test_resnet_w.pth"
    assert sha == hashlib.sha256((served / "w.pth").read_bytes()).hexdigest()
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    model, _ = load_backbone("test_resnet.url")  # now found in the weights directory, offline
    _assert_params_equal(model, ref.state_dict())


# ----------------------------------------------------------------------------- skdfl's own checkpoints
OWN_CONFIG = {"format": "skdfl-backbone/1", "timm_model": "resnet18", "timm_kwargs": {},
              "embedding_dim": 512, "pooling": "avg", "input_size": [3, 96, 96], "mean": [0.5, 0.5, 0.5],
              "std": [0.25, 0.25, 0.25], "interpolation": "bilinear", "crop_pct": 1.0,
              "pretraining_data": "IDC patches", "method": "SimCLR", "medical": True}  # fmt: skip


def _own_checkpoint(tmp_path, config=OWN_CONFIG):
    """An encoder as skdfl's pretraining leaves it: safetensors state dict + JSON config beside it."""
    import json

    import timm
    from safetensors.torch import save_file

    ref = timm.create_model("resnet18", num_classes=0)
    with torch.no_grad():  # weights no random init reproduces
        for param in ref.parameters():
            param.add_(torch.randn_like(param))
    path = tmp_path / "simclr_resnet18.safetensors"
    save_file(ref.state_dict(), str(path))
    (tmp_path / "simclr_resnet18.json").write_text(json.dumps(config))
    return ref, path


@pytest.mark.parametrize("pretrained", [True, False])  # the checkpoint wins either way
def test_own_checkpoint_loads_into_embedder_with_its_config(tmp_path, pretrained):
    from skdfl import BackboneEmbedder

    ref, path = _own_checkpoint(tmp_path)
    common = dict(device="cpu", precision="fp32", verbose=0, batch_size=4)
    emb = BackboneEmbedder(backbone="resnet18", pretrained=pretrained, checkpoint_path=path, **common)
    X = np.random.default_rng(0).integers(0, 256, size=(3, 40, 40, 3), dtype=np.uint8)
    Z = emb.fit_transform(X)
    _assert_params_equal(emb.module_, ref.state_dict())
    assert emb.data_config_ == {"input_size": (3, 96, 96), "mean": (0.5, 0.5, 0.5), "std": (0.25, 0.25, 0.25),
                                "interpolation": "bilinear", "crop_pct": 1.0}  # fmt: skip
    assert emb.input_size_ == (96, 96) and Z.shape == (3, 512)
    random_init = BackboneEmbedder(backbone="resnet18", pretrained=False, **common).fit_transform(X)
    assert not np.allclose(Z, random_init)
    # The config names the architecture, so loading it into another one fails clearly, before any build.
    with pytest.raises(ValueError, match=r"timm 'resnet18' \(see .*simclr_resnet18\.json\)"):
        load_backbone("resnet50", checkpoint_path=path)


def test_own_checkpoint_config_variants(tmp_path):
    import json

    ref, path = _own_checkpoint(tmp_path)
    config_path = tmp_path / "simclr_resnet18.json"
    # skdfl.pretrain's save_backbone format: training provenance beside the keys that rebuild the backbone
    config_path.write_text(json.dumps({**OWN_CONFIG, "format": "skdfl-pretrained-backbone/1", "epochs": 3,
                                       "params": {"lr": 0.3}, "weights_sha256": "0" * 64}))  # fmt: skip
    model, cfg = load_backbone("resnet18", checkpoint_path=path)
    _assert_params_equal(model, ref.state_dict())
    assert cfg["input_size"] == (3, 96, 96) and cfg["std"] == (0.25, 0.25, 0.25)
    config_path.write_text(json.dumps({"labels": ["a", "b"]}))  # another tool's JSON: timm's preprocessing
    assert load_backbone("resnet18", checkpoint_path=path)[1]["input_size"] == (3, 224, 224)
    config_path.unlink()
    assert load_backbone("resnet18", checkpoint_path=path)[1]["input_size"] == (3, 224, 224)
    for bad, message in [
        ({**OWN_CONFIG, "format": "skdfl-backbone/2"}, r"format 'skdfl-backbone/2' is not supported"),
        ({**OWN_CONFIG, "timm_model": None}, r"no timm_model, so the encoder was a custom torch module"),
        ({**OWN_CONFIG, "build_hook": "nope"}, r"unknown build_hook 'nope'"),
    ]:
        config_path.write_text(json.dumps(bad))
        with pytest.raises(ValueError, match=r"simclr_resnet18\.json: " + message):
            load_backbone("resnet18", checkpoint_path=path)
    config_path.write_text("{not json")
    with pytest.raises(ValueError, match=r"simclr_resnet18\.json: not valid JSON"):
        load_backbone("resnet18", checkpoint_path=path)


def test_own_checkpoint_registered_in_the_zoo(tmp_path, offline):
    from skdfl import BackboneEmbedder
    from skdfl.backbones import spec_from_weights

    ref, path = _own_checkpoint(tmp_path)
    spec = register_backbone(
        spec_from_weights(path, name="resnet18.test_simclr_idc", aliases=("test-simclr",)), overwrite=True
    )
    assert spec.weights == "local" and spec.source == str(path.resolve()) and spec.medical
    row = list_backbones(full=True).set_index("name").loc["resnet18.test_simclr_idc"]
    assert row.embedding_dim == 512 and row.method == "SimCLR" and row.input_size == (3, 96, 96)
    model, cfg = load_backbone("test-simclr")  # pretrained=True: found offline at the registered path
    _assert_params_equal(model, ref.state_dict())
    assert cfg["mean"] == (0.5, 0.5, 0.5)
    emb = BackboneEmbedder(backbone="test-simclr", device="cpu", verbose=0).fit(
        np.zeros((1, 8, 8, 3), np.uint8)
    )
    assert emb.embedding_dim_ == 512 and emb.input_size_ == (96, 96)
    path.rename(tmp_path / "moved.safetensors")
    with pytest.raises(
        WeightsNotFoundError, match=r"registered file .*simclr_resnet18\.safetensors is missing"
    ):
        load_backbone("test-simclr")


def test_save_weights_round_trip_is_atomic_and_respects_umask(tmp_path):
    import json

    import timm

    from skdfl.backbones import read_weights_config, save_weights

    vit = timm.create_model("test_vit", num_classes=0, reg_tokens=4, global_pool="")
    old = os.umask(0o027)
    try:
        weights, config_path = save_weights(TokenPooling(vit), tmp_path / "out" / "enc.safetensors",
                                            timm_kwargs={"reg_tokens": 4, "global_pool": ""}, method="MPCS")  # fmt: skip
    finally:
        os.umask(old)
    # both files written, no temporary file left behind, modes as open() would give them
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["enc.json", "enc.safetensors"]
    assert {weights.stat().st_mode & 0o777, config_path.stat().st_mode & 0o777} == {0o640}
    config = read_weights_config(weights)
    assert config == json.loads(config_path.read_text())
    assert config["timm_model"] == "test_vit" and config["pooling"] == "token+mean"
    assert config["embedding_dim"] == 2 * vit.num_features and config["method"] == "MPCS"
    model, cfg = load_backbone("test_vit", checkpoint_path=weights)
    assert isinstance(model, TokenPooling) and cfg["input_size"] == tuple(config["input_size"])
    _assert_params_equal(model.model, vit.state_dict())
    with pytest.raises(ValueError, match="plain JSON values"):
        save_weights(vit, tmp_path / "bad.safetensors", timm_kwargs={"act_layer": nn.SiLU})
    with pytest.raises(ValueError, match=r"ending in \.safetensors"):
        save_weights(vit, tmp_path / "enc.pth")
    assert not (tmp_path / "bad.safetensors").exists()


def test_untagged_timm_name_means_timms_default_tag(offline):
    import timm
    from safetensors.torch import save_file

    with pytest.raises(WeightsNotFoundError, match=r"resnet18\.a1_in1k\.safetensors"):
        load_backbone("resnet18")
    ref = timm.create_model("resnet18", num_classes=0)
    offline.mkdir(parents=True)
    save_file(ref.state_dict(), str(offline / "resnet18.a1_in1k.safetensors"))
    model, cfg = load_backbone("resnet18")
    _assert_params_equal(model, ref.state_dict())
    assert cfg["crop_pct"] == 0.95  # resnet18.a1_in1k's preprocessing


# ----------------------------------------------------------------------------- several backbones at once
def test_feature_union_of_two_backbones():
    from sklearn.pipeline import FeatureUnion

    from skdfl.embedder import BackboneEmbedder

    common = dict(pretrained=False, image_size=32, device="cpu", precision="fp32", verbose=0, batch_size=4)
    small = nn.Sequential(nn.Conv2d(3, 5, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten())
    union = FeatureUnion([
        ("resnet", BackboneEmbedder(backbone="test_resnet", **common)),
        ("tiny", BackboneEmbedder(backbone=small, **common)),
    ])  # fmt: skip
    X = np.random.default_rng(0).integers(0, 256, size=(3, 40, 40, 3), dtype=np.uint8)
    Z = union.fit_transform(X)
    first = union.transformer_list[0][1].transform(X)
    assert Z.shape == (3, 96 + 5)
    np.testing.assert_allclose(Z[:, :96], first, rtol=1e-5, atol=1e-6)
    names = union.get_feature_names_out()
    assert (
        names[0].startswith("resnet__") and names[-1].startswith("tiny__") and len(set(names)) == Z.shape[1]
    )
