"""Device and precision resolution shared by the embedder and the heads."""

from __future__ import annotations

import contextlib
import os

import torch

PRECISIONS = ("auto", "fp32", "bf16", "fp16")


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """``"auto"`` picks CUDA, then MPS, then CPU; anything else is passed to :class:`torch.device`."""
    if isinstance(device, torch.device):
        return device
    if device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        mps = getattr(torch.backends, "mps", None)
        if mps is not None and mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    return torch.device(device)


def available_cpus() -> int:
    """CPU cores this process may run on (its affinity mask, e.g. a Slurm or container allotment)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # macOS, Windows
        return os.cpu_count() or 1


def resolve_num_workers(num_workers: int | str, device: torch.device, n_batches: int | None = None) -> int:
    """DataLoader worker processes for ``num_workers`` (an int is kept as it is).

    ``"auto"``:

    * on an accelerator (CUDA, MPS) the CPU only decodes: every core but the one driving the device
      (``available_cpus() - 1``), since decode + resize of a 700x460 PNG (~5-10 ms per image and core)
      is otherwise the bottleneck of a GPU that embeds thousands of images per second;
    * on a CPU the forward pass already uses every core and decoding is a fraction of it (a worker only
      takes cores from the forward pass): ``0`` up to 2 cores, then one worker per 8 cores;
    * never more workers than batches (``n_batches``): starting a process costs more than it saves.
    """
    if num_workers != "auto":
        return int(num_workers)
    cores = available_cpus()
    workers = cores - 1 if device.type != "cpu" else (0 if cores <= 2 else max(1, cores // 8))
    if n_batches is not None:
        workers = min(workers, n_batches)
    return max(0, workers)


def resolve_precision(precision: str, device: torch.device) -> torch.dtype | None:
    """Autocast dtype for ``precision`` on ``device`` (``None`` means plain fp32).

    ``"auto"`` is bf16 on a CPU with native bf16 support (with channels_last, measured ~3x faster than
    contiguous fp32 for DenseNet-121 on 2 cores, min cosine to fp32 >= 0.998: ``benchmarks/bench_precision.py``),
    fp32 on other CPUs, fp16 on CUDA/MPS.
    """
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if precision == "fp32":
        return None
    if precision == "auto":
        if device.type != "cpu":
            return torch.float16
        # bf16 is only a speed-up on CPUs with native bf16 (AVX512-BF16/AMX); elsewhere it is emulated.
        return torch.bfloat16 if torch.ops.mkldnn._is_mkldnn_bf16_supported() else None
    return torch.bfloat16 if precision == "bf16" else torch.float16


def autocast(device: torch.device, dtype: torch.dtype | None):
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)
