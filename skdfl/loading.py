"""The embedder's input pipeline: datasets of views, loader items built by threads, device-side batches.

* :class:`ViewDataset`: sample ``i`` -> every view of it, decoded, fitted to the input size, augmented and
  coloured on the CPU (uint8); :func:`stack_samples` batches its items.
* :class:`DeviceGeometryDataset`: sample ``i`` -> the JPEG bytes or full-size pixels of each source, for
  :class:`~skdfl.BackboneEmbedder` to decode (nvJPEG), fit and colour on the device (``decode="device"``).
* :func:`threaded_items`: what a ``DataLoader`` yields, built by a shared pool of threads (the loader on a
  GPU: no worker start-up per call).
* :func:`prefetched_batches`: forward batches made by a background thread (on CUDA on its own stream), so
  that decoding and resizing the next batch on the device overlaps the forward pass of this one.

Normalisation, the device side of ``DeviceGeometryDataset`` and the forward pass live in
:mod:`skdfl.embedder`.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import queue
import threading
from collections import deque
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from ._decode import decode_image_file, read_jpeg_file, shrink_request
from .augment import augment
from .io import read_image
from .transforms import fit_geometry
from .views import View, apply_color

# Colours the device path computes; stain colours and augmentations need the CPU pipeline.
DEVICE_COLORS = ("rgb", "gray")
# Images with more pixels are fitted on the CPU even with decode="device" (JPEGs then decode at a reduced DCT
# scale): full-size pixels of large images would hold GBs of host and device memory per batch in flight.
DEVICE_MAX_PIXELS = 2**20
_POOLS_LOCK = threading.Lock()

# Decoding thread pools by size, started once per process: a call of a few images pays no start-up.
_THREAD_POOLS: dict[int, ThreadPoolExecutor] = {}
if hasattr(os, "register_at_fork"):
    # A forked child inherits the pools but not their threads: its tasks would never run.
    os.register_at_fork(after_in_child=_THREAD_POOLS.clear)


def _thread_pool(n_threads: int) -> ThreadPoolExecutor:
    with _POOLS_LOCK:
        if n_threads not in _THREAD_POOLS:
            _THREAD_POOLS[n_threads] = ThreadPoolExecutor(n_threads, thread_name_prefix="skdfl-decode")
        return _THREAD_POOLS[n_threads]


def threaded_items(dataset, chunk: int, collate, n_threads: int, *, pin_memory: bool = False):
    """The items a ``DataLoader(dataset, batch_size=chunk, collate_fn=collate)`` yields, built by threads.

    Items are built by a shared pool of ``n_threads`` threads, at most ``2 * n_threads`` ahead, and yielded
    in order; an item's exception is raised when its turn comes. Decoders and resizers release the GIL
    (Pillow, libjpeg-turbo, libpng, NumPy), so threads decode in parallel without starting worker processes
    at every call or pickling every item: with processes, the nvJPEG path of ``benchmarks/bench_gpu.py``
    took ~0.8 s more per call of 1,024 JPEGs on an H200 machine (3.5x slower), and PNG rows were no faster.
    """
    n = len(dataset)

    def build(start: int):
        item = collate([dataset[k] for k in range(start, min(start + chunk, n))])
        return item.pin_memory() if pin_memory and isinstance(item, torch.Tensor) else item

    starts = iter(range(0, n, chunk))
    pool = _thread_pool(n_threads)
    window = deque(pool.submit(build, start) for start in itertools.islice(starts, 2 * n_threads))
    try:
        while window:
            item = window.popleft().result()
            start = next(starts, None)
            if start is not None:
                window.append(pool.submit(build, start))
            yield item
    finally:
        for future in window:  # an error or an interrupted call: drop the work not started yet
            future.cancel()


class _Failure:
    """An exception raised by the producer thread of :func:`prefetched_batches`, for the consumer to raise."""

    def __init__(self, error: BaseException):
        self.error = error


_EXHAUSTED = object()


def prefetched_batches(batches, device: torch.device, *, depth: int = 1):
    """Yield the ``(n_samples, images)`` pairs of the iterator ``batches``, made by a background thread.

    The thread runs at most ``depth`` batches ahead of the consumer (plus the one it is making). On CUDA it
    works on a stream of its own, and the consumer's stream waits for each batch (an event, not a host
    sync): nvJPEG decoding and resizing of batch ``i + 1`` run on the GPU while the forward pass of batch
    ``i`` does, instead of one after the other in the main thread. The device decoder and torch operators
    release the GIL, so the two threads also overlap on the host. An exception in the thread is raised by
    the consumer at that batch; when the consumer stops early (an error, an interrupt), the thread stops
    after its current batch and closes ``batches`` (which cancels the loader's pending work).
    """
    ready: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()
    side = torch.cuda.Stream(device) if device.type == "cuda" else None

    def hand_over(entry) -> bool:
        while not stop.is_set():
            try:
                ready.put(entry, timeout=0.05)
                return True
            except queue.Full:
                continue
        return False

    def produce():
        stream = torch.cuda.stream(side) if side is not None else contextlib.nullcontext()
        try:
            # inference_mode and the current CUDA stream are per thread: set both here.
            with torch.inference_mode(), stream:
                for n, images in batches:
                    done = None
                    if side is not None:
                        done = torch.cuda.Event()
                        done.record(side)
                    if not hand_over((n, images, done)):
                        return
            hand_over(_EXHAUSTED)
        except BaseException as error:  # re-raised in the consumer's thread, interrupts included
            hand_over(_Failure(error))
        finally:
            if hasattr(batches, "close"):
                batches.close()

    thread = threading.Thread(target=produce, name="skdfl-prefetch", daemon=True)
    thread.start()
    try:
        while True:
            entry = ready.get()
            if entry is _EXHAUSTED:
                return
            if isinstance(entry, _Failure):
                raise entry.error
            n, images, done = entry
            if done is not None:
                consumer = torch.cuda.current_stream(device)
                consumer.wait_event(done)
                # Memory made on the side stream, read on this one: not reusable until this stream is done.
                images.record_stream(consumer)
            yield n, images
    finally:
        stop.set()
        thread.join()


def stack_samples(samples: list[torch.Tensor]) -> torch.Tensor:
    """Collate a batch of :class:`ViewDataset` items (uint8) into one tensor, copying with numpy.

    ``torch.stack`` (the DataLoader's default collate) copies with every intra-op thread; on a CPU shared
    with other processes each of its parallel regions can wait for a descheduled thread: intermittently
    ~400 ms for 32 images of 224x224 on 2 busy cores, against 0.2 ms for numpy's single-threaded copy
    (``benchmarks/bench_extraction.py --collate-ab``).
    """
    return torch.from_numpy(np.stack([sample.numpy() for sample in samples]))


class ViewDataset(Dataset):
    """Sample ``i`` -> uint8 tensor ``(n_views, H, W, 3)``: every view of one sample, each file decoded once.

    ``views`` holds :class:`View` or ``(augmentation, View)`` pairs (the embedder's augmentation bank,
    :mod:`skdfl.augment`); each source is read and brought to ``size`` once, each augmentation of it made
    once, then coloured (``normalizers``: the stain normalisers of stain colours).
    Normalisation is left to the device (batched), so workers ship compact uint8 tensors.
    """

    def __init__(self, sources, views, indices, size, *, policy, interpolation, crop_pct, scale,
                 normalizers=None, random_state=0, max_pixels="pil"):
        self.sources = sources
        self.max_pixels = max_pixels
        self.indices = np.asarray(indices)
        self.size = size
        self.geometry = dict(policy=policy, interpolation=interpolation, crop_pct=crop_pct, scale=scale)
        # JPEG files are decoded directly at a reduced DCT scale when the geometry shrinks them >= 2x.
        self.shrink_to = shrink_request(size, policy, scale=scale, crop_pct=crop_pct)
        self.units = [("identity", v) if isinstance(v, View) else (str(v[0]), View(*v[1])) for v in views]
        self.normalizers = normalizers
        self.random_state = random_state

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, k: int) -> torch.Tensor:
        i = int(self.indices[k])
        fitted: dict[str, np.ndarray] = {}
        augmented: dict[tuple[str, str], np.ndarray] = {}
        images = []
        for augmentation, view in self.units:
            source = view.source
            if source not in fitted:
                where = f"sample {i}, source {source!r}"
                img = self._read(self.sources[source][i], where)
                fitted[source] = fit_geometry(img, self.size, where=where, **self.geometry)
            if (source, augmentation) not in augmented:
                augmented[source, augmentation] = augment(fitted[source], augmentation, self.random_state)
            images.append(apply_color(augmented[source, augmentation], view.color, self.normalizers))
        return torch.from_numpy(np.stack(images))

    def _read(self, cell, where: str) -> np.ndarray:
        if isinstance(cell, (str, os.PathLike)):
            try:
                img = decode_image_file(
                    cell,
                    shrink_to=self.shrink_to,
                    interpolation=self.geometry["interpolation"],
                    max_pixels=self.max_pixels,
                )
            except OSError:
                img = None  # read_image words the error (missing file, permissions)
            if img is not None:
                return img
        return read_image(cell, where, max_pixels=self.max_pixels)


class DeviceBatch:
    """A batch whose images are brought to the input size on the device by the extraction loop.

    ``data`` holds one uint8 tensor per (sample, source), sample-major: the bytes of a JPEG file (1-D), for
    the device's decoder, or the image decoded on the CPU at its own size (``(h, w, 3)``). ``positions``
    are the samples' dataset positions (to run them through the CPU path when the device decoder rejects
    a stream).
    """

    def __init__(self, positions: list[int], data: list[torch.Tensor]):
        self.positions = positions
        self.data = data

    def __len__(self) -> int:
        return len(self.positions)

    def pin_memory(self):
        # The DataLoader pins batches that define pin_memory; the extraction loop copies images per size.
        return self


class DeviceGeometryDataset(ViewDataset):
    """A :class:`ViewDataset` whose images are resized, padded and coloured on the device, not here.

    Item ``k`` is ``(k, [one uint8 tensor per source])``: with ``jpeg_bytes``, the raw bytes of a JPEG file
    :func:`~skdfl._decode.read_jpeg_file` accepts (decoded on the device); otherwise the image decoded by the
    CPU decoders (another format, an array cell, a CMYK JPEG; their error messages), at full size. Images of
    more than ``DEVICE_MAX_PIXELS`` are fitted here instead, as :class:`ViewDataset` fits them, and shipped at
    the input size (the device's geometry leaves them as they are). Batch with :meth:`collate` into a
    :class:`DeviceBatch`. Only identity augmentation and rgb/gray colours: the device computes those
    (``DEVICE_COLORS``).
    """

    def __init__(self, *args, jpeg_bytes: bool = True, **kwargs):
        super().__init__(*args, **kwargs)
        if any(augmentation != "identity" or view.color not in DEVICE_COLORS for augmentation, view in self.units):
            raise ValueError(
                f"DeviceGeometryDataset supports plain views in colours {DEVICE_COLORS}, got {self.units}"
            )
        self.jpeg_bytes = jpeg_bytes
        self.device_sources = list(dict.fromkeys(view.source for _, view in self.units))

    def __getitem__(self, k: int):
        i = int(self.indices[k])
        data = []
        for source in self.device_sources:
            cell = self.sources[source][i]
            encoded = None
            if self.jpeg_bytes and isinstance(cell, (str, os.PathLike)):
                try:
                    encoded = read_jpeg_file(cell, max_pixels=self._bytes_limit())
                except OSError:
                    encoded = None  # _read words the error (missing file, permissions)
            if encoded is None:
                where = f"sample {i}, source {source!r}"
                # A JPEG shrunk >= 2x comes back at a reduced DCT scale, resized to what the geometry needs.
                pixels = self._read(cell, where)
                if pixels.shape[0] * pixels.shape[1] > DEVICE_MAX_PIXELS:
                    pixels = fit_geometry(pixels, self.size, where=where, **self.geometry)
                # Decoders may hand back read-only arrays (Pillow's buffer): torch wants writable memory.
                encoded = torch.from_numpy(np.require(pixels, requirements=["C", "W"]))
            data.append(encoded)
        return k, data

    def _bytes_limit(self) -> int:
        """Largest JPEG shipped as bytes: ``DEVICE_MAX_PIXELS``, or the decompression-bomb limit if lower."""
        bomb = Image.MAX_IMAGE_PIXELS if self.max_pixels == "pil" else self.max_pixels
        return DEVICE_MAX_PIXELS if bomb is None else min(bomb, DEVICE_MAX_PIXELS)

    def decoded(self, k: int) -> torch.Tensor:
        """Item ``k`` decoded and fitted on the CPU, as :class:`ViewDataset` gives it."""
        return super().__getitem__(k)

    def collate(self, items: list) -> DeviceBatch:
        return DeviceBatch([k for k, _ in items], [d for _, data in items for d in data])


__all__ = [
    "DEVICE_COLORS",
    "DEVICE_MAX_PIXELS",
    "DeviceBatch",
    "DeviceGeometryDataset",
    "ViewDataset",
    "prefetched_batches",
    "stack_samples",
    "threaded_items",
]
