"""SimCLR / MPCS pretrainers: training lowers the loss, checkpoints resume exactly, the encoder exports."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

import skdfl.pretrain._base as pretrain_base
from skdfl.backbones import register_backbone, spec_from_weights
from skdfl.embedder import BackboneEmbedder
from skdfl.pretrain import CHECKPOINT_NAME, MPCSPretrainer, RunMismatchError, SimCLRPretrainer

pytestmark = pytest.mark.usefixtures("one_torch_thread")

# resnet10t: the smallest timm ResNet; at 32 px an epoch of 32 images takes ~1 s on one thread.
TINY = dict(backbone="resnet10t", image_size=32, precision="fp32", device="cpu", verbose=0)
GENTLE = dict(crop_scale=None, color_jitter=0.0, gray_probability=0.0, blur_probability=0.0)


def waves(n: int, size: int = 36, seed: int = 0, zoom: float = 1.0) -> np.ndarray:
    """``n`` coloured sine gratings (random frequency, angle, colour); ``zoom`` scales the frequency."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    out = []
    for _ in range(n):
        freq, angle, colour = rng.uniform(0.1, 0.8), rng.uniform(0, np.pi), rng.uniform(0.2, 1.0, 3)
        wave = 0.5 + 0.5 * np.sin(freq * zoom * (np.cos(angle) * xx + np.sin(angle) * yy))
        out.append((wave[..., None] * colour * 255).astype(np.uint8))
    return np.stack(out)


def multi_magnification(n_groups: int = 8, per_mag: int = 2) -> pd.DataFrame:
    """Long MPCS table: every group one grating family, seen at 3 'magnifications' (zooms)."""
    rows = []
    for g in range(n_groups):
        for mag, zoom in (("40X", 1.0), ("100X", 2.5), ("200X", 5.0)):
            for k, img in enumerate(waves(per_mag, seed=g, zoom=zoom)):
                rows.append({"path": img, "magnification": mag, "group": f"patient{g}", "k": k})
    return pd.DataFrame(rows)


class FakeRegion:
    """A stand-in for a whole-slide region: the ImageSource protocol (read_rgb, content_key)."""

    def __init__(self, centre: int, zoom: float):
        self.centre, self.zoom = centre, zoom

    def read_rgb(self) -> np.ndarray:
        return waves(1, seed=self.centre, zoom=self.zoom)[0]

    def content_key(self) -> str:
        return f"fake-slide|{self.centre}|{self.zoom}"

    def __repr__(self) -> str:
        return f"FakeRegion({self.centre}, {self.zoom})"


def same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


# ----------------------------------------------------------------------------- training
def test_short_simclr_run_lowers_the_loss():
    pre = SimCLRPretrainer(**TINY, **GENTLE, batch_size=16, max_epochs=4, lr_schedule="constant")
    pre.fit(waves(32))
    assert pre.n_iter_ == 4 and pre.loss_curve_.shape == (4,)
    # log(2N - 1) = 3.43 is the loss of an encoder that cannot tell views apart
    assert pre.loss_curve_[-1] < pre.loss_curve_[0] - 0.3, pre.loss_curve_
    assert [h["epoch"] for h in pre.history_] == [1, 2, 3, 4]
    assert all(h["pairs"] == 32 for h in pre.history_)
    assert not pre.encoder_.training and not any(p.requires_grad for p in pre.encoder_.parameters())


def test_short_mpcs_run_lowers_the_loss():
    X = multi_magnification()
    pre = MPCSPretrainer(**TINY, batch_size=16, max_epochs=4, lr_schedule="constant", pair_strategy="random")
    pre.fit(X)
    assert pre.layout_ == "long" and pre.n_groups_ == 8
    assert pre.magnifications_ == ["40X", "100X", "200X"]
    assert pre.n_items_per_epoch_ == len(X)
    assert pre.loss_curve_[-1] < pre.loss_curve_[0] - 0.2, pre.loss_curve_


def test_mpcs_same_centre_regions_in_wide_layout():
    # One row per tissue centre, one column per magnification: pairs are the same centre at two zooms.
    X = pd.DataFrame({"x5": [FakeRegion(c, 1.0) for c in range(12)], "x20": [FakeRegion(c, 4.0) for c in range(12)]})
    X.loc[3, "x20"] = None  # a centre missing one magnification is skipped as an anchor
    pre = MPCSPretrainer(**TINY, batch_size=8, max_epochs=2, pair_strategy="fixed", fixed_pair=("x20", "x5"))
    pre.fit(X)
    assert pre.layout_ == "wide" and pre.n_groups_ == 12 and pre.magnifications_ == ["x20", "x5"]
    assert pre.n_items_per_epoch_ == 11
    with pytest.raises(ValueError, match="shares no magnification"):
        MPCSPretrainer(**TINY, max_epochs=1).fit(X)  # the default table names 40X..400X


def test_random_init_starting_point_is_the_embedders_random_init():
    # The benchmarks' "random init" baseline (BackboneEmbedder(pretrained=False, random_state=0)) is exactly
    # where pretraining starts: with a vanishing learning rate the weights barely move.
    X = waves(8)
    pre = SimCLRPretrainer(**TINY, batch_size=4, max_epochs=1, lr=1e-12).fit(X)
    start = BackboneEmbedder("resnet10t", pretrained=False, random_state=0, image_size=32, verbose=0).fit(X).module_
    trained, initial = pre.encoder_.state_dict(), start.state_dict()
    weights = [k for k in initial if k.endswith("weight")]
    assert weights and all(torch.allclose(trained[k], initial[k], atol=1e-8) for k in weights)
    other = SimCLRPretrainer(**TINY, batch_size=4, max_epochs=1, lr=1e-12, random_state=1).fit(X)
    assert not torch.allclose(other.encoder_.state_dict()[weights[0]], initial[weights[0]])


def test_mpcs_same_augmentation_trains():
    pre = MPCSPretrainer(**TINY, batch_size=8, max_epochs=1, same_augmentation=True, crop_scale=(0.5, 1.0),
                         pair_strategy="ordered", pair_table={"40X": "100X", "100X": "200X", "200X": "40X"})
    pre.fit(multi_magnification(n_groups=4))
    assert pre.n_iter_ == 1 and np.isfinite(pre.loss_curve_).all()


def test_simclr_reads_paths_and_dataframe_columns(tmp_path):
    paths = []
    for i, img in enumerate(waves(6)):
        paths.append(str(tmp_path / f"{i}.png"))
        Image.fromarray(img).save(paths[-1])
    pre = SimCLRPretrainer(**TINY, batch_size=4, max_epochs=1).fit(paths)
    assert pre.n_items_per_epoch_ == 6
    frame = pd.DataFrame({"x20": paths[:3], "x5": paths[3:]})
    assert SimCLRPretrainer(**TINY, batch_size=4, max_epochs=1).fit(frame).n_items_per_epoch_ == 6


@pytest.mark.parametrize(
    ("make", "X", "error", "message"),
    [
        (SimCLRPretrainer, waves(1), ValueError, "at least 2 images"),
        (SimCLRPretrainer, ["/nonexistent/a.png", "/nonexistent/b.png"], ValueError, "/nonexistent/a.png"),
        (MPCSPretrainer, waves(4), TypeError, "needs a DataFrame"),
        (MPCSPretrainer, pd.DataFrame({"path": ["a"], "magnification": ["40X"]}), ValueError, r"lacks the columns \['group'\]"),
        (MPCSPretrainer, pd.DataFrame({"x20": ["a"]}), ValueError, "at least 2 such columns"),
        (MPCSPretrainer, pd.DataFrame({"path": ["a", None], "magnification": [40, 100], "group": [1, 1]}), ValueError, "'path' is empty in 1 rows"),
    ],
)
def test_bad_input_raises_clear_errors(make, X, error, message):
    with pytest.raises(error, match=message):
        make(**TINY, max_epochs=1).fit(X)


# ----------------------------------------------------------------------------- checkpoints
def test_interrupted_run_resumes_from_its_checkpoint_and_matches_an_uninterrupted_run(tmp_path, monkeypatch):
    X = waves(12)
    params = dict(**TINY, batch_size=4, max_epochs=3)  # 3 steps per epoch
    real_loss = pretrain_base.nt_xent_loss
    steps = []

    def interrupted_at_step_5(*args, **kwargs):  # the middle of epoch 2
        steps.append(1)
        if len(steps) == 5:
            raise KeyboardInterrupt
        return real_loss(*args, **kwargs)

    monkeypatch.setattr(pretrain_base, "nt_xent_loss", interrupted_at_step_5)
    with pytest.raises(KeyboardInterrupt):
        SimCLRPretrainer(**params, checkpoint_dir=tmp_path).fit(X)
    monkeypatch.undo()
    assert sorted(os.listdir(tmp_path)) == [CHECKPOINT_NAME]  # no temporary file left behind
    state = torch.load(tmp_path / CHECKPOINT_NAME, weights_only=True)
    assert state["epoch"] == 1

    resumed = SimCLRPretrainer(**params, checkpoint_dir=tmp_path).fit(X)
    uninterrupted = SimCLRPretrainer(**params).fit(X)
    assert resumed.resumed_from_epoch_ == 1 and resumed.n_iter_ == 3
    np.testing.assert_array_equal(resumed.loss_curve_, uninterrupted.loss_curve_)
    assert same_weights(resumed.encoder_, uninterrupted.encoder_)
    assert same_weights(resumed.projection_head_, uninterrupted.projection_head_)

    # A finished run is only reloaded; raising max_epochs continues it.
    again = SimCLRPretrainer(**params, checkpoint_dir=tmp_path).fit(X)
    assert again.resumed_from_epoch_ == 3 and same_weights(again.encoder_, resumed.encoder_)
    longer = SimCLRPretrainer(**{**params, "max_epochs": 4}, checkpoint_dir=tmp_path).fit(X)
    assert longer.resumed_from_epoch_ == 3 and longer.n_iter_ == 4
    with pytest.raises(ValueError, match="already has 4 epochs"):
        SimCLRPretrainer(**params, checkpoint_dir=tmp_path).fit(X)


def test_checkpoint_of_another_run_is_refused(tmp_path):
    X = waves(8)
    SimCLRPretrainer(**TINY, batch_size=4, max_epochs=1, checkpoint_dir=tmp_path).fit(X)
    with pytest.raises(RunMismatchError, match="temperature: checkpoint 0.5, now 0.2"):
        SimCLRPretrainer(**TINY, batch_size=4, max_epochs=2, temperature=0.2, checkpoint_dir=tmp_path).fit(X)
    with pytest.raises(RunMismatchError, match="images"):
        SimCLRPretrainer(**TINY, batch_size=4, max_epochs=2, checkpoint_dir=tmp_path).fit(waves(8, seed=1))
    (tmp_path / CHECKPOINT_NAME).write_bytes(b"not a checkpoint")
    with pytest.raises(RunMismatchError, match="cannot read"):
        SimCLRPretrainer(**TINY, batch_size=4, max_epochs=2, checkpoint_dir=tmp_path).fit(X)


KILL_SCRIPT = textwrap.dedent(
    """
    import sys, torch
    torch.set_num_threads(1)
    from skdfl.pretrain import SimCLRPretrainer
    paths = sys.argv[2:]
    SimCLRPretrainer("resnet10t", image_size=32, precision="fp32", device="cpu", verbose=0, batch_size=4,
                     max_epochs=50, checkpoint_dir=sys.argv[1]).fit(paths)
    """
)


@pytest.mark.slow  # a fresh interpreter importing torch + timm: ~10-30 s on a loaded 2-core machine
def test_sigkilled_process_resumes_from_last_complete_epoch(tmp_path):
    paths = []
    for i, img in enumerate(waves(8)):
        paths.append(str(tmp_path / f"{i}.png"))
        Image.fromarray(img).save(paths[-1])
    ckpt_dir = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-c", KILL_SCRIPT, str(ckpt_dir), *paths], stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 240
        while not (ckpt_dir / CHECKPOINT_NAME).exists():
            assert proc.poll() is None, proc.stderr.read().decode()
            assert time.monotonic() < deadline, "no checkpoint within 240 s"
            time.sleep(0.05)
        time.sleep(0.3)  # let it get into the next epoch
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
    done = torch.load(ckpt_dir / CHECKPOINT_NAME, weights_only=True)["epoch"]
    assert 1 <= done < 50
    resumed = SimCLRPretrainer(
        "resnet10t", image_size=32, precision="fp32", device="cpu", verbose=0, batch_size=4,
        max_epochs=done + 1, checkpoint_dir=ckpt_dir,
    ).fit(paths)  # fmt: skip
    assert resumed.resumed_from_epoch_ == done and resumed.n_iter_ == done + 1


# ----------------------------------------------------------------------------- progress
def test_progress_shows_the_loss_and_verbose_0_is_silent(capfd):
    X = waves(8)
    SimCLRPretrainer(**{**TINY, "verbose": 1}, batch_size=4, max_epochs=2).fit(X)
    err = capfd.readouterr().err
    assert "SimCLR pretraining" in err and "loss=" in err
    SimCLRPretrainer(**TINY, batch_size=4, max_epochs=2).fit(X)
    captured = capfd.readouterr()
    assert captured.err == "" and captured.out == ""


# ----------------------------------------------------------------------------- export
@pytest.fixture(scope="module")
def pretrained(one_torch_thread):
    X = waves(16)
    return SimCLRPretrainer(**TINY, batch_size=8, max_epochs=2).fit(X), X


def test_save_backbone_writes_encoder_only_safetensors_and_config(pretrained, tmp_path):
    pre, _ = pretrained
    path = pre.save_backbone(tmp_path / "simclr.safetensors", medical=True)
    tensors = load_file(path)
    assert tensors.keys() == pre.encoder_.state_dict().keys()  # no projection head, no optimiser
    config = json.loads((tmp_path / "simclr.json").read_text())
    assert config["timm_model"] == "resnet10t" and config["method"].startswith("SimCLR")
    assert config["embedding_dim"] == pre.embedding_dim_ == 512
    assert config["input_size"] == [3, 32, 32] and config["medical"] is True
    assert "2 epochs at 32 px" in config["notes"] and f"{pre.loss_curve_[-1]:.4f}" in config["notes"]
    umask = os.umask(0)
    os.umask(umask)
    assert os.stat(path).st_mode & 0o777 == 0o666 & ~umask
    assert sorted(p.name for p in tmp_path.iterdir()) == ["simclr.json", "simclr.safetensors"]
    with pytest.raises(ValueError, match=r"must end in '\.safetensors'"):
        pre.save_backbone(tmp_path / "simclr.pt")


def test_saved_backbone_loads_into_backbone_embedder_and_embeds(pretrained, tmp_path):
    pre, X = pretrained
    path = pre.save_backbone(tmp_path / "simclr.safetensors")
    common = dict(precision="fp32", device="cpu", verbose=0, resize="stretch")
    from_file = BackboneEmbedder("resnet10t", checkpoint_path=path, **common).fit(X)
    assert from_file.input_size_ == (32, 32)  # the pretraining size, from the JSON config
    from_module = BackboneEmbedder(pre.encoder_, image_size=32, **common).fit(X)
    random_init = BackboneEmbedder("resnet10t", pretrained=False, image_size=32, **common).fit(X)
    emb = from_file.transform(X)
    assert emb.shape == (16, 512) and np.isfinite(emb).all()
    np.testing.assert_allclose(emb, from_module.transform(X), rtol=1e-5, atol=1e-5)
    assert not np.allclose(emb, random_init.transform(X), atol=1e-3)


def test_saved_backbone_registers_in_the_zoo(pretrained, tmp_path, monkeypatch):
    from skdfl.backbones import registry

    # Register into a copy of the registry, so the entry does not outlive this test.
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))
    pre, X = pretrained
    path = pre.save_backbone(tmp_path / "idc-simclr.safetensors")
    spec = register_backbone(spec_from_weights(path, name="idc-simclr-r10t"))
    assert spec.method.startswith("SimCLR") and spec.embedding_dim == 512 and spec.input_size == (3, 32, 32)
    common = dict(precision="fp32", device="cpu", verbose=0, resize="stretch")
    by_name = BackboneEmbedder("idc-simclr-r10t", **common).fit(X)
    assert by_name.input_size_ == (32, 32)
    reference = BackboneEmbedder(pre.encoder_, image_size=32, **common).fit(X)
    np.testing.assert_allclose(by_name.transform(X), reference.transform(X), rtol=1e-5, atol=1e-5)


def test_save_backbone_before_fit_raises_not_fitted(tmp_path):
    from sklearn.exceptions import NotFittedError

    with pytest.raises(NotFittedError):
        SimCLRPretrainer().save_backbone(tmp_path / "w.safetensors")


def test_init_weights_from_a_saved_backbone(pretrained, tmp_path):
    pre, X = pretrained
    path = pre.save_backbone(tmp_path / "w.safetensors")
    # max_epochs=1 with a zero-ish learning rate keeps the starting weights visible
    cont = SimCLRPretrainer(**TINY, checkpoint_path=path, batch_size=8, max_epochs=1, lr=1e-12).fit(X)
    start = load_file(path)
    got = cont.encoder_.state_dict()
    conv = "conv1.0.weight"
    torch.testing.assert_close(got[conv], start[conv], rtol=1e-5, atol=1e-6)
    assert Path(path).is_file()


def test_saved_backbone_keeps_the_build_hook_of_its_architecture(tmp_path, monkeypatch, one_torch_thread):
    # A backbone whose registry entry rebuilds the timm module with a hook (here: Keras' BatchNorm epsilon)
    # must come back with the same hook, or the saved weights meet a different architecture.
    from skdfl.backbones import BackboneSpec, registry

    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))
    import dataclasses

    spec = BackboneSpec.from_timm("resnet10t", build_hook="keras_densenet")
    register_backbone(dataclasses.replace(spec, name="resnet10t.hooked_test"))
    X = waves(8)
    pre = SimCLRPretrainer(**{**TINY, "backbone": "resnet10t.hooked_test"}, batch_size=8, max_epochs=1).fit(X)
    assert {m.eps for m in pre.encoder_.modules() if isinstance(m, torch.nn.BatchNorm2d)} == {1.001e-5}
    path = pre.save_backbone(tmp_path / "hooked.safetensors")
    assert json.loads(path.with_suffix(".json").read_text())["build_hook"] == "keras_densenet"
    common = dict(precision="fp32", device="cpu", verbose=0, resize="stretch")
    reloaded = BackboneEmbedder("resnet10t", checkpoint_path=path, **common).fit(X)
    assert {m.eps for m in reloaded.module_.modules() if isinstance(m, torch.nn.BatchNorm2d)} == {1.001e-5}
    reference = BackboneEmbedder(pre.encoder_, image_size=32, **common).fit(X)
    np.testing.assert_allclose(reloaded.transform(X), reference.transform(X), rtol=1e-5, atol=1e-5)
