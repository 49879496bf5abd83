"""BackboneEmbedder: inputs, views, order, persistence, precision, bad input."""

from __future__ import annotations

import joblib
import numpy as np
import pandas as pd
import pytest
import timm
import torch
from PIL import Image
from sklearn.base import clone
from sklearn.utils._param_validation import InvalidParameterError
from torch import nn

from skdfl import BackboneEmbedder
from skdfl import embedder as embedder_module
from skdfl.io import ImageReadError
from skdfl.views import to_gray

SIZE = 32


def make_embedder(**kwargs) -> BackboneEmbedder:
    params = dict(backbone="resnet18", pretrained=False, image_size=SIZE, precision="fp32", verbose=0)
    params.update(kwargs)
    return BackboneEmbedder(**params)


@pytest.fixture(scope="module")
def images():
    return np.random.default_rng(0).integers(0, 256, size=(6, SIZE, SIZE, 3), dtype=np.uint8)


@pytest.fixture(scope="module")
def frame(images):
    return pd.DataFrame({"x20": list(images), "x5": list(images[::-1])}, index=[f"s{i}" for i in range(6)])


def test_array_input_gives_float32_embeddings_of_backbone_dim(images):
    emb = make_embedder().fit(images)
    Z = emb.transform(images)
    assert Z.shape == (6, 512) and Z.dtype == np.float32
    assert emb.embedding_dim_ == 512 and emb.input_size_ == (SIZE, SIZE)
    assert np.array_equal(Z, emb.transform(images)), "embedding must be deterministic"
    # Different images give different embeddings (the backbone is really run per sample).
    assert not np.allclose(Z[0], Z[1])


def test_views_are_concatenated_in_documented_order(frame):
    full = make_embedder(views=["x20", "x5"], colors=["rgb", "gray"]).fit(frame)
    Z = full.transform(frame)
    names = full.get_feature_names_out()
    assert Z.shape == (6, 4 * 512)
    assert [names[k * 512] for k in range(4)] == ["x20_rgb_0", "x20_gray_0", "x5_rgb_0", "x5_gray_0"]
    # Each block equals the single-view embedding of that (source, colour).
    for k, (src, color) in enumerate([("x20", "rgb"), ("x20", "gray"), ("x5", "rgb"), ("x5", "gray")]):
        single = clone(full).set_params(views=[src], colors=[color]).fit(frame).transform(frame)
        np.testing.assert_allclose(Z[:, k * 512 : (k + 1) * 512], single, rtol=1e-5, atol=1e-5)


def test_views_default_to_all_columns_and_order_follows_views_param(frame):
    emb = make_embedder(views=["x5", "x20"]).fit(frame)
    assert [v.name for v in emb.views_] == ["x5_rgb", "x20_rgb"]
    assert [v.name for v in make_embedder().fit(frame).views_] == ["x20_rgb", "x5_rgb"]


def test_gray_view_is_luminance_replicated(images):
    gray = to_gray(images[0])
    expected = np.rint(images[0].astype(float) @ [0.299, 0.587, 0.114])
    assert gray.shape == images[0].shape
    assert np.all(gray[..., 0] == gray[..., 2])
    np.testing.assert_allclose(gray[..., 1], expected, atol=1)
    pre_grayed = np.stack([to_gray(im) for im in images])
    Zg = make_embedder(colors="gray").fit(images).transform(images)
    Zr = make_embedder(colors="rgb").fit(images).transform(pre_grayed)
    np.testing.assert_allclose(Zg, Zr, rtol=1e-5, atol=1e-5)


def test_paths_equal_arrays(tmp_path, images):
    paths = []
    for i, im in enumerate(images):
        paths.append(str(tmp_path / f"im{i}.png"))
        Image.fromarray(im).save(paths[-1])
    emb = make_embedder().fit(images)
    np.testing.assert_array_equal(emb.transform(paths), emb.transform(images))
    np.testing.assert_array_equal(emb.transform(pd.Series(paths)), emb.transform(images))
    df = pd.DataFrame({"image": paths})
    np.testing.assert_array_equal(make_embedder().fit(df).transform(df), emb.transform(images))


def test_set_output_pandas_names_columns_and_keeps_index(frame):
    emb = make_embedder(colors=["rgb", "gray"]).set_output(transform="pandas")
    out = emb.fit_transform(frame)
    assert isinstance(out, pd.DataFrame)
    assert list(out.columns) == list(emb.get_feature_names_out())
    assert list(out.index) == list(frame.index)
    assert out.columns[0] == "x20_rgb_0" and out.columns[-1] == "x5_gray_511"
    assert list(emb.feature_names_in_) == ["x20", "x5"] and emb.n_features_in_ == 2


def test_joblib_round_trip_and_clone(tmp_path, images):
    emb = make_embedder().fit(images)
    path = tmp_path / "emb.joblib"
    joblib.dump(emb, path)
    loaded = joblib.load(path)
    np.testing.assert_array_equal(loaded.transform(images), emb.transform(images))
    cloned = clone(emb)
    assert cloned.get_params() == emb.get_params()
    assert not hasattr(cloned, "module_")


def test_module_backbone_is_copied_not_mutated(images):
    net = timm.create_model("resnet18", pretrained=False, num_classes=0)
    net.train()
    emb = make_embedder(backbone=net).fit(images)
    assert net.training, "the user's module must not be switched to eval mode or frozen"
    assert all(p.requires_grad for p in net.parameters())
    assert emb.module_ is not net and not emb.module_.training
    with torch.inference_mode():
        ref = net.eval()(torch.zeros(1, 3, SIZE, SIZE))
    assert emb.embedding_dim_ == ref.shape[1]


@pytest.mark.parametrize("fmt", ["safetensors", "pth"])
def test_checkpoint_path_loads_exact_weights(tmp_path, images, fmt):
    source = timm.create_model("resnet18", pretrained=False, num_classes=0)
    path = tmp_path / f"w.{fmt}"
    if fmt == "safetensors":
        from safetensors.torch import save_file

        save_file({k: v.contiguous() for k, v in source.state_dict().items()}, str(path))
    else:
        torch.save(source.state_dict(), path)
    emb = make_embedder(checkpoint_path=str(path)).fit(images)
    for key, value in source.state_dict().items():
        assert torch.equal(emb.module_.state_dict()[key], value), key
    reference = make_embedder(backbone=source).fit(images)
    np.testing.assert_array_equal(emb.transform(images), reference.transform(images))


def test_bf16_embeddings_close_to_fp32(images):
    if not torch.ops.mkldnn._is_mkldnn_bf16_supported():
        pytest.skip("this CPU has no native bf16")
    fp32 = make_embedder().fit(images).transform(images)
    bf16 = make_embedder(precision="bf16").fit(images).transform(images)
    cos = (fp32 * bf16).sum(1) / np.linalg.norm(fp32, axis=1) / np.linalg.norm(bf16, axis=1)
    assert cos.min() > 0.98
    assert not np.array_equal(fp32, bf16), "bf16 autocast must actually change the arithmetic"


def test_verbose_controls_progress_bar(images, capsys, monkeypatch):
    make_embedder(verbose=0).fit(images).transform(images)
    assert capsys.readouterr().err == ""
    # A quick call (a fitted model's predict) shows no bar even with verbose=1: tqdm's delay.
    make_embedder(verbose=1).fit(images).transform(images)
    assert capsys.readouterr().err == ""
    # A long job does (here "long" is any call: the delay is set to 0).
    monkeypatch.setattr(embedder_module, "PROGRESS_DELAY_S", 0.0)
    make_embedder(verbose=1).fit(images).transform(images)
    assert "embedding" in capsys.readouterr().err


def test_progress_bar_counts_images_not_samples(frame, monkeypatch):
    bars = []

    class RecordingBar(embedder_module.tqdm):
        def close(self):
            if not self.disable:
                bars.append((self.total, self.n, self.unit))
            super().close()

    monkeypatch.setattr(embedder_module, "tqdm", RecordingBar)
    make_embedder(views=["x20", "x5"], colors=["rgb", "gray"], verbose=1, batch_size=4).fit(frame).transform(frame)
    assert bars == [(6 * 4, 6 * 4, "img")]  # 6 samples x 4 views: img/s is the image rate


class RecordingStub(nn.Module):
    """A backbone that records the tensor it is fed."""

    def __init__(self):
        super().__init__()
        self.scale = nn.Parameter(torch.ones(1))
        self.inputs = []

    def forward(self, x):
        self.inputs.append(x.detach().clone())
        return x.mean(dim=(2, 3)) * self.scale


def test_backbone_input_is_normalised_with_mean_and_std():
    pixel = np.array([10, 128, 250], np.uint8)
    X = np.broadcast_to(pixel, (2, SIZE, SIZE, 3)).copy()
    emb = BackboneEmbedder(RecordingStub(), image_size=SIZE, precision="fp32", device="cpu", verbose=0).fit(X)
    emb.module_.inputs.clear()  # drop fit's probe
    emb.transform(X)
    (x,) = emb.module_.inputs
    mean, std = np.array(emb.data_config_["mean"]), np.array(emb.data_config_["std"])
    assert not np.allclose(std, 1.0) and not np.allclose(mean, 0.0)
    expected = (pixel / 255.0 - mean) / std  # by hand, per channel
    assert tuple(x.shape) == (2, 3, SIZE, SIZE)
    np.testing.assert_allclose(x.numpy(), np.broadcast_to(expected[None, :, None, None], x.shape), rtol=0, atol=1e-5)


def test_workers_give_same_result(tmp_path, images):
    paths = []
    for i, im in enumerate(images):
        paths.append(str(tmp_path / f"im{i}.png"))
        Image.fromarray(im).save(paths[-1])
    emb = make_embedder(batch_size=2).fit(paths)
    np.testing.assert_array_equal(emb.transform(paths), emb.set_params(num_workers=2).transform(paths))


def test_batches_are_collated_without_torchs_threaded_copy(frame, monkeypatch):
    # torch.stack stalls for a scheduler slice per parallel region on a busy CPU (stack_samples' docstring).
    emb = make_embedder(views=["x20"], colors=["rgb", "gray"], batch_size=4).fit(frame)
    ds = emb.view_dataset({"x20": frame["x20"].tolist()})
    items = [ds[k] for k in range(3)]
    expected_batch = torch.stack(items)
    expected = emb.transform(frame)

    def refuse(*args, **kwargs):
        raise AssertionError("torch.stack called while embedding")

    monkeypatch.setattr(torch, "stack", refuse)
    batch = embedder_module.stack_samples(items)
    assert batch.dtype == torch.uint8 and tuple(batch.shape) == (3, 2, SIZE, SIZE, 3)
    np.testing.assert_array_equal(batch.numpy(), expected_batch.numpy())
    np.testing.assert_array_equal(emb.transform(frame), expected)


def test_mixed_sizes_are_resized_per_image_but_refused_by_resize_none(images):
    mixed = [images[0], np.ascontiguousarray(images[1][:20, :28])]
    emb = make_embedder().fit(mixed)
    Z = emb.transform(mixed)
    assert Z.shape == (2, 512)
    with pytest.raises(ValueError, match=r"sample 1.*20x28.*resize='none'"):
        make_embedder(resize="none").fit(mixed).transform(mixed)


# ----------------------------------------------------------------- bad input
@pytest.mark.parametrize(
    "X, match",
    [
        (np.zeros((4, SIZE, SIZE), np.uint8), r"shape \(4, 32, 32\)"),
        (np.zeros((4, SIZE, SIZE, 4), np.uint8), r"\(n_samples, height, width, 3\)"),
        (np.zeros((0, SIZE, SIZE, 3), np.uint8), "empty"),
        ([], "empty"),
        (pd.DataFrame({"x20": []}), "empty"),
        ("one_image.png", "single path"),
    ],
)
def test_bad_input_shapes_raise_clear_errors(X, match):
    with pytest.raises(ValueError, match=match):
        make_embedder().fit(X).transform(X)


def test_nan_and_out_of_range_float_images_are_refused(images):
    bad = images.astype(np.float32) / 255
    bad[2, 0, 0, 0] = np.nan
    emb = make_embedder().fit(images)
    with pytest.raises(ImageReadError, match="sample 2.*NaN"):
        emb.transform(bad)
    with pytest.raises(ImageReadError, match=r"\[0, 1\]"):
        emb.transform(images.astype(np.float32))
    ok = emb.transform(images.astype(np.float32) / 255)
    np.testing.assert_allclose(ok, emb.transform(images), atol=1e-5)


def test_missing_and_unreadable_files_are_named(tmp_path, images):
    emb = make_embedder().fit(images)
    missing = tmp_path / "nope.png"
    with pytest.raises(ImageReadError, match="not found: .*nope.png"):
        emb.transform([str(missing)])
    broken = tmp_path / "broken.png"
    broken.write_text("not an image")
    with pytest.raises(ImageReadError, match="broken.png"):
        emb.transform([str(broken)])


def test_unknown_views_and_missing_sources(frame):
    with pytest.raises(ValueError, match=r"\['x40'\] not found.*\['x20', 'x5'\]"):
        make_embedder(views=["x40"]).fit(frame)
    emb = make_embedder().fit(frame)
    with pytest.raises(ValueError, match=r"lacks the source columns \['x5'\]"):
        emb.transform(frame[["x20"]])
    with pytest.raises(ValueError, match="unknown colors"):
        make_embedder(colors=["hsv"]).fit(frame)


def test_invalid_parameters_raise_at_fit(images):
    with pytest.raises(InvalidParameterError, match="precision"):
        make_embedder(precision="int8").fit(images)
    with pytest.raises(InvalidParameterError, match="resize"):
        make_embedder(resize="squash").fit(images)
    emb = make_embedder(precision="int8")  # __init__ stores, never validates
    assert emb.precision == "int8"


def test_unpooled_backbone_is_refused(images):
    class Spatial(torch.nn.Module):
        def forward(self, x):
            return x

    with pytest.raises(ValueError, match=r"pooled \(n, dim\)"):
        make_embedder(backbone=Spatial()).fit(images)


def test_clones_share_one_frozen_backbone_and_random_state_changes_it(images):
    a = make_embedder().fit(images)
    b = clone(a).fit(images)
    assert b.module_ is a.module_, "refitting a clone must not rebuild the backbone"
    other = make_embedder(random_state=1).fit(images)
    assert other.module_ is not a.module_
    assert not np.allclose(other.transform(images), a.transform(images))
    assert b.get_params() == a.get_params() and b.embedding_dim_ == a.embedding_dim_


# ----------------------------------------------------------- extraction protocol
class Rows:
    """A lazy sequence that records which rows were read."""

    def __init__(self, images):
        self.images, self.read = images, []

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        self.read.append(int(i))
        return self.images[i]


def test_embed_rows_embeds_exactly_the_requested_rows_in_order(frame, capsys):
    emb = make_embedder(colors=["rgb", "gray"], verbose=1).fit(frame)
    full = emb.transform(frame)
    capsys.readouterr()
    x20 = Rows(np.stack(frame["x20"]))
    sources = {"x20": x20, "x5": frame["x5"].tolist(), "unused": [None] * 6}
    rows = emb.embed_rows(sources, [4, 1, 4], verbose=0)
    assert rows.shape == (3, full.shape[1]) and rows.dtype == np.float32
    np.testing.assert_allclose(rows, full[[4, 1, 4]], rtol=1e-5, atol=1e-5)
    assert sorted(x20.read) == [1, 4, 4]  # only those rows were read, each file once per request
    assert capsys.readouterr().err == ""  # verbose=0 overrides the parameter for this call
    np.testing.assert_allclose(emb.embed_rows(sources), full, rtol=1e-5, atol=1e-5)
    assert emb.embed_rows(sources, []).shape == (0, full.shape[1])
    with pytest.raises(ValueError, match=r"lacks the source columns \['x5'\]"):
        emb.embed_rows({"x20": x20}, [0])
    with pytest.raises(ValueError, match="1-D array of row numbers"):
        emb.embed_rows(sources, [[0, 1]])
    with pytest.raises(TypeError, match="map source names"):
        emb.check_sources(["x20", "x5"])


def test_view_dataset_is_what_embed_rows_feeds_the_backbone(frame):
    emb = make_embedder(views=["x5"], colors=["rgb", "gray"]).fit(frame)
    sources = {"x5": frame["x5"].tolist()}
    ds = emb.view_dataset(sources, [2, 0])
    item = ds[0]
    assert len(ds) == 2 and item.dtype == torch.uint8 and tuple(item.shape) == (2, SIZE, SIZE, 3)
    np.testing.assert_array_equal(item[0].numpy(), frame["x5"].iloc[2])  # same size: no resize
    np.testing.assert_array_equal(item[1].numpy(), to_gray(frame["x5"].iloc[2]))
    # Normalised as documented, the items give embed_rows' output.
    mean = torch.tensor(emb.data_config_["mean"]).view(1, 3, 1, 1) * 255.0
    std = torch.tensor(emb.data_config_["std"]).view(1, 3, 1, 1) * 255.0
    x = (torch.stack([ds[0], ds[1]]).flatten(0, 1).permute(0, 3, 1, 2).float() - mean) / std
    with torch.inference_mode():
        manual = emb.module_.cpu()(x).reshape(2, -1).numpy()
    np.testing.assert_allclose(manual, emb.embed_rows(sources, [2, 0]), rtol=1e-4, atol=1e-4)


def test_embedding_signature_is_json_and_names_what_changes_the_numbers(images):
    import json

    emb = make_embedder().fit(images)
    signature = emb.embedding_signature()
    assert json.loads(json.dumps(signature)) == signature
    assert signature["backbone"] == "resnet18" and signature["input_size"] == [SIZE, SIZE]
    assert signature["precision"] == "fp32" and signature["embedding_dim"] == 512
    assert len(signature["weights"]) == 64
    other = make_embedder(random_state=1).fit(images).embedding_signature()
    assert {k for k in signature if signature[k] != other[k]} == {"weights"}
