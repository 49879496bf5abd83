"""The accelerator path of the extraction loop, checked without an accelerator (mocks) and torch.compile on CPU."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch

import skdfl.embedder as embedder_module
from skdfl import BackboneEmbedder


class _LoaderBuilt(Exception):
    pass


def _tiny(**kwargs) -> BackboneEmbedder:
    params = dict(backbone="resnet18", pretrained=False, image_size=32, precision="fp32", verbose=0)
    return BackboneEmbedder(**(params | kwargs))


@pytest.fixture
def images():
    return np.random.default_rng(0).integers(0, 256, size=(10, 32, 32, 3), dtype=np.uint8)


@pytest.mark.parametrize(
    ("device", "worker_type", "loader", "pinned", "workers"),
    [
        # "auto": 15 spare cores on a 16-core GPU box but only 3 items of 4; 2 workers on a 16-core CPU box.
        ("cuda", "auto", "threads", True, 3),
        ("cuda", "process", "DataLoader", True, 3),
        ("cpu", "auto", "DataLoader", False, 2),
        ("cpu", "thread", "threads", False, 2),
    ],
)
def test_loader_pins_memory_on_cuda_and_resolves_auto_workers(
    monkeypatch, images, one_torch_thread, device, worker_type, loader, pinned, workers
):
    emb = _tiny(batch_size=4, worker_type=worker_type).fit(images)
    seen = {}

    def fake_data_loader(dataset, **kwargs):
        seen.update(kwargs, loader="DataLoader")
        raise _LoaderBuilt

    def fake_threaded_items(dataset, chunk, collate, n_threads, *, pin_memory):
        seen.update(batch_size=chunk, num_workers=n_threads, pin_memory=pin_memory, loader="threads")
        raise _LoaderBuilt

    monkeypatch.setattr(embedder_module, "DataLoader", fake_data_loader)
    monkeypatch.setattr(embedder_module, "threaded_items", fake_threaded_items)
    monkeypatch.setattr("skdfl._device.available_cpus", lambda: 16)
    emb.set_params(device=device)
    with pytest.raises(_LoaderBuilt):  # the loader is built before anything touches the device
        emb.transform(images)
    assert seen["loader"] == loader
    assert seen["pin_memory"] is pinned
    assert seen["num_workers"] == workers


def test_batches_are_normalised_on_the_device_from_uint8(images, one_torch_thread):
    emb = _tiny(batch_size=4).fit(images)
    batch = next(iter(torch.utils.data.DataLoader(emb.view_dataset({"image": images}), batch_size=4)))
    assert batch.dtype == torch.uint8  # 4x less to pin and copy than float32


def _inductor_unusable() -> str | None:
    if shutil.which("cc") is None and shutil.which("gcc") is None:
        return "torch.compile's CPU backend (inductor) needs a C compiler, none found"
    return None


@pytest.mark.slow
@pytest.mark.skipif(_inductor_unusable() is not None, reason=str(_inductor_unusable()))
def test_compile_gives_the_eager_embeddings(images, one_torch_thread):
    eager = _tiny(batch_size=5).fit(images)
    compiled = _tiny(batch_size=5, compile=True).fit(images)
    np.testing.assert_allclose(compiled.transform(images), eager.transform(images), rtol=1e-3, atol=1e-4)
    compiled.transform(images)  # second call reuses the compiled module
    assert len(embedder_module._COMPILED[compiled.module_]) == 1
