"""Geometry and normalisation: from an RGB uint8 image of any size to the backbone's input tensor.

Resize policies (``resize=`` on :class:`~skdfl.BackboneEmbedder`):

``"pad"`` (default)
    Scale preserving the aspect ratio so the image fits the input size, then pad the rest with white
    (the glass background of an H&E slide). No distortion, nothing cut off. With ``scale=s`` the image is
    scaled by ``s`` instead of "to fit" (e.g. the paper's 50x50 mitosis crops rendered at 2x and padded
    into 224x224), and cropped centrally only if it would overflow.
``"stretch"``
    Resize straight to the input size (what Keras' ``image_dataset_from_directory`` does); distorts
    non-square images.
``"crop"``
    timm's evaluation transform itself (``timm.data.create_transform(is_training=False)``, crop mode
    ``"center"``): resize the shorter side to ``floor(size / crop_pct)`` (the longer side truncated, as
    torchvision's ``Resize`` does), then centre-crop. The pixels are timm's for the backbone's
    ``crop_pct`` and interpolation (before normalisation).
``"none"``
    No geometry; every image must already have the input size (an error names the first that does not).

Normalisation with the backbone's mean/std happens on the device, batched, in the embedder.

:func:`fit_geometry` works on one uint8 array on the CPU (Pillow's resize); :func:`fit_geometry_tensors` is
its counterpart for images already on a device (JPEGs decoded by nvJPEG), for ``"pad"`` and ``"stretch"``
with bilinear or bicubic interpolation (:data:`TENSOR_INTERPOLATIONS`): torch's antialiased resize uses
Pillow's kernels (bicubic ``a = -0.5``, support widened when shrinking), so the two agree within rounding
(tolerances in ``tests/test_device_decode.py``).
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

RESIZE_POLICIES = ("pad", "stretch", "crop", "none")
PAD_VALUE = 255
#: Resize policies and interpolations :func:`fit_geometry_tensors` implements.
TENSOR_POLICIES = ("pad", "stretch")
TENSOR_INTERPOLATIONS = ("bilinear", "bicubic")
# fit_geometry_tensors converts at most this many values to float at once (256 MB).
MAX_TENSOR_ELEMENTS = 2**26

_PIL_FILTERS = {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "lanczos": Image.Resampling.LANCZOS,
    "box": Image.Resampling.BOX,
    "hamming": Image.Resampling.HAMMING,
}


def _resize(img: np.ndarray, width: int, height: int, interpolation: str) -> np.ndarray:
    if img.shape[1] == width and img.shape[0] == height:
        return img
    pil = Image.fromarray(img).resize((width, height), _PIL_FILTERS.get(interpolation, Image.Resampling.BICUBIC))
    return np.asarray(pil)


@lru_cache(maxsize=16)
def _timm_eval_geometry(size: tuple[int, int], crop_pct: float, interpolation: str):
    """timm's eval transform without normalisation: PIL image -> uint8 ``(3, H, W)`` tensor."""
    from timm.data import create_transform

    return create_transform(
        input_size=(3, *size),
        is_training=False,
        interpolation=interpolation,
        crop_pct=crop_pct,
        crop_mode="center",
        use_prefetcher=True,
    )


def _center_crop(img: np.ndarray, height: int, width: int) -> np.ndarray:
    top = max(0, (img.shape[0] - height) // 2)
    left = max(0, (img.shape[1] - width) // 2)
    return img[top : top + height, left : left + width]


def _pad_to(img: np.ndarray, height: int, width: int) -> np.ndarray:
    img = _center_crop(img, height, width)
    h, w = img.shape[:2]
    if (h, w) == (height, width):
        return img
    out = np.full((height, width, 3), PAD_VALUE, dtype=np.uint8)
    top, left = (height - h) // 2, (width - w) // 2
    out[top : top + h, left : left + w] = img
    return out


def fit_geometry(
    img: np.ndarray,
    size: tuple[int, int],
    policy: str = "pad",
    *,
    interpolation: str = "bicubic",
    crop_pct: float = 1.0,
    scale: float | None = None,
    where: str = "image",
) -> np.ndarray:
    """Bring an ``(h, w, 3)`` uint8 image to ``size = (H, W)`` under ``policy`` (see module docstring)."""
    height, width = size
    h, w = img.shape[:2]
    if policy == "stretch":
        return _resize(img, width, height, interpolation)
    if policy == "pad":
        factor = scale if scale is not None else min(height / h, width / w)
        new_h, new_w = max(1, round(h * factor)), max(1, round(w * factor))
        return _pad_to(_resize(img, new_w, new_h, interpolation), height, width)
    if policy == "crop":
        transform = _timm_eval_geometry((int(height), int(width)), float(crop_pct), interpolation)
        return np.ascontiguousarray(transform(Image.fromarray(img)).permute(1, 2, 0).numpy())
    if policy == "none":
        if (h, w) != (height, width):
            raise ValueError(
                f"{where} has size {h}x{w} but resize='none' requires the backbone input size "
                f"{height}x{width}; choose resize='pad', 'stretch' or 'crop'"
            )
        return img
    raise ValueError(f"unknown resize policy {policy!r}; choose from {RESIZE_POLICIES}")


def _target_size(h: int, w: int, size: tuple[int, int], policy: str, scale: float | None) -> tuple[int, int]:
    """The size :func:`fit_geometry` resizes an ``h x w`` image to before padding (``"pad"``) or as is."""
    height, width = size
    if policy == "stretch":
        return height, width
    factor = scale if scale is not None else min(height / h, width / w)
    return max(1, round(h * factor)), max(1, round(w * factor))


def fit_geometry_tensors(
    images: list[torch.Tensor],
    size: tuple[int, int],
    policy: str = "pad",
    *,
    interpolation: str = "bicubic",
    scale: float | None = None,
) -> torch.Tensor:
    """:func:`fit_geometry` for uint8 ``(3, h, w)`` tensors on any device: float ``(n, 3, H, W)``.

    Images of equal size are resized together (one kernel per distinct size). The values are rounded and
    clipped to ``[0, 255]`` as Pillow's uint8 output is, so a grey conversion or normalisation that follows
    sees the numbers the CPU path would. Only ``policy`` in :data:`TENSOR_POLICIES` and ``interpolation`` in
    :data:`TENSOR_INTERPOLATIONS`; anything else is a ``ValueError`` (use :func:`fit_geometry`).
    """
    if policy not in TENSOR_POLICIES:
        raise ValueError(f"fit_geometry_tensors supports resize policies {TENSOR_POLICIES}, got {policy!r}")
    if interpolation not in TENSOR_INTERPOLATIONS:
        raise ValueError(f"fit_geometry_tensors supports interpolations {TENSOR_INTERPOLATIONS}, got {interpolation!r}")
    height, width = size
    if not images:
        raise ValueError("fit_geometry_tensors needs at least one image")
    out = torch.full((len(images), 3, height, width), float(PAD_VALUE), device=images[0].device)
    by_size: dict[tuple[int, int], list[int]] = {}
    for k, img in enumerate(images):
        if img.ndim != 3 or img.shape[0] != 3:
            raise ValueError(f"image {k} has shape {tuple(img.shape)}; expected (3, h, w)")
        by_size.setdefault((int(img.shape[1]), int(img.shape[2])), []).append(k)
    for (h, w), same_size in by_size.items():
        new_h, new_w = _target_size(h, w, size, policy, scale)
        # Float copies of large images are made a few at a time: bounded memory whatever the batch.
        step = max(1, MAX_TENSOR_ELEMENTS // (3 * max(h * w, new_h * new_w)))
        for first in range(0, len(same_size), step):
            members = same_size[first : first + step]
            batch = torch.stack([images[k] for k in members]).float()
            if (new_h, new_w) != (h, w):
                batch = F.interpolate(batch, size=(new_h, new_w), mode=interpolation, antialias=True, align_corners=False)
                batch = batch.round_().clamp_(0, 255)
            # As _pad_to: centre-crop what overflows (a fixed pad scale), then centre in the padded canvas.
            top, left = max(0, (new_h - height) // 2), max(0, (new_w - width) // 2)
            batch = batch[:, :, top : top + height, left : left + width]
            h2, w2 = batch.shape[-2:]
            dst_top, dst_left = (height - h2) // 2, (width - w2) // 2
            out[members, :, dst_top : dst_top + h2, dst_left : dst_left + w2] = batch
    return out
