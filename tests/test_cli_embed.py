"""``skdfl embed``: a folder or a CSV list into a resumable store, and its usage errors (exit code 2)."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from skdfl import load_store
from skdfl.cli import build_parser

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_cli_embed_folder_and_csv(tmp_path, capsys):
    parser = build_parser()
    folder = tmp_path / "imgs" / "sub"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(7):
        Image.fromarray(rng.integers(0, 256, (20, 20, 3), dtype=np.uint8)).save(folder / f"{i}.png")
    common = ["--backbone", "test_resnet", "--random-init", "--image-size", "32", "--precision", "fp32",
              "--device", "cpu", "--chunk-size", "3", "--quiet"]  # fmt: skip
    args = parser.parse_args(["embed", str(tmp_path / "imgs"), str(tmp_path / "out"), *common])
    assert args.func(args) == 0
    assert "7 x " in capsys.readouterr().out
    store = load_store(tmp_path / "out")
    assert store.meta["complete"] and len(store) == 7

    pd.DataFrame({"path": [f"imgs/sub/{i}.png" for i in range(7)]}).to_csv(tmp_path / "list.csv", index=False)
    args = parser.parse_args(["embed", str(tmp_path / "list.csv"), str(tmp_path / "out2"), *common])
    assert args.func(args) == 0
    np.testing.assert_array_equal(load_store(tmp_path / "out2").embeddings, store.embeddings)

    args = parser.parse_args(["embed", str(tmp_path / "list.csv"), str(tmp_path / "out2"), *common, "--image-col", "x"])
    assert args.func(args) == 2
    assert "no column(s) ['x']" in capsys.readouterr().err
    args = parser.parse_args(["embed", str(tmp_path / "list.csv"), str(tmp_path / "out2"), *common, "--no-resume"])
    assert args.func(args) == 2
    assert json.loads((tmp_path / "out2" / "store.json").read_text())["complete"]
