"""``skdfl embed``: a folder or a CSV list into a resumable store, and its usage errors (exit code 2)."""

from __future__ import annotations

import json
import os

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


@pytest.mark.parametrize("stage", ["create", "write"])
def test_cli_embed_on_a_full_disk_names_the_path_and_leaves_no_temporary_file(tmp_path, capsys, monkeypatch,
                                                                               stage):  # fmt: skip
    """Issue 11, item 19: "[Errno 28]" must say which file, and no ``.tmp-embeddings.npy`` stays behind."""
    import errno

    folder = tmp_path / "imgs"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(4):
        Image.fromarray(rng.integers(0, 256, (20, 20, 3), dtype=np.uint8)).save(folder / f"{i}.png")
    full_disk = OSError(errno.ENOSPC, "No space left on device")  # as write()/fsync() raise it: no filename
    if stage == "create":
        real = np.lib.format.open_memmap

        def open_memmap(filename, *args, **kwargs):
            real(filename, *args, **kwargs)._mmap.close()  # the temporary file exists, then the disk fills
            raise full_disk

        monkeypatch.setattr(np.lib.format, "open_memmap", open_memmap)
    else:  # the store exists; writing the first chunk's rows fills the disk

        def pwrite(*args):
            raise full_disk

        monkeypatch.setattr(os, "pwrite", pwrite)
    out = tmp_path / "out"
    args = build_parser().parse_args(["embed", str(folder), str(out), "--backbone", "test_resnet", "--random-init",
                                      "--image-size", "32", "--device", "cpu", "--quiet"])  # fmt: skip
    assert args.func(args) == 2
    err = capsys.readouterr().err
    assert "No space left on device" in err and str(out) in err
    if stage == "write":
        assert "writing rows 0-4 of the store" in err and "embeddings.npy" in err
    assert not list(tmp_path.rglob(".tmp-*")), "a temporary file was left behind"


def test_cli_embed_decoding_options(tmp_path, capsys):
    parser = build_parser()
    folder = tmp_path / "imgs"
    folder.mkdir()
    rng = np.random.default_rng(1)
    for i in range(4):
        Image.fromarray(rng.integers(0, 256, (40, 30, 3), dtype=np.uint8)).save(folder / f"{i}.jpg", quality=95)
    common = ["--backbone", "test_resnet", "--random-init", "--image-size", "32", "--precision", "fp32",
              "--device", "cpu", "--quiet"]  # fmt: skip
    defaults = parser.parse_args(["embed", str(folder), str(tmp_path / "a"), *common])
    # The embedder's own defaults: a GPU gets its decoding workers and device decoding without flags.
    assert (defaults.num_workers, defaults.worker_type, defaults.decode) == ("auto", "auto", "auto")
    assert defaults.func(defaults) == 0
    options = ["--decode", "device", "--num-workers", "2", "--worker-type", "thread"]
    args = parser.parse_args(["embed", str(folder), str(tmp_path / "b"), *common, *options])
    assert (args.num_workers, args.worker_type, args.decode) == (2, "thread", "device")
    assert args.func(args) == 0
    a, b = load_store(tmp_path / "a").embeddings, load_store(tmp_path / "b").embeddings
    cosines = (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
    assert cosines.min() > 0.99 and not np.array_equal(a, b), "decoded on the 'device' (here the CPU)"
    for bad in ("-1", "many"):
        with pytest.raises(SystemExit):
            parser.parse_args(["embed", str(folder), str(tmp_path / "c"), *common, "--num-workers", bad])
        assert "expected 'auto' or a number of workers" in capsys.readouterr().err
