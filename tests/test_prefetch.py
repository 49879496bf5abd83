"""Forward batches made by a background thread (``skdfl.loading.prefetched_batches``).

On CUDA the thread decodes and resizes the next batch on a stream of its own while the forward pass of the
current one runs; here (CPU) the same thread, queue and shutdown logic run without streams, and the
embedder's integration is checked by enabling it for the CPU (``PREFETCH_DEVICES``).
"""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
import torch
from PIL import Image

import skdfl.embedder as embedder_module
from skdfl import BackboneEmbedder
from skdfl._decode import device_jpeg_decoder_available
from skdfl.io import ImageReadError
from skdfl.loading import prefetched_batches

CPU = torch.device("cpu")
pytestmark = pytest.mark.usefixtures("one_torch_thread")


class Source:
    """A generator of ``(n, tensor)`` batches that records where, how far and how it ran."""

    def __init__(self, n_batches: int, fail_at: int | None = None):
        self.n_batches, self.fail_at = n_batches, fail_at
        self.made, self.threads, self.inference = 0, set(), set()
        self.closed = threading.Event()

    def __iter__(self):
        try:
            for k in range(self.n_batches):
                if k == self.fail_at:
                    raise ValueError(f"batch {k} is broken")
                self.threads.add(threading.current_thread().name)
                self.inference.add(torch.is_inference_mode_enabled())
                self.made += 1
                yield k + 1, torch.full((k + 1, 3), float(k))
        finally:
            self.closed.set()


def _prefetch_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "skdfl-prefetch"]


def _wait_for(condition, timeout=10.0):
    deadline = time.monotonic() + timeout
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.01)
    return condition()


def test_batches_come_in_order_from_a_background_thread_in_inference_mode():
    source = Source(6)
    got = [(n, x.clone()) for n, x in prefetched_batches(iter(source), CPU)]
    assert [n for n, _ in got] == [1, 2, 3, 4, 5, 6]
    for k, (n, x) in enumerate(got):
        assert x.shape == (n, 3) and bool((x == k).all())
    assert source.threads == {"skdfl-prefetch"}
    assert source.inference == {True}, "the thread's work must not record autograd history"
    assert source.closed.is_set() and _wait_for(lambda: not _prefetch_threads())


def test_the_thread_runs_at_most_depth_batches_ahead():
    source = Source(20)
    batches = prefetched_batches(iter(source), CPU, depth=1)
    next(batches)
    # One batch taken, one waiting in the queue, one made and waiting for room: no more.
    assert _wait_for(lambda: source.made >= 3)
    time.sleep(0.2)
    assert source.made == 3
    batches.close()
    assert source.closed.is_set(), "closing the consumer closes the source (the loader's pending work)"
    assert not _prefetch_threads()


def test_an_error_in_the_thread_is_raised_by_the_consumer_at_its_batch():
    source = Source(5, fail_at=2)
    seen = []
    with pytest.raises(ValueError, match="batch 2 is broken"):
        for n, _ in prefetched_batches(iter(source), CPU):
            seen.append(n)
    assert seen == [1, 2]
    assert source.closed.is_set() and not _prefetch_threads()


def test_an_error_in_the_consumer_stops_the_thread():
    source = Source(50)
    with pytest.raises(RuntimeError, match="forward failed"):
        for n, _ in prefetched_batches(iter(source), CPU):
            if n == 2:
                raise RuntimeError("forward failed")
    assert source.closed.is_set() and not _prefetch_threads()
    assert source.made < 50


# ------------------------------------------------------------------ in the embedder


def _tissue(h, w, seed) -> np.ndarray:
    rng = np.random.default_rng(seed)
    small = (rng.random((max(2, h // 8), max(2, w // 8), 3)) * 255).astype(np.uint8)
    return np.asarray(Image.fromarray(small).resize((w, h), Image.Resampling.BILINEAR))


def _files(folder, n) -> list[str]:
    paths = []
    for k in range(n):
        path = folder / (f"img{k}.jpg" if k % 2 else f"img{k}.png")
        Image.fromarray(_tissue(60 + 10 * k, 80, seed=k)).save(path)
        paths.append(str(path))
    return paths


def _embedder(**kwargs) -> BackboneEmbedder:
    params = dict(pretrained=False, image_size=64, device="cpu", verbose=0, num_workers=0, batch_size=2)
    return BackboneEmbedder("resnet18", **{**params, **kwargs})


@pytest.mark.skipif(not device_jpeg_decoder_available(CPU), reason="torchvision has no JPEG decoder here")
@pytest.mark.parametrize("decode", ["cpu", "device"])
def test_prefetching_embedder_gives_the_same_embeddings(tmp_path, monkeypatch, decode):
    paths = _files(tmp_path, 7)
    emb = _embedder(decode=decode, colors=("rgb", "gray")).fit(paths)
    expected = emb.transform(paths)
    made_in = set()
    original = embedder_module.BackboneEmbedder._join_items

    def recording_join(self, *args):
        made_in.add(threading.current_thread().name)
        return original(self, *args)

    monkeypatch.setattr(embedder_module, "PREFETCH_DEVICES", ("cpu",))
    monkeypatch.setattr(embedder_module.BackboneEmbedder, "_join_items", recording_join)
    np.testing.assert_array_equal(emb.transform(paths), expected)
    assert made_in == {"skdfl-prefetch"}


def test_prefetching_embedder_names_a_missing_file_and_leaves_no_thread(tmp_path, monkeypatch):
    paths = _files(tmp_path, 6)
    emb = _embedder(decode="device").fit(paths)
    monkeypatch.setattr(embedder_module, "PREFETCH_DEVICES", ("cpu",))
    with pytest.raises(ImageReadError, match="missing.png"):
        emb.transform(paths[:4] + [str(tmp_path / "missing.png")] + paths[4:])
    assert not _prefetch_threads()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA (side stream); runs on a GPU machine only")
def test_prefetch_on_a_side_cuda_stream_gives_the_serial_embeddings(tmp_path, monkeypatch):
    paths = _files(tmp_path, 9)
    emb = _embedder(decode="device", device="cuda", precision="fp32").fit(paths)
    prefetched = emb.transform(paths)
    monkeypatch.setattr(embedder_module, "PREFETCH_DEVICES", ())
    serial = emb.transform(paths)
    np.testing.assert_allclose(prefetched, serial, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("prefetch", [True, False])
def test_a_failing_forward_pass_stops_every_loader_thread_at_once(tmp_path, monkeypatch, prefetch):
    paths = _files(tmp_path, 40)
    emb = _embedder(decode="device", num_workers=2, worker_type="thread").fit(paths)
    monkeypatch.setattr(embedder_module, "PREFETCH_DEVICES", ("cpu",) if prefetch else ())
    calls, built = [], []
    original_forward = embedder_module.BackboneEmbedder._forward
    original_getitem = embedder_module.DeviceGeometryDataset.__getitem__

    def failing_forward(module, x):
        calls.append(len(x))
        if len(calls) == 2:
            raise RuntimeError("CUDA out of memory (simulated)")
        return original_forward(module, x)

    def counted_getitem(self, k):
        built.append(k)
        return original_getitem(self, k)

    monkeypatch.setattr(embedder_module.BackboneEmbedder, "_forward", staticmethod(failing_forward))
    monkeypatch.setattr(embedder_module.DeviceGeometryDataset, "__getitem__", counted_getitem)
    with pytest.raises(RuntimeError, match="simulated") as raised:
        emb.transform(paths)
    # While the traceback (which holds the extraction's frame) is still alive, no thread is left waiting
    # and, once the items being built finish, nothing is decoded any more.
    assert raised.value is not None and not _prefetch_threads()
    time.sleep(0.3)
    n_built = len(built)
    time.sleep(0.3)
    assert len(built) == n_built, "the loader kept decoding after the call failed"
    assert n_built < len(paths) // 2
