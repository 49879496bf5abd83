"""Repack an official imagecodecs wheel keeping only what ``png_decode`` needs (``skdfl._decode``'s use).

The full wheel is ~26 MB, over a third of what a device command may carry; this one is ~1 MB. The
pure-Python package, the licences, the ``_shared``, ``_shared_cython`` and ``_png`` extensions and the bundled
libpng stay; every other codec extension and bundled library goes (imagecodecs loads codec modules lazily,
on first attribute access). The version gets a local label (``+pngonly``) so that nobody mistakes it for the
full wheel.

python benchmarks/gpu_kit/slim_imagecodecs.py WHEEL OUT_DIR
"""

from __future__ import annotations

import base64
import hashlib
import re
import sys
import zipfile
from pathlib import Path

KEEP_EXTENSIONS = {"_shared", "_shared_cython", "_png"}


def _kept(name: str) -> bool:
    if not (name.endswith(".so") or ".so." in name):
        return True
    if name.startswith("imagecodecs.libs/libpng16-"):
        return True
    stem = Path(name).name.split(".", 1)[0]
    return name.startswith("imagecodecs/") and stem in KEEP_EXTENSIONS


def slim(wheel: Path, out_dir: Path) -> Path:
    match = re.match(r"imagecodecs-([^-]+)-(.+)\.whl$", wheel.name)
    if match is None:
        raise ValueError(f"{wheel}: not an imagecodecs wheel")
    old, tags = match.groups()
    new = f"{old}+pngonly"
    out = out_dir / f"imagecodecs-{new}-{tags}.whl"
    records = []
    with zipfile.ZipFile(wheel) as zin, zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as zout:
        for info in zin.infolist():
            name = info.filename
            if not _kept(name) or name.endswith("/RECORD"):
                continue
            data = zin.read(name)
            name = name.replace(f"imagecodecs-{old}.dist-info", f"imagecodecs-{new}.dist-info")
            if name.endswith(".dist-info/METADATA"):
                data = re.sub(rb"^Version: .*$", f"Version: {new}".encode(), data, count=1, flags=re.M)
            entry = zipfile.ZipInfo(name, info.date_time)
            entry.external_attr = info.external_attr
            entry.compress_type = zipfile.ZIP_DEFLATED
            zout.writestr(entry, data)
            if not name.endswith("/"):  # directories are not listed in RECORD
                digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
                records.append(f"{name},sha256={digest},{len(data)}")
        record = f"imagecodecs-{new}.dist-info/RECORD"
        zout.writestr(record, "\n".join([*records, f"{record},,"]) + "\n")
    return out


if __name__ == "__main__":
    print(slim(Path(sys.argv[1]), Path(sys.argv[2])))
