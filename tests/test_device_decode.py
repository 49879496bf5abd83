"""Decoding and resizing on the backbone's device (``BackboneEmbedder(decode="device")``).

The device path (nvJPEG on CUDA) runs here on a CPU device, where torchvision decodes JPEGs with
libjpeg-turbo: the same code path but the decoder (the CUDA test runs on a GPU machine only; it passed on
an H200). Tolerances:

* ``fit_geometry_tensors`` (torch's antialiased resize, Pillow's kernels) against ``fit_geometry`` (Pillow)
  on natural images: at most 1 grey level (rounding), mean < 0.3;
* ``to_gray_tensors`` against ``to_gray``: identical on one image, at most 1 level after a resize (float
  sums in another order may round a luma on .5 the other way);
* whole extraction, device path against the CPU path (which decodes JPEGs shrunk >= 2x at a reduced DCT
  scale): mean pixel difference < 1 grey level, embedding cosine > 0.999; against a full-size CPU decode +
  ``fit_geometry``: at most 3 grey levels, mean < 0.5 (decoder IDCT + resize rounding); PNG and array cells
  (decoded on the CPU at full size, fitted on the device): at most 1 grey level.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from sklearn.base import clone
from sklearn.utils._param_validation import InvalidParameterError

import skdfl.embedder as embedder_module
from skdfl import BackboneEmbedder
from skdfl._decode import decode_jpegs, device_jpeg_decoder_available, read_jpeg_file
from skdfl.io import ImageReadError
from skdfl.loading import DeviceBatch, DeviceGeometryDataset
from skdfl.transforms import fit_geometry, fit_geometry_tensors
from skdfl.views import to_gray, to_gray_tensors

CPU = torch.device("cpu")
pytestmark = [
    pytest.mark.usefixtures("one_torch_thread"),
    pytest.mark.skipif(not device_jpeg_decoder_available(CPU), reason="torchvision has no JPEG decoder here"),
]


def _tissue(h, w, seed=0) -> np.ndarray:
    """A smooth, tissue-like texture (natural images are band-limited; white noise is not)."""
    rng = np.random.default_rng(seed)
    small = (rng.random((max(2, h // 8), max(2, w // 8), 3)) * 255).astype(np.uint8)
    return np.asarray(Image.fromarray(small).resize((w, h), Image.Resampling.BILINEAR))


def _jpegs(folder: Path, shapes, quality=90) -> list[str]:
    paths = []
    for k, (h, w) in enumerate(shapes):
        path = folder / f"img{k}.jpg"
        Image.fromarray(_tissue(h, w, seed=k)).save(path, quality=quality)
        paths.append(str(path))
    return paths


def _embedder(**kwargs) -> BackboneEmbedder:
    params = dict(pretrained=False, image_size=64, device="cpu", verbose=0, num_workers=0, batch_size=4)
    return BackboneEmbedder("resnet18", **{**params, **kwargs})


def _cosines(a, b) -> np.ndarray:
    return (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


def _as_chw(img: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.array(img)).permute(2, 0, 1).contiguous()


# ------------------------------------------------------------------ building blocks


@pytest.mark.parametrize(
    "shape, policy, interpolation, scale",
    [
        ((50, 50), "pad", "bicubic", None),  # IDC-like upscale
        ((460, 700), "pad", "bicubic", None),  # BreakHis-like downscale, padded
        ((460, 700), "stretch", "bicubic", None),
        ((460, 700), "pad", "bilinear", None),
        ((150, 90), "pad", "bicubic", 2.0),  # fixed scale: overflow cropped centrally
        ((30, 40), "pad", "bicubic", 2.0),  # fixed scale: padded
    ],
)
def test_fit_geometry_tensors_matches_pillow_within_rounding(shape, policy, interpolation, scale):
    img = _tissue(*shape)
    ref = fit_geometry(img, (224, 224), policy, interpolation=interpolation, scale=scale).astype(np.float32)
    out = fit_geometry_tensors([_as_chw(img)], (224, 224), policy, interpolation=interpolation, scale=scale)
    assert out.shape == (1, 3, 224, 224) and out.dtype == torch.float32
    diff = np.abs(out[0].permute(1, 2, 0).numpy() - ref)
    assert diff.max() <= 1.0 and diff.mean() < 0.3
    assert torch.equal(out, out.round()), "values are rounded like Pillow's uint8 output"


def test_fit_geometry_tensors_groups_sizes_and_keeps_order():
    images = [_tissue(40, 60, 0), _tissue(80, 30, 1), _tissue(40, 60, 2)]
    out = fit_geometry_tensors([_as_chw(i) for i in images], (48, 48), "pad")
    for k, img in enumerate(images):
        single = fit_geometry_tensors([_as_chw(img)], (48, 48), "pad")[0]
        assert torch.equal(out[k], single)
    # Padding is white, where the aspect ratio leaves room: 40x60 -> 32x48 placed at rows 8..40.
    assert (out[0, :, :8] == 255).all() and (out[0, :, 40:] == 255).all()


def test_fit_geometry_tensors_rejects_what_it_does_not_implement():
    img = [_as_chw(_tissue(10, 10))]
    with pytest.raises(ValueError, match="resize policies"):
        fit_geometry_tensors(img, (8, 8), "crop")
    with pytest.raises(ValueError, match="interpolations"):
        fit_geometry_tensors(img, (8, 8), "pad", interpolation="lanczos")
    with pytest.raises(ValueError, match=r"image 0 has shape \(10, 10\)"):
        fit_geometry_tensors([torch.zeros(10, 10, dtype=torch.uint8)], (8, 8), "pad")


def test_to_gray_tensors_matches_to_gray():
    img = (np.random.default_rng(0).random((32, 48, 3)) * 255).astype(np.uint8)
    out = to_gray_tensors(_as_chw(img)[None].float())
    assert out.shape == (1, 3, 32, 48)
    np.testing.assert_array_equal(out[0].permute(1, 2, 0).numpy(), to_gray(img).astype(np.float32))


def test_read_jpeg_file_accepts_only_what_the_device_decodes(tmp_path):
    (jpeg,) = _jpegs(tmp_path, [(40, 60)])
    data = read_jpeg_file(jpeg)
    assert data.dtype == torch.uint8 and data.ndim == 1 and bytes(data.numpy()) == Path(jpeg).read_bytes()
    png = tmp_path / "x.png"
    Image.fromarray(_tissue(40, 60)).save(png)
    cmyk = tmp_path / "cmyk.jpg"
    Image.fromarray(_tissue(40, 60)).convert("CMYK").save(cmyk)
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"\xff\xd8\xff" + b"\x00" * 40)
    assert read_jpeg_file(png) is None
    assert read_jpeg_file(cmyk) is None, "CMYK: Pillow's conversion is the reference"
    assert read_jpeg_file(broken) is None, "a broken header is left to the CPU path's error message"
    assert read_jpeg_file(jpeg, max_pixels=40 * 60 - 1) is None, "the decompression-bomb check stays on the CPU"
    assert read_jpeg_file(jpeg, max_pixels=None) is not None
    with pytest.raises(OSError):
        read_jpeg_file(tmp_path / "missing.jpg")


def test_decode_jpegs_gives_libjpeg_turbos_pixels(tmp_path):
    paths = _jpegs(tmp_path, [(40, 60), (33, 21)])
    decoded = decode_jpegs([read_jpeg_file(p) for p in paths], CPU)
    for path, img in zip(paths, decoded, strict=True):
        ref = np.asarray(Image.open(path).convert("RGB"))
        assert img.dtype == torch.uint8 and tuple(img.shape) == (3, *ref.shape[:2])
        assert np.abs(img.permute(1, 2, 0).numpy().astype(int) - ref).max() <= 1


# ------------------------------------------------------------------ the embedder


@pytest.mark.parametrize("resize", ["pad", "stretch"])
@pytest.mark.parametrize("colors", [("rgb",), ("rgb", "gray")])
def test_device_decode_matches_the_cpu_path(tmp_path, monkeypatch, resize, colors):
    paths = _jpegs(tmp_path, [(230, 350), (230, 350), (200, 120), (64, 64), (230, 350)])
    calls = []
    real_decode = embedder_module.decode_jpegs
    monkeypatch.setattr(embedder_module, "decode_jpegs", lambda data, device: calls.append(len(data)) or
                        real_decode(data, device))  # fmt: skip
    cpu = _embedder(decode="cpu", resize=resize, colors=colors).fit(paths)
    dev = _embedder(decode="device", resize=resize, colors=colors).fit(paths)
    a = cpu.transform(paths)
    assert calls == []
    b = dev.transform(paths)
    assert calls == [4, 1], "one batched device decode per batch of 4 samples (one source each)"
    assert a.shape == b.shape
    assert _cosines(a, b).min() > 0.999
    assert not np.array_equal(a, b), "the device path really ran (other decoder and resize)"


def test_device_pixels_are_a_full_decode_plus_fit_geometry(tmp_path):
    paths = _jpegs(tmp_path, [(230, 350), (64, 40)])
    emb = _embedder(decode="device", image_size=96, colors=("rgb", "gray")).fit(paths)
    dataset = emb.view_dataset({"image": paths}, geometry="device")
    batch = dataset.collate([dataset[k] for k in range(2)])
    assert isinstance(batch, DeviceBatch) and len(batch) == 2
    assert all(d.ndim == 1 for d in batch.data), "JPEG files travel as their bytes"
    images = emb._device_images(batch, dataset, CPU).view(2, 2, 3, 96, 96)
    for k, path in enumerate(paths):
        full = np.asarray(Image.open(path).convert("RGB"))
        ref = fit_geometry(full, (96, 96), "pad").astype(np.float32)
        rgb = images[k, 0].permute(1, 2, 0).numpy()
        gray = images[k, 1].permute(1, 2, 0).numpy()
        diff = np.abs(rgb - ref)
        assert diff.max() <= 3 and diff.mean() < 0.5, (diff.max(), diff.mean())
        # Float sums in another order may round a luma that falls on .5 the other way.
        gray_diff = np.abs(gray - to_gray(rgb.astype(np.uint8)))
        assert gray_diff.max() <= 1 and gray_diff.mean() < 0.05
        cpu = _embedder(image_size=96, colors=("rgb", "gray")).fit(paths)
        cpu_item = cpu.view_dataset({"image": paths})[k].numpy().astype(np.float32)  # DCT-scaled decode
        assert np.abs(rgb - cpu_item[0]).mean() < 1.0


def test_mixed_formats_and_multiple_sources(tmp_path):
    import pandas as pd

    jpegs = _jpegs(tmp_path, [(120, 90)] * 6)
    png = tmp_path / "one.png"
    Image.fromarray(_tissue(120, 90, seed=9)).save(png)
    cmyk = tmp_path / "cmyk.jpg"
    Image.fromarray(_tissue(120, 90, seed=8)).convert("CMYK").save(cmyk)
    x20 = [jpegs[0], jpegs[1], str(png), jpegs[2]]
    x5 = [jpegs[3], jpegs[0], str(cmyk), jpegs[4]]
    X = pd.DataFrame({"x20": x20, "x5": x5})
    cpu = _embedder(decode="cpu", batch_size=2).fit(X)
    dev = _embedder(decode="device", batch_size=2).fit(X)
    a, b = cpu.transform(X), dev.transform(X)
    assert _cosines(a, b).min() > 0.999 and not np.array_equal(a, b)
    # Views stay in order, x20 block then x5 block: row 1's x5 is row 0's x20 image (same batch).
    dim = dev.embedding_dim_
    np.testing.assert_allclose(b[1, dim:], b[0, :dim], rtol=1e-4, atol=1e-5)
    assert _cosines(b[1:2, :dim], b[0:1, :dim])[0] < 0.9999
    # The PNG and the CMYK JPEG are decoded on the CPU at full size, then fitted on the device.
    dataset = dev.view_dataset(dev_sources := {"x20": x20, "x5": x5}, geometry="device")
    _, (png_pixels, cmyk_pixels) = dataset[2]
    assert png_pixels.shape == (120, 90, 3) and cmyk_pixels.shape == (120, 90, 3)
    images = dev._device_images(dataset.collate([dataset[2]]), dataset, CPU)
    cpu_item = cpu.view_dataset(dev_sources, [2])[0].numpy()  # pad of a full decode: no DCT scaling here
    diff = np.abs(images.permute(0, 2, 3, 1).numpy() - cpu_item)
    assert diff.max() <= 1


def test_array_cells_are_fitted_on_the_device(tmp_path):
    images = np.stack([_tissue(40, 60, seed=k) for k in range(3)])
    cpu = _embedder(decode="cpu").fit(images)
    dev = _embedder(decode="device").fit(images)
    assert _cosines(cpu.transform(images), dev.transform(images)).min() > 0.9999


def test_a_batch_the_device_decoder_rejects_takes_the_cpu_path(tmp_path, monkeypatch):
    paths = _jpegs(tmp_path, [(100, 150)] * 3)
    expected = _embedder(decode="device").fit(paths).transform(paths)
    cpu_items = []
    real_decoded = DeviceGeometryDataset.decoded

    def reject(data, device):
        raise RuntimeError("nvjpeg: unsupported stream")

    monkeypatch.setattr(embedder_module, "decode_jpegs", reject)
    monkeypatch.setattr(DeviceGeometryDataset, "decoded", lambda self, k: cpu_items.append(k) or real_decoded(self, k))
    out = _embedder(decode="device").fit(paths).transform(paths)
    assert cpu_items == [0, 1, 2]
    # The CPU path decodes at full size too (no DCT scaling) and fits with Pillow: within rounding.
    assert _cosines(out, expected).min() > 0.9999


def test_bad_files_are_named_as_on_the_cpu_path(tmp_path):
    paths = _jpegs(tmp_path, [(60, 60)] * 2)
    emb = _embedder(decode="device").fit(paths)
    with pytest.raises(ImageReadError, match="missing.jpg"):
        emb.transform([paths[0], str(tmp_path / "missing.jpg")])
    big = _embedder(decode="device", max_image_pixels=1000).fit(paths)
    with pytest.raises(ImageReadError, match="img0.jpg"):
        big.transform(paths)


def test_decode_setting_is_part_of_the_signature_and_validated(tmp_path):
    paths = _jpegs(tmp_path, [(60, 60)])
    signature = {mode: _embedder(decode=mode).fit(paths).embedding_signature()["jpeg_decode"]
                 for mode in ("auto", "cpu", "device")}  # fmt: skip
    assert signature == {"auto": "dct-scaled", "cpu": "dct-scaled", "device": "device"}, "auto is cpu on a CPU"
    # Settings the device does not compute keep every JPEG on the CPU, whatever decode says.
    for kwargs in (dict(resize="crop"), dict(colors=("rgb", "macenko")), dict(augmentations=["rot90"])):
        emb = _embedder(decode="device", **kwargs).fit(paths)
        assert emb.embedding_signature()["jpeg_decode"] == "dct-scaled", kwargs
        assert not emb._geometry_on_device(CPU)
    assert clone(_embedder(decode="device")).decode == "device"
    with pytest.raises(InvalidParameterError, match="decode"):
        _embedder(decode="gpu").fit(paths)


def test_device_geometry_dataset_refuses_views_it_cannot_compute(tmp_path):
    paths = _jpegs(tmp_path, [(60, 60)])
    emb = _embedder(colors=("rgb", "reinhard")).fit(paths)
    assert emb.view_dataset({"image": paths})[0].shape == (2, 64, 64, 3)
    with pytest.raises(ValueError, match="plain views"):
        emb.view_dataset({"image": paths}, geometry="device")
    with pytest.raises(ValueError, match="geometry must be"):
        emb.view_dataset({"image": paths}, geometry="gpu")


@pytest.mark.skipif(os.name == "nt", reason="worker start-up is slow on Windows")
def test_device_decode_with_loader_workers(tmp_path):
    paths = _jpegs(tmp_path, [(100, 150)] * 5)
    serial = _embedder(decode="device").fit(paths).transform(paths)
    workers = _embedder(decode="device", num_workers=1).fit(paths).transform(paths)
    np.testing.assert_array_equal(workers, serial)


def test_models_pickled_before_the_decode_parameter_keep_the_cpu_path(tmp_path):
    import pickle

    paths = _jpegs(tmp_path, [(60, 60)])
    emb = _embedder(decode="device").fit(paths)
    state = dict(emb.__getstate__())
    del state["decode"]
    old = BackboneEmbedder.__new__(BackboneEmbedder)
    old.__setstate__(state)
    del state["worker_type"]
    assert old.decode == "cpu" and old.embedding_signature()["jpeg_decode"] == "dct-scaled"
    assert pickle.loads(pickle.dumps(emb)).decode == "device"


@pytest.mark.parametrize("decode", ["cpu", "device"])
def test_loader_items_smaller_than_a_batch_are_joined_into_whole_batches(tmp_path, monkeypatch, decode):
    # On an accelerator the loader yields fractions of a batch (more workers busy); the forward batches
    # must be the same, so the embeddings are bit-identical to whole-batch items.
    paths = _jpegs(tmp_path, [(90, 120)] * 10)
    whole = _embedder(decode=decode).fit(paths).transform(paths)
    emb = _embedder(decode=decode).fit(paths)
    sizes = []
    real_forward = BackboneEmbedder._forward
    monkeypatch.setattr(BackboneEmbedder, "_loader_chunk", lambda self, device: 2)
    monkeypatch.setattr(BackboneEmbedder, "_forward", staticmethod(lambda m, x: sizes.append(len(x)) or real_forward(m, x)))
    np.testing.assert_array_equal(emb.transform(paths), whole)
    assert sizes == [4, 4, 2]


@pytest.mark.parametrize("batch_size, expected", [(256, 32), (100, 20), (32, 8), (12, 12), (97, 97)])
def test_loader_chunk_on_an_accelerator_divides_the_batch(batch_size, expected):
    emb = _embedder(batch_size=batch_size)
    assert emb._loader_chunk(torch.device("cuda")) == expected
    assert emb._loader_chunk(CPU) == batch_size


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA (nvJPEG); runs on a GPU machine only")
def test_nvjpeg_path_on_cuda_matches_the_cpu_path(tmp_path):
    paths = _jpegs(tmp_path, [(460, 700)] * 6 + [(64, 64)] * 2)
    cpu = _embedder(decode="cpu", device="cuda", precision="fp32", image_size=224).fit(paths)
    auto = _embedder(decode="auto", device="cuda", precision="fp32", image_size=224).fit(paths)
    assert auto.embedding_signature()["jpeg_decode"] == "device", "decode='auto' uses nvJPEG on CUDA"
    cosines = _cosines(cpu.transform(paths), auto.transform(paths))
    assert cosines.min() > 0.999, cosines
    # PNG files and arrays: decoded by the loader at full size, fitted on the GPU.
    png = tmp_path / "x.png"
    Image.fromarray(_tissue(460, 700, seed=5)).save(png)
    arrays = np.stack([_tissue(50, 50, seed=k) for k in range(3)])
    for X in ([str(png)] * 3, arrays):
        cosines = _cosines(cpu.fit(X).transform(X), auto.fit(X).transform(X))
        assert cosines.min() > 0.999, cosines


def test_thread_workers_give_the_serial_result_in_order(tmp_path):
    paths = _jpegs(tmp_path, [(90, 120)] * 7)
    serial = _embedder(decode="device").fit(paths).transform(paths)
    for decode in ("cpu", "device"):
        expected = serial if decode == "device" else _embedder(decode="cpu").fit(paths).transform(paths)
        threaded = _embedder(decode=decode, num_workers=2, worker_type="thread").fit(paths)
        np.testing.assert_array_equal(threaded.transform(paths), expected)
        # Order is kept whatever thread finishes first: reversed input, reversed output.
        np.testing.assert_array_equal(threaded.transform(paths[::-1]), expected[::-1])


def test_thread_workers_raise_the_files_error_and_stop(tmp_path):
    paths = _jpegs(tmp_path, [(60, 60)] * 9)
    emb = _embedder(num_workers=2, worker_type="thread", batch_size=2).fit(paths)
    with pytest.raises(ImageReadError, match="missing.jpg"):
        emb.transform(paths[:5] + [str(tmp_path / "missing.jpg")] + paths[5:])


def test_threaded_items_is_a_data_loader_without_processes():
    from torch.utils.data import DataLoader

    from skdfl.loading import threaded_items

    data = [torch.full((2,), k) for k in range(11)]
    expected = [batch.tolist() for batch in DataLoader(data, batch_size=3, collate_fn=torch.stack)]
    got = [batch.tolist() for batch in threaded_items(data, 3, torch.stack, 4)]
    assert got == expected


def test_worker_type_auto_is_processes_on_a_cpu(tmp_path, monkeypatch):
    paths = _jpegs(tmp_path, [(60, 60)] * 3)
    monkeypatch.setattr(embedder_module, "threaded_items", lambda *a, **k: pytest.fail("threads on a CPU"))
    out = _embedder(num_workers=1).fit(paths).transform(paths)
    assert out.shape[0] == 3
    with pytest.raises(InvalidParameterError, match="worker_type"):
        _embedder(worker_type="fibre").fit(paths)


@pytest.mark.parametrize("decode", ["cpu", "device"])
def test_every_batch_is_written_including_the_last(tmp_path, decode):
    # Each batch's features reach the output one batch late (deferred device-to-host copies): the last
    # batch is written when the loop ends, and each row holds its own image.
    paths = _jpegs(tmp_path, [(70, 90)] * 5)
    emb = _embedder(decode=decode, batch_size=2).fit(paths)
    together = emb.transform(paths)
    alone = np.concatenate([emb.transform([p]) for p in paths])
    np.testing.assert_allclose(together, alone, rtol=1e-4, atol=1e-5)
    assert len({row.tobytes() for row in together}) == 5


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_a_forked_child_gets_its_own_decoding_threads():
    import multiprocessing

    from skdfl.loading import threaded_items

    data = [torch.full((1,), k) for k in range(6)]
    assert len(list(threaded_items(data, 2, torch.cat, 2))) == 3  # the parent's pool now exists
    ctx = multiprocessing.get_context("fork")
    with ctx.Pool(1) as pool:
        result = pool.apply_async(_threaded_sum, (data,))
        assert result.get(timeout=60) == sum(range(6)), "the child's threads ran (no deadlock)"


def _threaded_sum(data):
    from skdfl.loading import threaded_items

    return int(sum(item.sum() for item in threaded_items(data, 2, torch.cat, 2)))


def test_images_over_the_device_limit_are_fitted_on_the_cpu(tmp_path, monkeypatch):
    import skdfl.loading as loading

    jpeg = _jpegs(tmp_path, [(120, 90)])[0]
    png = tmp_path / "x.png"
    Image.fromarray(_tissue(120, 90, seed=4)).save(png)
    paths = [jpeg, str(png), jpeg]
    emb = _embedder(decode="device").fit(paths)
    full = [item.shape for item in emb.view_dataset({"image": paths}, geometry="device")[1][1]]
    assert full == [(120, 90, 3)], "below the limit: full-size pixels for the device"
    monkeypatch.setattr(loading, "DEVICE_MAX_PIXELS", 100 * 80)
    _, (jpeg_item,) = emb.view_dataset({"image": paths}, geometry="device")[0]
    _, (png_item,) = emb.view_dataset({"image": paths}, geometry="device")[1]
    assert jpeg_item.ndim == 3, "a JPEG over the limit is not shipped as bytes"
    assert tuple(png_item.shape) == (64, 64, 3), "fitted here, at the input size"
    cpu = _embedder(decode="cpu").fit(paths).transform(paths)
    out = emb.transform(paths)
    np.testing.assert_allclose(out[1], cpu[1], rtol=1e-5, atol=1e-6)  # same Pillow pixels: same embedding
    assert _cosines(out, cpu).min() > 0.999


def test_fit_geometry_tensors_in_slices_gives_the_same_images(monkeypatch):
    import skdfl.transforms as transforms

    images = [_as_chw(_tissue(40, 60, seed=k)) for k in range(5)] + [_as_chw(_tissue(30, 30, seed=9))]
    whole = fit_geometry_tensors(images, (48, 48), "pad")
    monkeypatch.setattr(transforms, "MAX_TENSOR_ELEMENTS", 3 * 48 * 48 * 2)  # two images per slice
    torch.testing.assert_close(fit_geometry_tensors(images, (48, 48), "pad"), whole, rtol=0, atol=0)


def test_torchvisions_decoder_deprecation_is_silenced_even_when_warnings_are_errors(tmp_path):
    # Filtered once at import, not with catch_warnings() per call (not thread-safe, and the device decode
    # runs in the prefetching thread); -W error turns any warning that still gets through into a failure.
    import subprocess
    import sys

    (path,) = _jpegs(tmp_path, [(40, 40)])
    code = (
        "import sys, torch; from skdfl._decode import decode_jpegs, read_jpeg_file; "
        "print(tuple(decode_jpegs([read_jpeg_file(sys.argv[1])], torch.device('cpu'))[0].shape))"
    )
    done = subprocess.run([sys.executable, "-W", "error::DeprecationWarning", "-c", code, path],
                          capture_output=True, text=True, timeout=300)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "(3, 40, 40)"
