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
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
from PIL import Image

RESIZE_POLICIES = ("pad", "stretch", "crop", "none")
PAD_VALUE = 255

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
