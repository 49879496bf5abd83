"""The CPU fallbacks of the benchmarks written for a GPU (bench_gpu, bench_gpu_loader, bench_fold_batching)
run and write sane results (the GPU rows need a GPU)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("SKDFL_DATA_DIR", ROOT.parent / "shared" / "data"))


def _run_benchmark(script: str, out: Path, *options: str, data_dir: Path = DATA) -> dict:
    """Run ``benchmarks/<script>`` on the CPU in quick mode, offline; its JSON record."""
    env = os.environ | {"OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    subprocess.run(
        [sys.executable, f"benchmarks/{script}", "--device", "cpu", "--quick", *options, "--data-dir",
         str(data_dir), "--out", str(out)],
        cwd=ROOT, env=env, check=True, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    return json.loads(out.read_text())


@pytest.mark.data
@pytest.mark.skipif(not DATA.is_dir(), reason=f"real data folder {DATA} is absent")
def test_bench_gpu_cpu_fallback_writes_rows(tmp_path):
    record = _run_benchmark("bench_gpu.py", tmp_path / "gpu.json", "--repeats", "1")
    rows = record["results"]["extraction"]
    assert {r["images"] for r in rows} == {"IDC 50x50 PNG", "BreakHis 700x460 PNG", "BreakHis 700x460 JPEG"}
    for row in rows:
        assert row["n"] == 16 and row["bare_img_s"] > 0 and row["skdfl_img_s"] > 0
        # Both sides embed the same images with the same module: a ratio off by 20x means a broken side.
        assert 0.05 < row["ratio"] < 20
        assert row["decode_cpu_img_s"] > 0 and row["decode_device_img_s"] > 0
        # The input pipeline alone (no forward pass) and the default without its prefetching thread.
        assert row["input_img_s"] > 0 and 0.05 < row["no_prefetch_ratio"] < 20
        # skdfl runs both parts (input pipeline, forward): at most as fast as the slower one, within noise.
        assert 0.05 < row["bound_ratio"] < 1.5
        assert row["decode_cosine_min"] > 0.99, "both decode paths embed the same images alike"
        assert row["decode"] == "dct-scaled", "decode='auto' keeps decoding on the CPU when the device is a CPU"
    heads = {r["head"]: r for r in record["results"]["heads"]}
    assert set(heads) == {"FocalHeadClassifier()", "LogisticRegression"}
    assert all(r["fit_s"] > 0 and r["train_accuracy"] > 0.6 for r in heads.values())
    # Where a head's fit time goes: the backward pass is among the most expensive calls of a focal head.
    profile = heads["FocalHeadClassifier()"]["profile"]
    assert len(profile) == 15 and any("run_backward" in entry["function"] for entry in profile)
    assert record["machine"]["device"] == "cpu"


@pytest.mark.data
@pytest.mark.skipif(not DATA.is_dir(), reason=f"real data folder {DATA} is absent")
def test_bench_gpu_loader_cpu_fallback_splits_the_input_side(tmp_path):
    record = _run_benchmark("bench_gpu_loader.py", tmp_path / "gpu_loader.json")
    items = {r["images"]: r for r in record["results"]["items"]}
    assert set(items) == {"IDC 50x50 PNG", "BreakHis 700x460 PNG", "BreakHis JPEG (CPU)"}
    # A 700x460 PNG costs several times a 50x50 one to decode and fit, whatever the machine.
    assert items["BreakHis 700x460 PNG"]["item_ms"] > 2 * items["IDC 50x50 PNG"]["item_ms"]
    assert all(r["threads_1"] > 0 and r["threads_2"] > 0 and r["device_threads_1"] > 0 and r["device_threads_2"] > 0
               for r in items.values())
    # decode="device" leaves a JPEG's decoding to the device: reading its bytes is far cheaper.
    assert items["BreakHis JPEG (CPU)"]["device_item_ms"] < items["BreakHis JPEG (CPU)"]["item_ms"] / 3
    (jpeg,) = record["results"]["jpeg"]
    assert jpeg["batch"] == 8 and jpeg["decode_ms"] > 0 and jpeg["geometry_ms"] > 0


def test_bench_fold_batching_trains_every_fold_like_one_at_a_time(tmp_path):
    # No data folder: a synthetic problem (600 rows, 64 features) stands in for the IDC embeddings.
    record = _run_benchmark("bench_fold_batching.py", tmp_path / "fb.json", data_dir=tmp_path / "no-data")
    assert record["config"]["source"].startswith("synthetic") and record["config"]["folds"] == 5
    rows = {r["side"]: r for r in record["results"]}
    assert set(rows) == {"FocalHeadClassifier x5", "prototype K=1 x5", "prototype K=5 batched"}
    scores = {side: r["balanced_accuracy"] for side, r in rows.items()}
    # The prototype trains FocalHeadClassifier()'s model, and batching the folds trains each fold as alone:
    # the same scores within sampling noise, all well above chance (a fold mixed up with another would not be).
    assert max(scores.values()) - min(scores.values()) < 0.03, scores
    assert min(scores.values()) > 0.58, scores
    assert all(len(r["fold_scores"]) == 5 and r["seconds"] > 0 for r in rows.values())
