"""Where a GPU extraction's input time goes: per-image CPU cost, thread scaling, nvJPEG batch decode.

``benchmarks/bench_gpu.py`` measures skdfl against the bare forward; this script splits skdfl's input side
into its parts on the same files (IDC 50x50 PNG, BreakHis 700x460 PNG, the BreakHis images as JPEG q90):

* ``item ms``: one sample of ``BackboneEmbedder.view_dataset`` (read + decode + geometry), serially;
* ``threads=N img/s``: the loader items of :func:`skdfl.loading.threaded_items` with N threads (the
  default loader on a GPU), no forward pass;
* the same two for ``decode="device"`` items, at every thread count (``view_dataset(geometry="device")``: JPEG bytes, other files
  decoded at full size; the geometry is left to the device);
* for JPEG: reading the bytes, one batched ``decode_jpegs`` on the device and ``fit_geometry_tensors``, ms
  per batch of 256.

``--device cpu --quick`` runs tiny sizes (checked by tests/test_bench_gpu.py).
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import _common as C
import torch
from PIL import Image

from skdfl import BackboneEmbedder
from skdfl._decode import decode_jpegs, read_jpeg_file
from skdfl.loading import stack_samples, threaded_items
from skdfl.transforms import fit_geometry_tensors


def _best_of(fn, repeats: int, device) -> float:
    times = []
    for _ in range(repeats):
        C.sync(device)
        t0 = time.perf_counter()
        fn()
        C.sync(device)
        times.append(time.perf_counter() - t0)
    return min(times)


def main():
    p = C.parser("gpu_loader", __doc__)
    p.add_argument("--threads", type=int, nargs="+", default=None)
    args = p.parse_args()
    C.quiet_warnings()
    t_start = time.perf_counter()
    root, device = C.data_root(args), C.device_of(args)
    n = 32 if args.quick else 512
    batch = 8 if args.quick else 256
    repeats = 1 if args.quick else 2
    threads = args.threads or ([1, 2] if args.quick else [1, 4, 8, 15])
    idc = C.load_idc(root)["path"].tolist()[:n]
    bh = C.load_breakhis(root)["path"].tolist()
    large = [bh[k % len(bh)] for k in range(n)]
    rows, jpeg_rows = [], []
    with tempfile.TemporaryDirectory() as tmp:
        jpeg_of = {}
        for path in sorted(set(large)):
            out = Path(tmp) / (Path(path).stem + ".jpg")
            Image.open(path).convert("RGB").save(out, quality=90)
            jpeg_of[path] = str(out)
        jpeg = [jpeg_of[path] for path in large]
        emb = BackboneEmbedder("resnet18", pretrained=False, image_size=64 if args.quick else None, verbose=0,
                               device=device, decode="cpu").fit(idc[:1])  # fmt: skip
        on_device = BackboneEmbedder("resnet18", pretrained=False, image_size=64 if args.quick else None,
                                     verbose=0, device=device, decode="device").fit(idc[:1])  # fmt: skip
        for name, paths in {"IDC 50x50 PNG": idc, "BreakHis 700x460 PNG": large, "BreakHis JPEG (CPU)": jpeg}.items():
            ds = emb.view_dataset({"image": paths})
            k_serial = min(len(paths), 16 if args.quick else 128)
            serial = _best_of(lambda: [ds[k] for k in range(k_serial)], repeats, torch.device("cpu"))  # noqa: B023
            row = {"images": name, "n": len(paths), "item_ms": 1000 * serial / k_serial}
            for t in threads:
                seconds = _best_of(lambda: list(threaded_items(ds, max(1, batch // 8), stack_samples, t)),  # noqa: B023
                                   repeats, torch.device("cpu"))  # fmt: skip
                row[f"threads_{t}"] = len(paths) / seconds
            # decode="device": the loader only reads JPEG bytes / decodes other files, no geometry.
            dds = on_device.view_dataset({"image": paths}, geometry="device")
            serial = _best_of(lambda: [dds[k] for k in range(k_serial)], repeats, torch.device("cpu"))  # noqa: B023
            row["device_item_ms"] = 1000 * serial / k_serial
            # Every thread count: these items release the GIL more than the CPU path's (no Python-side
            # geometry), so the best count (MAX_AUTO_THREADS) may differ.
            for t in threads:
                seconds = _best_of(lambda: list(threaded_items(dds, max(1, batch // 8), dds.collate, t)),  # noqa: B023
                                   repeats, torch.device("cpu"))  # fmt: skip
                row[f"device_threads_{t}"] = len(paths) / seconds
            row["device_threads"] = row[f"device_threads_{threads[-1]}"]
            rows.append(row)
            print("  " + "  ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in row.items()),
                  flush=True)  # fmt: skip
        data = [read_jpeg_file(p) for p in jpeg[:batch]]
        read = _best_of(lambda: [read_jpeg_file(p) for p in jpeg[:batch]], repeats, torch.device("cpu"))
        decode = _best_of(lambda: decode_jpegs(data, device), repeats, device)
        decoded = decode_jpegs(data, device)
        geometry = _best_of(lambda: fit_geometry_tensors(decoded, emb.input_size_, "pad"), repeats, device)
        jpeg_rows.append({"batch": batch, "device": str(device), "read_ms": 1000 * read, "decode_ms": 1000 * decode,
                          "geometry_ms": 1000 * geometry,
                          "decode_img_s": batch / decode})  # fmt: skip
        print(f"  JPEG batch {batch}: read {1000 * read:.1f} ms, decode on {device} {1000 * decode:.1f} ms, "
              f"fit_geometry_tensors {1000 * geometry:.1f} ms", flush=True)  # fmt: skip
    table = C.md_table(rows, [("images", "images", ""), ("item_ms", "item ms (serial)", ".2f")]
                       + [(f"threads_{t}", f"threads={t} img/s", ".0f") for t in threads]
                       + [("device_item_ms", 'decode="device" item ms', ".2f")]
                       + [(f"device_threads_{t}", f'decode="device" threads={t} img/s', ".0f") for t in threads])  # fmt: skip
    jpeg_table = C.md_table(jpeg_rows, [("batch", "JPEG batch", "d"), ("device", "device", ""),
                                        ("read_ms", "read bytes ms", ".1f"), ("decode_ms", "decode_jpegs ms", ".1f"),
                                        ("decode_img_s", "decode img/s", ".0f"),
                                        ("geometry_ms", "fit_geometry_tensors ms", ".1f")])  # fmt: skip
    print(f"\n### Input side of a GPU extraction\n\n{table}\n\n{jpeg_table}")
    C.write_result(args, "gpu_loader", config={"n": n, "batch": batch, "threads": threads, "repeats": repeats},
                   results={"items": rows, "jpeg": jpeg_rows}, tables=[table, jpeg_table], device=device,
                   seconds=time.perf_counter() - t_start)  # fmt: skip


if __name__ == "__main__":
    main()
