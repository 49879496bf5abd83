"""benchmarks/bench_gpu.py's CPU fallback runs and writes a sane result (the GPU rows need a GPU)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("SKDFL_DATA_DIR", ROOT.parent / "shared" / "data"))


@pytest.mark.data
@pytest.mark.skipif(not DATA.is_dir(), reason=f"real data folder {DATA} is absent")
def test_bench_gpu_cpu_fallback_writes_rows(tmp_path):
    out = tmp_path / "gpu.json"
    env = os.environ | {"OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    subprocess.run(
        [sys.executable, "benchmarks/bench_gpu.py", "--device", "cpu", "--quick", "--repeats", "1",
         "--data-dir", str(DATA), "--out", str(out)],
        cwd=ROOT, env=env, check=True, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    record = json.loads(out.read_text())
    rows = record["results"]["extraction"]
    assert {r["images"] for r in rows} == {"IDC 50x50 PNG", "BreakHis 700x460 PNG", "BreakHis 700x460 JPEG"}
    for row in rows:
        assert row["n"] == 16 and row["bare_img_s"] > 0 and row["skdfl_img_s"] > 0
        # Both sides embed the same images with the same module: a ratio off by 20x means a broken side.
        assert 0.05 < row["ratio"] < 20
    heads = {r["head"]: r for r in record["results"]["heads"]}
    assert set(heads) == {"FocalHeadClassifier()", "LogisticRegression"}
    assert all(r["fit_s"] > 0 and r["train_accuracy"] > 0.6 for r in heads.values())
    assert record["machine"]["device"] == "cpu"
