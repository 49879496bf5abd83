"""``skdfl select``: the table, the figures and the reports it writes, and its errors."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from skdfl.cli import build_parser
from skdfl.datasets import data_dir

pytestmark = pytest.mark.usefixtures("one_torch_thread")

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _assert_png(path):
    assert path.is_file() and path.stat().st_size > 1000, path
    assert path.read_bytes()[:8] == PNG_MAGIC
    with Image.open(path) as im:
        assert min(im.size) > 100


def _run_cli(argv):
    args = build_parser().parse_args(["select", *argv])
    return args.func(args)


def _write_csv_dataset(root, n=24):
    rng = np.random.RandomState(0)
    rows = []
    for i in range(n):
        label = ["benign", "malignant"][i % 2]
        img = rng.randint(0, 256, size=(24, 24, 3)).astype(np.uint8)
        img[..., 2] = 40 if label == "benign" else 200
        path = root / "images" / f"{i}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(img).save(path)
        # 12 patients, each with one label (a patient-level label exists).
        rows.append({"path": f"images/{i}.png", "label": label, "patient": f"p{i % 12}"})
    pd.DataFrame(rows).to_csv(root / "labels.csv", index=False)
    return root / "labels.csv"


def test_cli_select_writes_table_and_plots(tmp_path, capsys):
    csv = _write_csv_dataset(tmp_path / "data")
    out = tmp_path / "report"
    code = _run_cli(
        [
            "--data",
            str(csv),
            "--backbones",
            "resnet18,mobilenetv3_small_050",
            "--random-init",
            "--image-size",
            "32",
            "--cv",
            "3",
            "--epochs",
            "3",
            "--repeats",
            "1",
            "--fractions",
            "0.5,1.0",
            "--out",
            str(out),
            "--quiet",
        ]
    )
    assert code == 0
    table = pd.read_csv(out / "selection.csv")
    assert sorted(table["backbone"]) == ["mobilenetv3_small_050", "resnet18"]
    assert table["weights"].eq("random-init").all()
    best = table["backbone"].iloc[0]
    for name in (
        "selection.png",
        f"projection_{best}.png",
        f"confusion_{best}.png",
        f"label_efficiency_{best}.png",
    ):
        _assert_png(out / name)
    md = (out / "selection.md").read_text()
    assert md.count("| resnet18 (random init) |") == 1 and "Command: `skdfl select --data" in md
    assert "patient-grouped" in md  # 'patient' column picked up by --group-col auto
    report = (out / f"task_report_{best}.md").read_text()
    assert "Positive class" in report and "pr_auc" in report and "Patient level (12 patients" in report
    # Every row is a random-init reference: none is selected, and the report says so.
    assert "no pretrained backbone was compared" in md
    assert f"selected: {best}" in capsys.readouterr().out


def test_cli_select_errors(tmp_path):
    csv = _write_csv_dataset(tmp_path / "data", n=8)
    with pytest.raises(ValueError, match="--random-init names"):
        _run_cli(
            [
                "--data",
                str(csv),
                "--backbones",
                "resnet18",
                "--random-init",
                "vit_small_patch16_224",
                "--out",
                str(tmp_path / "r"),
            ]
        )
    with pytest.raises(FileNotFoundError):
        _run_cli(
            ["--data", str(tmp_path / "missing.csv"), "--backbones", "resnet18", "--out", str(tmp_path / "r")]
        )
    with pytest.raises(ValueError, match="single class folder"):
        _run_cli(["--data", str(tmp_path / "data"), "--backbones", "resnet18", "--out", str(tmp_path / "r")])


@pytest.mark.data
def test_cli_select_on_real_crc_tiles(tmp_path):
    csv = data_dir() / "crc_val_he_7k_mini" / "labels.csv"
    if not csv.is_file():
        pytest.skip(f"real data not found: {csv} (set SKDFL_DATA_DIR or put shared/data beside the repo)")
    out = tmp_path / "report"
    code = _run_cli(
        [
            "--data",
            str(csv),
            "--backbones",
            "resnet18,mobilenetv3_small_050",
            "--random-init",
            "--image-size",
            "64",
            "--cv",
            "2",
            "--epochs",
            "10",
            "--repeats",
            "1",
            "--out",
            str(out),
            "--quiet",
        ]
    )
    assert code == 0
    table = pd.read_csv(out / "selection.csv")
    assert len(table) == 2 and (table["embedding_dim"] > 0).all()
    best = table["backbone"].iloc[0]
    _assert_png(out / f"confusion_{best}.png")
    assert "| class |" in (out / f"task_report_{best}.md").read_text()  # 8-class per-class report
