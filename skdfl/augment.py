"""Image-space augmentations embedded once: the augmentation bank and test-time averaging.

``BackboneEmbedder(augmentations=...)`` embeds every image under K augmentations and returns them
side by side, **augmentation-major**::

    X[:, k * D : (k + 1) * D]   augmentation k (block 0 = "identity", the plain embedding),
                                D = len(views_) * embedding_dim_, views in their usual order

so ``X.reshape(n, K, D)`` (:func:`bank_blocks`) gives the ``(n_samples, n_draws, n_features)`` bank a head
draws from (one augmentation per sample per epoch), and the mean over blocks (:func:`average_blocks`) is
test-time augmentation. Columns are named ``<augmentation>_<source>_<color>_<k>``.

Augmentations (names for ``augmentations=``)
--------------------------------------------
``"identity"``
    The image as is; always block 0 (added if not given).
``"rot90"``, ``"rot180"``, ``"rot270"``, ``"flip_h"``, ``"flip_v"``, ``"transpose"``, ``"transverse"``
    The 7 other elements of the dihedral group of the square: exact for histology (a slide has no
    "up"), no interpolation. ``"dihedral"`` expands to all 8 (identity first). Quarter turns and the two
    transposes need a square input size.
``"hed_jitter"``
    H&E stain jitter (Tellez et al., 2018/2019): the optical densities are unmixed into hematoxylin, eosin
    and DAB with Ruifrok & Johnston's matrix (:mod:`skdfl.stain`), each channel becomes
    ``c * a + b`` with ``a ~ U(1 - HED_SCALE, 1 + HED_SCALE)``, ``b ~ U(-HED_SHIFT, HED_SHIFT)`` (optical
    density units), and the image is remixed.
``"scale_jitter"``
    Zoom about the centre by ``s = exp(u * log(1 + SCALE_JITTER))``, ``u ~ U(-1, 1)`` (bicubic affine
    zoom, same size; the border is filled by reflection when ``s < 1``).
``"random"``
    A random dihedral element, HED jitter and scale jitter together (one draw).

Random augmentations can be repeated (``["dihedral", "random", "random"]``): repeats are distinct draws,
labelled ``random``, ``random2``, ... Each draw is seeded by ``random_state``, its label and the pixels of
the image (after geometry), so the same image always gets the same augmented version: transform is
deterministic and every (image, colour, augmentation) is one cache entry.

Order of operations per image: read, geometry (resize/pad to the input size), augmentation, colour
(``rgb``/``gray``/stain normalisation). A stain-normalised colour therefore largely undoes an HED jitter
(that is what it is for); dihedral transforms commute with every colour.

Cost: K augmentations cost K times the extraction (reading and decoding are shared), once: with
``cache=`` every (image, colour, augmentation) is stored, so later fits, folds and searches embed nothing.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import numpy as np
from PIL import Image

from .stain import RUIFROK_HED_FROM_STAINS, RUIFROK_STAINS_FROM_RGB_OD

DIHEDRAL = ("identity", "rot90", "rot180", "rot270", "flip_h", "flip_v", "transpose", "transverse")
RANDOM_AUGMENTATIONS = ("hed_jitter", "scale_jitter", "random")
AUGMENTATIONS = DIHEDRAL + RANDOM_AUGMENTATIONS
# Dihedral elements that swap height and width.
_SWAP_AXES = ("rot90", "rot270", "transpose", "transverse")

#: HED jitter: half-width of the multiplicative factor and of the additive shift (optical density).
HED_SCALE = 0.05
HED_SHIFT = 0.05
#: Scale jitter: zoom factors in ``[1 / (1 + SCALE_JITTER), 1 + SCALE_JITTER]``.
SCALE_JITTER = 0.1


def resolve_augmentations(augmentations) -> list[str]:
    """Labels of the augmentation blocks, in output order: ``"identity"`` first, repeats numbered.

    ``None`` is ``["identity"]`` (no augmentation); ``"dihedral"`` (alone or in a list) expands to the 8
    elements of :data:`DIHEDRAL`.
    """
    if augmentations is None:
        return ["identity"]
    names = [augmentations] if isinstance(augmentations, str) else list(augmentations)
    expanded: list[str] = []
    for name in names:
        if not isinstance(name, str):
            raise TypeError(f"augmentations must be names (str), got {name!r}")
        expanded.extend(DIHEDRAL if name == "dihedral" else [name])
    unknown = sorted({n for n in expanded if n not in AUGMENTATIONS})
    if unknown:
        raise ValueError(f"unknown augmentations {unknown}; choose from {['dihedral', *AUGMENTATIONS]}")
    labels = ["identity"]
    counts: dict[str, int] = {}
    for name in expanded:
        if name == "identity":
            continue
        counts[name] = counts.get(name, 0) + 1
        if name in DIHEDRAL and counts[name] > 1:
            raise ValueError(f"augmentation {name!r} is given twice; it is deterministic, a repeat adds nothing")
        labels.append(name if counts[name] == 1 else f"{name}{counts[name]}")
    return labels


def augmentation_name(label: str) -> str:
    """The augmentation behind a block label (``"random2"`` -> ``"random"``, ``"rot90"`` -> ``"rot90"``)."""
    return label if label in AUGMENTATIONS else label.rstrip("0123456789")


def check_augmentations(labels: Sequence[str], size: tuple[int, int]) -> None:
    """Raise a ``ValueError`` if a label needs a square input and ``size = (H, W)`` is not square."""
    swapping = [lbl for lbl in labels if augmentation_name(lbl) in (*_SWAP_AXES, "random")]
    if swapping and size[0] != size[1]:
        raise ValueError(
            f"augmentations {swapping} turn the image by 90 degrees and need a square input size; "
            f"image_size is {size[0]}x{size[1]}"
        )


def augmentation_key(label: str, random_state: int) -> str:
    """The part of an embedding's cache key that identifies augmentation ``label`` ("" for identity)."""
    name = augmentation_name(label)
    if name == "identity":
        return ""
    if name in DIHEDRAL:
        return label
    return f"{label}@{random_state}:hed={HED_SCALE},{HED_SHIFT}:scale={SCALE_JITTER}"


def dihedral(img: np.ndarray, name: str) -> np.ndarray:
    """Element ``name`` of :data:`DIHEDRAL` applied to an ``(H, W, C)`` image (a contiguous copy)."""
    ops = {
        "identity": lambda a: a,
        "rot90": lambda a: np.rot90(a, 1),
        "rot180": lambda a: np.rot90(a, 2),
        "rot270": lambda a: np.rot90(a, 3),
        "flip_h": lambda a: a[:, ::-1],
        "flip_v": lambda a: a[::-1],
        "transpose": lambda a: a.transpose(1, 0, 2),
        "transverse": lambda a: np.rot90(a, 2).transpose(1, 0, 2),
    }
    return np.ascontiguousarray(ops[name](img))


def hed_jitter(img: np.ndarray, rng: np.random.Generator, scale=HED_SCALE, shift=HED_SHIFT) -> np.ndarray:
    """Random H&E(&DAB) stain jitter of an RGB uint8 image (see the module docstring)."""
    density = -np.log((img.astype(np.float64) + 1.0) / 256.0)
    stains = density @ RUIFROK_STAINS_FROM_RGB_OD
    stains = stains * rng.uniform(1 - scale, 1 + scale, 3) + rng.uniform(-shift, shift, 3)
    out = 256.0 * np.exp(-(stains @ RUIFROK_HED_FROM_STAINS)) - 1.0
    return np.rint(np.clip(out, 0, 255)).astype(np.uint8)


def scale_jitter(img: np.ndarray, rng: np.random.Generator, amount=SCALE_JITTER) -> np.ndarray:
    """Zoom an RGB uint8 image about its centre by a random factor, keeping its size.

    An exact affine zoom (bicubic) of the image padded by reflection, so small images get the drawn
    factor too (resizing to a rounded size would leave a 32-pixel tile unchanged for factors within 1.5%).
    """
    h, w = img.shape[:2]
    factor = float(np.exp(rng.uniform(-1, 1) * np.log1p(amount)))
    pad = int(np.ceil(max(h, w) * amount)) + 2
    padded = np.pad(img, ((pad, pad), (pad, pad), (0, 0)), mode="symmetric")
    # Output pixel x samples the padded input at (x - w/2) / factor + w/2 + pad: a zoom about the centre.
    affine = (1 / factor, 0.0, pad + w / 2 * (1 - 1 / factor), 0.0, 1 / factor, pad + h / 2 * (1 - 1 / factor))
    out = Image.fromarray(padded).transform((w, h), Image.Transform.AFFINE, affine, Image.Resampling.BICUBIC)
    return np.asarray(out)


def augment(img: np.ndarray, label: str, random_state: int = 0) -> np.ndarray:
    """Augmentation ``label`` (a block label of :func:`resolve_augmentations`) of an RGB uint8 image.

    Random augmentations are seeded by ``random_state``, ``label`` and the image's pixels: deterministic.
    """
    name = augmentation_name(label)
    if name in DIHEDRAL:
        return dihedral(img, name)
    digest = hashlib.sha256(f"{random_state}|{label}|{img.shape}|".encode())
    digest.update(memoryview(np.ascontiguousarray(img)).cast("B"))
    rng = np.random.default_rng(int.from_bytes(digest.digest()[:8], "little"))
    if name == "hed_jitter":
        return hed_jitter(img, rng)
    if name == "scale_jitter":
        return scale_jitter(img, rng)
    if name == "random":
        img = dihedral(img, DIHEDRAL[rng.integers(len(DIHEDRAL))])
        return scale_jitter(hed_jitter(img, rng), rng)
    raise ValueError(f"unknown augmentation {label!r}; choose from {list(AUGMENTATIONS)}")


def bank_blocks(X, n_augmentations: int) -> np.ndarray:
    """``(n, K * D)`` augmentation-major embeddings -> the ``(n, K, D)`` bank (a view, no copy)."""
    X = np.asarray(X)
    if X.ndim != 2 or n_augmentations < 1 or X.shape[1] % n_augmentations:
        raise ValueError(
            f"X of shape {X.shape} does not split into {n_augmentations} augmentation blocks of equal width"
        )
    return X.reshape(X.shape[0], n_augmentations, X.shape[1] // n_augmentations)


def average_blocks(X, n_augmentations: int, blocks: Sequence[int] | None = None) -> np.ndarray:
    """Test-time augmentation: the mean of augmentation blocks ``blocks`` (default all), shape ``(n, D)``."""
    bank = bank_blocks(X, n_augmentations)
    if blocks is not None:
        bank = bank[:, list(blocks)]
    return bank.mean(axis=1)


__all__ = [
    "AUGMENTATIONS",
    "DIHEDRAL",
    "HED_SCALE",
    "HED_SHIFT",
    "RANDOM_AUGMENTATIONS",
    "SCALE_JITTER",
    "augment",
    "augmentation_key",
    "augmentation_name",
    "average_blocks",
    "bank_blocks",
    "check_augmentations",
    "dihedral",
    "hed_jitter",
    "resolve_augmentations",
    "scale_jitter",
]
