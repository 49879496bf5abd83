"""H&E stain normalisation (Macenko, Reinhard) and the optical-density / HED conversions behind it.

Both normalisers map one RGB uint8 image to another, deterministically and independently of any other
image, so a normalised image can be used as a *colour* of a view (``colors=["rgb", "macenko"]`` on
:class:`~skdfl.BackboneEmbedder`) and cached by content like any view.

:class:`MacenkoNormalizer`
    Macenko et al., "A method for normalizing histology slides for quantitative analysis", ISBI 2009:
    estimate the image's two stain vectors in optical-density space (the plane of the two main principal
    axes, extreme angles at the ``alpha`` / ``100 - alpha`` percentiles), unmix the concentrations, scale
    their 99th percentiles to the reference's and remix with the reference stain matrix. Default
    reference: :data:`MACENKO_STAIN_MATRIX` and :data:`MACENKO_MAX_CONCENTRATIONS`, the values of the
    original implementation (M. Macenko's MATLAB code as published by mitkovetta/staining-normalization),
    also the defaults of HEnorm_python and torchstain.
:class:`ReinhardNormalizer`
    Reinhard et al., "Color transfer between images", 2001: match the per-channel mean and standard
    deviation in Ruderman's lαβ space. Default target: :data:`REINHARD_TARGET_MEANS` /
    :data:`REINHARD_TARGET_STDS`, the "colour normalisation standard" of HistomicsTK (measured on the
    TCGA-A2-A3XS-DX1 region of Amgad et al., Bioinformatics 2019), in HistomicsTK's lαβ convention (natural
    log of LMS computed from 0-255 RGB).

Set another reference with ``fit(reference_image)`` (or ``stain_reference=`` on the embedder).

Why not torchstain: its numpy backend (the same algorithms, numpy-only) fails on tiles without tissue
(an empty covariance gives NaN or a ``LinAlgError``; a uniform tile divides by a zero standard deviation),
has no default Reinhard target, adds 1 to every pixel on the Macenko round trip and its checks would need
its name-mangled internals. Background-only tiles are common in histology, so skdfl carries its own
~150 lines, tested against the published reference values (``tests/test_stain.py``).
"""

from __future__ import annotations

import hashlib

import numpy as np

#: Reference H&E stain matrix of Macenko's original implementation: columns are the optical-density
#: directions (R, G, B) of hematoxylin and eosin.
MACENKO_STAIN_MATRIX = np.array([[0.5626, 0.2159], [0.7201, 0.8012], [0.4062, 0.5581]])
#: 99th-percentile concentrations of hematoxylin and eosin in that reference.
MACENKO_MAX_CONCENTRATIONS = np.array([1.9705, 1.0308])

#: HistomicsTK's standard Reinhard target (lαβ mean and standard deviation of TCGA-A2-A3XS-DX1).
REINHARD_TARGET_MEANS = np.array([8.74108109, -0.12440419, 0.0444982])
REINHARD_TARGET_STDS = np.array([0.6135447, 0.10989545, 0.0286032])

#: Ruifrok & Johnston's stain vectors (rows: hematoxylin, eosin, DAB), the matrix of ``skimage.color.rgb2hed``.
RUIFROK_HED_FROM_STAINS = np.array([[0.65, 0.70, 0.29], [0.07, 0.99, 0.11], [0.27, 0.57, 0.78]])
RUIFROK_HED_FROM_STAINS = RUIFROK_HED_FROM_STAINS / np.linalg.norm(RUIFROK_HED_FROM_STAINS, axis=1, keepdims=True)
RUIFROK_STAINS_FROM_RGB_OD = np.linalg.inv(RUIFROK_HED_FROM_STAINS)

STAIN_COLORS = ("macenko", "reinhard")

# Ruderman's lαβ (HistomicsTK's convention).
_RGB_TO_LMS = np.array([[0.3811, 0.5783, 0.0402], [0.1967, 0.7244, 0.0782], [0.0241, 0.1288, 0.8444]])
_LMS_TO_LAB = np.diag([1 / np.sqrt(3), 1 / np.sqrt(6), 1 / np.sqrt(2)]) @ np.array(
    [[1.0, 1.0, 1.0], [1.0, 1.0, -2.0], [1.0, -1.0, 0.0]]
)
_LMS_TO_RGB = np.linalg.inv(_RGB_TO_LMS)
_LAB_TO_LMS = np.linalg.inv(_LMS_TO_LAB)
# LMS of a pure black pixel is 0; HistomicsTK takes log(machine epsilon) = -36 there, which lets a few black
# pixels dominate the statistics. Below this floor a pixel is black anyway (one 8-bit level is ~0.02).
_LMS_FLOOR = 1e-2


def _check_image(image, what: str = "image") -> np.ndarray:
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[-1] != 3:
        raise ValueError(f"{what} must be an RGB array of shape (H, W, 3), got shape {image.shape}")
    if image.dtype != np.uint8:
        raise ValueError(f"{what} must be uint8 (0-255), got {image.dtype}")
    return image


def _to_uint8(values: np.ndarray) -> np.ndarray:
    return np.rint(np.clip(values, 0, 255)).astype(np.uint8)


def _digest(*arrays) -> str:
    h = hashlib.sha256()
    for a in arrays:
        # Rounded so that a reference re-estimated on another BLAS gives the same cache keys.
        h.update(np.round(np.asarray(a, dtype=np.float64), 6).tobytes())
    return h.hexdigest()[:16]


def rgb_to_optical_density(image: np.ndarray, intensity: float = 255.0) -> np.ndarray:
    """``-log((I + 1) / intensity)`` per channel of an RGB uint8 image (float64, same shape)."""
    return -np.log((np.asarray(image, dtype=np.float64) + 1.0) / intensity)


def optical_density_to_rgb(density: np.ndarray, intensity: float = 255.0) -> np.ndarray:
    """Inverse of :func:`rgb_to_optical_density`, rounded and clipped to uint8."""
    return _to_uint8(intensity * np.exp(-density) - 1.0)


def rgb_to_hed(image: np.ndarray) -> np.ndarray:
    """Hematoxylin, eosin and DAB optical densities of an RGB uint8 image (Ruifrok & Johnston, 2001)."""
    return rgb_to_optical_density(_check_image(image), 256.0) @ RUIFROK_STAINS_FROM_RGB_OD


def hed_to_rgb(hed: np.ndarray) -> np.ndarray:
    """Inverse of :func:`rgb_to_hed` (uint8)."""
    return optical_density_to_rgb(np.asarray(hed) @ RUIFROK_HED_FROM_STAINS, 256.0)


def rgb_to_lab(image: np.ndarray) -> np.ndarray:
    """Ruderman's lαβ of an RGB image with 0-255 values (HistomicsTK's ``rgb_to_lab``), float64."""
    lms = np.asarray(image, dtype=np.float64) @ _RGB_TO_LMS.T
    return np.log(np.maximum(lms, _LMS_FLOOR)) @ _LMS_TO_LAB.T


def lab_to_rgb(lab: np.ndarray) -> np.ndarray:
    """Inverse of :func:`rgb_to_lab`, rounded and clipped to uint8."""
    return _to_uint8(np.exp(np.asarray(lab) @ _LAB_TO_LMS.T) @ _LMS_TO_RGB.T)


class MacenkoNormalizer:
    """Macenko stain normalisation of RGB uint8 images (see the module docstring).

    Parameters
    ----------
    intensity : float, default=240
        Transmitted light intensity ``Io`` of the optical density ``-log((I + 1) / Io)`` (the original's 240).
    alpha : float, default=1
        Percentile of the extreme stain angles (robust minimum / maximum).
    beta : float, default=0.15
        Optical-density threshold below which (in any channel) a pixel is background, not tissue.
    min_tissue : float, default=0.01
        Fraction of tissue pixels (and at least 16) below which an image is left unchanged: a background
        tile has no stain to estimate.

    Attributes
    ----------
    stain_matrix_ : ndarray of shape (3, 2)
        Reference stain vectors (hematoxylin, eosin); :data:`MACENKO_STAIN_MATRIX` until :meth:`fit`.
    max_concentrations_ : ndarray of shape (2,)
        Reference 99th-percentile concentrations; :data:`MACENKO_MAX_CONCENTRATIONS` until :meth:`fit`.
    """

    name = "macenko"

    def __init__(self, *, intensity=240.0, alpha=1.0, beta=0.15, min_tissue=0.01):
        self.intensity = intensity
        self.alpha = alpha
        self.beta = beta
        self.min_tissue = min_tissue
        self.stain_matrix_ = MACENKO_STAIN_MATRIX.copy()
        self.max_concentrations_ = MACENKO_MAX_CONCENTRATIONS.copy()

    def __repr__(self) -> str:
        return f"MacenkoNormalizer(reference={self.fingerprint()})"

    def estimate(self, image) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
        """Stain matrix ``(3, 2)``, concentrations ``(2, H*W)`` and their 99th percentiles of ``image``.

        ``None`` when the image has too little tissue to estimate stains from.
        """
        image = _check_image(image)
        density = rgb_to_optical_density(image.reshape(-1, 3), self.intensity)
        tissue = density[(density >= self.beta).all(axis=1)]
        if len(tissue) < max(16, self.min_tissue * len(density)):
            return None
        _, vectors = np.linalg.eigh(np.cov(tissue.T))
        plane = vectors[:, 1:3]
        # eigh's sign is arbitrary (LAPACK-dependent); fix it so that the estimate is deterministic.
        plane = plane * np.where(plane[0] < 0, -1.0, 1.0)
        projected = tissue @ plane
        angles = np.arctan2(projected[:, 1], projected[:, 0])
        low, high = np.percentile(angles, [self.alpha, 100 - self.alpha])
        v_low = plane @ np.array([np.cos(low), np.sin(low)])
        v_high = plane @ np.array([np.cos(high), np.sin(high)])
        # Hematoxylin is the vector with the larger red optical density.
        stains = np.stack([v_low, v_high] if v_low[0] > v_high[0] else [v_high, v_low], axis=1)
        stains = stains * np.where(stains.sum(axis=0) < 0, -1.0, 1.0)
        # Least squares through the 2x3 pseudo-inverse: 6x faster than lstsq over every pixel, same result.
        concentrations = np.linalg.pinv(stains) @ density.T
        max_concentrations = np.percentile(concentrations, 99, axis=1)
        if not np.all(np.isfinite(stains)) or np.any(max_concentrations <= 1e-6):
            return None
        return stains, concentrations, max_concentrations

    def fit(self, image):
        """Take the reference stain matrix and maximum concentrations from ``image``."""
        estimate = self.estimate(image)
        if estimate is None:
            raise ValueError(
                "the Macenko reference image has too little tissue (optical density >= beta in every "
                f"channel on at least {self.min_tissue:.0%} of its pixels) to estimate its stains"
            )
        self.stain_matrix_, _, self.max_concentrations_ = estimate
        return self

    def transform(self, image) -> np.ndarray:
        """The image restained with the reference (uint8); images without tissue are returned unchanged."""
        image = _check_image(image)
        estimate = self.estimate(image)
        if estimate is None:
            return image
        _, concentrations, max_concentrations = estimate
        concentrations = concentrations * (self.max_concentrations_ / max_concentrations)[:, None]
        density = (self.stain_matrix_ @ concentrations).T.reshape(image.shape)
        return optical_density_to_rgb(density, self.intensity)

    def fingerprint(self) -> str:
        """16 hex digits identifying the reference and parameters (part of the embedding cache key)."""
        return _digest(self.stain_matrix_, self.max_concentrations_,
                       [self.intensity, self.alpha, self.beta, self.min_tissue])


class ReinhardNormalizer:
    """Reinhard colour transfer in Ruderman's lαβ space (see the module docstring).

    Every pixel, background included, enters the image's statistics (as in HistomicsTK without a mask).
    A channel with no spread (a uniform image) is shifted, not scaled, so no NaN can arise.

    Attributes
    ----------
    means_, stds_ : ndarray of shape (3,)
        Target lαβ statistics; :data:`REINHARD_TARGET_MEANS` / :data:`REINHARD_TARGET_STDS` until :meth:`fit`.
    """

    name = "reinhard"

    def __init__(self):
        self.means_ = REINHARD_TARGET_MEANS.copy()
        self.stds_ = REINHARD_TARGET_STDS.copy()

    def __repr__(self) -> str:
        return f"ReinhardNormalizer(reference={self.fingerprint()})"

    @staticmethod
    def statistics(image) -> tuple[np.ndarray, np.ndarray]:
        """Per-channel lαβ mean and standard deviation of ``image``."""
        lab = rgb_to_lab(_check_image(image)).reshape(-1, 3)
        return lab.mean(axis=0), lab.std(axis=0)

    def fit(self, image):
        """Take the target lαβ statistics from ``image``."""
        self.means_, self.stds_ = self.statistics(image)
        return self

    def transform(self, image) -> np.ndarray:
        """The image with the target's lαβ mean and standard deviation (uint8)."""
        image = _check_image(image)
        lab = rgb_to_lab(image)
        means = lab.reshape(-1, 3).mean(axis=0)
        stds = lab.reshape(-1, 3).std(axis=0)
        scale = np.where(stds > 1e-8, self.stds_ / np.maximum(stds, 1e-8), 1.0)
        return lab_to_rgb((lab - means) * scale + self.means_)

    def fingerprint(self) -> str:
        """16 hex digits identifying the target statistics (part of the embedding cache key)."""
        return _digest(self.means_, self.stds_)


_NORMALIZERS = {"macenko": MacenkoNormalizer, "reinhard": ReinhardNormalizer}


def make_stain_normalizers(reference=None, colors=STAIN_COLORS) -> dict:
    """``{colour: normaliser}`` for the stain colours in ``colors``, fitted on ``reference`` if given.

    ``reference`` is an RGB uint8 image; ``None`` keeps the published default references.
    """
    normalizers = {}
    for color in colors:
        if color in _NORMALIZERS:
            normalizer = _NORMALIZERS[color]()
            normalizers[color] = normalizer if reference is None else normalizer.fit(reference)
    return normalizers


__all__ = [
    "MACENKO_MAX_CONCENTRATIONS",
    "MACENKO_STAIN_MATRIX",
    "REINHARD_TARGET_MEANS",
    "REINHARD_TARGET_STDS",
    "RUIFROK_HED_FROM_STAINS",
    "RUIFROK_STAINS_FROM_RGB_OD",
    "STAIN_COLORS",
    "MacenkoNormalizer",
    "ReinhardNormalizer",
    "hed_to_rgb",
    "lab_to_rgb",
    "make_stain_normalizers",
    "optical_density_to_rgb",
    "rgb_to_hed",
    "rgb_to_lab",
    "rgb_to_optical_density",
]
