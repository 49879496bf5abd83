"""Copy a small, stratified subset of the real data (and optionally the IDC embeddings) into the GPU kit.

The device machine reaches nothing outside it and takes at most 64 MiB with a command, so the benchmarks that
run there read this subset: the same folder layout and ``labels.csv`` lines as ``../shared/data`` (about
22 MB: >= 1,024 IDC patches from every patient and class, 3 BreakHis images per subtype), plus
``emb/idc_densenet121.npz`` when ``--embeddings`` names a folder holding it (``bench_fold_batching.py``).

python benchmarks/gpu_kit/make_data.py --src ../shared/data --dst .gpu_kit/data [--embeddings DIR]
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

import pandas as pd

SEED = 0


def per_group(frame: pd.DataFrame, by: list[str], k: int) -> pd.DataFrame:
    return frame.groupby(by, group_keys=False).sample(frac=1.0, random_state=SEED).groupby(by).head(k).sort_index()


def copy(src_root: Path, dst_root: Path, name: str, subset: pd.DataFrame) -> None:
    src, dst = src_root / name, dst_root / name
    for path in subset["path"]:
        (dst / path).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src / path, dst / path)
    if (src / "README.md").exists():
        shutil.copy2(src / "README.md", dst / "README.md")
    # The original lines byte for byte (line endings kept): the header and the rows of the copied files.
    keep = set(subset["path"])
    lines = (src / "labels.csv").read_bytes().splitlines(keepends=True)
    rows = [line for line in lines[1:] if line.split(b",", 1)[0].decode() in keep]
    if len(rows) != len(subset):
        raise ValueError(f"{src / 'labels.csv'}: {len(rows)} rows matched for {len(subset)} files")
    (dst / "labels.csv").write_bytes(lines[0] + b"".join(rows))
    print(f"{name}: {len(subset)} files")


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--src", type=Path, default=Path("../shared/data"))
    p.add_argument("--dst", type=Path, default=Path(".gpu_kit/data"))
    p.add_argument("--embeddings", type=Path, default=None, help="folder holding idc_densenet121.npz")
    args = p.parse_args()
    if args.dst.exists():
        shutil.rmtree(args.dst)
    args.dst.mkdir(parents=True)
    read = lambda name, **kw: pd.read_csv(args.src / name / "labels.csv", **kw)  # noqa: E731
    # IDC: bench_gpu draws 1,024 patches without replacement; every patient and class stays represented.
    copy(args.src, args.dst, "breast_idc_patches", per_group(read("breast_idc_patches"), ["patient", "label"], 65))
    copy(args.src, args.dst, "breast_idc_25patients",
         per_group(read("breast_idc_25patients"), ["patient", "label"], 16))  # fmt: skip
    # BreakHis: bench_gpu repeats the few images to fill its count (decoding is paid every time).
    copy(args.src, args.dst, "breakhis_samples", per_group(read("breakhis_samples", dtype=str), ["subtype"], 1))
    copy(args.src, args.dst, "breakhis_extra", per_group(read("breakhis_extra", dtype=str), ["subtype"], 2))
    if args.embeddings is not None:
        (args.dst / "emb").mkdir()
        shutil.copy2(args.embeddings / "idc_densenet121.npz", args.dst / "emb" / "idc_densenet121.npz")
        print("emb/idc_densenet121.npz")


if __name__ == "__main__":
    main()
