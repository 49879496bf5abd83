"""``skdfl pretrain simclr|mpcs`` end to end on tiny images (command module parsed on its own parser)."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from skdfl.cli import main
from skdfl.embedder import BackboneEmbedder

pytestmark = pytest.mark.usefixtures("one_torch_thread")
FAST = ["--backbone", "resnet10t", "--image-size", "32", "--batch-size", "4", "--epochs", "1",
        "--precision", "fp32", "--device", "cpu", "--quiet"]  # fmt: skip


def run(argv) -> int:
    return main(argv)


@pytest.fixture
def image_folder(tmp_path):
    rng = np.random.default_rng(0)
    folder = tmp_path / "images"
    folder.mkdir()
    for i in range(8):
        Image.fromarray(rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)).save(folder / f"{i}.png")
    return folder


def test_simclr_writes_an_embeddable_encoder_and_resumes(image_folder, tmp_path, capsys):
    out = tmp_path / "enc.safetensors"
    assert run(["pretrain", "simclr", "--data", str(image_folder), "--out", str(out), *FAST]) == 0
    printed = capsys.readouterr().out
    assert "SimCLR encoder, 512-d, 1 epochs" in printed and "0 resumed" in printed
    assert json.loads(out.with_suffix(".json").read_text())["timm_model"] == "resnet10t"
    assert (tmp_path / "enc_checkpoint" / "pretrain_checkpoint.pt").is_file()
    paths = sorted(str(p) for p in image_folder.iterdir())
    emb = BackboneEmbedder("resnet10t", checkpoint_path=out, precision="fp32", device="cpu", verbose=0)
    assert emb.fit_transform(paths).shape == (8, 512)
    # re-running the command with more epochs continues from the checkpoint
    more = [a if a != "1" else "2" for a in FAST]
    assert run(["pretrain", "simclr", "--data", str(image_folder), "--out", str(out), *more]) == 0
    assert "2 epochs" in capsys.readouterr().out.split("final loss")[0]


def test_mpcs_from_a_long_table_with_relative_paths(image_folder, tmp_path, capsys):
    names = sorted(p.name for p in image_folder.iterdir())
    table = pd.DataFrame({"path": [f"images/{n}" for n in names], "zoom": ["40X", "100X"] * 4,
                          "patient": ["a", "a", "b", "b", "c", "c", "d", "d"]})  # fmt: skip
    table.to_csv(tmp_path / "table.csv", index=False)
    out = tmp_path / "mpcs.safetensors"
    argv = ["pretrain", "mpcs", "--data", str(tmp_path / "table.csv"), "--magnification-col", "zoom",
            "--group-col", "patient", "--pair-strategy", "random", "--out", str(out), *FAST]  # fmt: skip
    assert run(argv) == 0
    assert "MPCS encoder" in capsys.readouterr().out and out.is_file()


def test_mpcs_same_centre_columns(image_folder, tmp_path, capsys):
    names = sorted(p.name for p in image_folder.iterdir())
    pd.DataFrame({"x20": [f"images/{n}" for n in names[:4]], "x5": [f"images/{n}" for n in names[4:]]}).to_csv(
        tmp_path / "centres.csv", index=False
    )
    argv = ["pretrain", "mpcs", "--data", str(tmp_path / "centres.csv"), "--centre-cols", "x20,x5",
            "--pair-strategy", "ordered", "--pair-table", "x20:x5,x5:x20", "--out", str(tmp_path / "c.safetensors"),
            *FAST]  # fmt: skip
    assert run(argv) == 0, capsys.readouterr().err


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--group-col", "nope"], "no column(s) ['nope']"),
        (["--pair-table", "40X-100X"], "FIRST:SECOND"),
    ],
)
def test_usage_errors_exit_2_with_a_message(image_folder, tmp_path, capsys, extra, message):
    pd.DataFrame({"path": ["images/0.png"], "magnification": ["40X"], "group": ["a"]}).to_csv(
        tmp_path / "t.csv", index=False
    )
    argv = ["pretrain", "mpcs", "--data", str(tmp_path / "t.csv"), "--out", str(tmp_path / "o.safetensors"),
            *FAST, *extra]  # fmt: skip
    assert run(argv) == 2
    assert message in capsys.readouterr().err


def test_out_must_be_safetensors(image_folder, tmp_path, capsys):
    assert run(["pretrain", "simclr", "--data", str(image_folder), "--out", str(tmp_path / "w.pt"), *FAST]) == 2
    assert "must end in .safetensors" in capsys.readouterr().err
