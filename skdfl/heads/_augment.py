"""Feature-space augmentation: perturbations of embeddings applied while a head trains, never at predict.

A frozen backbone's embeddings cannot be augmented in image space cheaply, so the DFL head sees perturbed
embeddings instead (Nivaggioli et al., §4.3 asks for "more refined ways than simple homogeneous gaussian
noise"). Three perturbations live here, each the identity in eval mode:

- :class:`GaussianNoise`: additive noise, optionally scaled per feature by the feature's training spread
  (so the noise level means the same thing whether or not the user standardised the embeddings);
- :class:`FeatureDropout`: drops whole input features, replacing them by their training mean;
- :func:`mixup_embeddings`: convex combinations of pairs of embeddings (Zhang et al., 2018), which the
  head's loss pairs with the same combination of the two labels.
"""

from __future__ import annotations

import functools

import torch
from torch import nn

__all__ = ["FeatureDropout", "GaussianNoise", "mixup_embeddings"]

# Relative ridge on the logit-space noise covariance (see GaussianNoise.through_linear).
_NOISE_RIDGE = 1e-5


@functools.lru_cache(maxsize=16)
def _identity(n: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    # One per (size, dtype, device), not a new one per training step: a measurable share of a small step.
    return torch.eye(n, dtype=dtype, device=device)


def _as_feature_vector(values, name):
    """``values`` as a 1-D float tensor in the default dtype (None stays None)."""
    if values is None:
        return None
    tensor = torch.as_tensor(values, dtype=torch.get_default_dtype()).detach().clone()
    if tensor.ndim not in (0, 1):
        raise ValueError(f"{name} must be a scalar or one value per feature, got shape {tuple(tensor.shape)}")
    if not bool(torch.isfinite(tensor).all()):
        raise ValueError(f"{name} must be finite")
    return tensor


class GaussianNoise(nn.Module):
    """Add ``N(0, (std * scale)**2)`` noise to the input in training mode only.

    This is the feature-space augmentation of the DFL paper. In eval mode, and whenever ``std == 0``, the
    module is the identity.

    Parameters
    ----------
    std : float, default=0.0
        Noise level. Without ``scale`` it is the standard deviation in the units of the input.

    scale : float, array-like of shape (n_features,) or None, default=None
        Per-feature (or global) multiplier of ``std``, typically each feature's standard deviation on the
        training data, which makes ``std`` a fraction of the feature's spread: ``std=0.3`` then means the
        same on raw and on standardised embeddings. Stored as a buffer (it follows ``.to(device)`` and is
        saved in the ``state_dict``).

    Examples
    --------
    >>> import torch
    >>> from skdfl.heads import GaussianNoise
    >>> noise = GaussianNoise(std=0.5, scale=[1.0, 10.0]).train()
    >>> x = torch.zeros(100_000, 2)
    >>> [round(v, 1) for v in noise(x).std(dim=0).tolist()]
    [0.5, 5.0]
    >>> bool(torch.equal(noise.eval()(x), x))
    True
    """

    def __init__(self, std=0.0, scale=None):
        super().__init__()
        if not std >= 0:
            raise ValueError(f"std must be >= 0, got {std!r}")
        self.std = float(std)
        scale = _as_feature_vector(scale, "scale")
        if scale is not None and bool((scale < 0).any()):
            raise ValueError("scale must be non-negative")
        self.register_buffer("scale", scale)

    def forward(self, x):
        """Return ``x`` plus noise in training mode, ``x`` itself otherwise.

        Parameters
        ----------
        x : torch.Tensor of shape (n_samples, n_features)
            Input features.

        Returns
        -------
        out : torch.Tensor
            Tensor of the same shape as ``x``.
        """
        if not self.training or self.std == 0:
            return x
        noise = torch.randn_like(x) * self.std
        if self.scale is not None:
            noise = noise * self.scale.to(x.dtype)
        return x + noise

    def through_linear(self, linear, n_samples):
        r"""The noise ``linear(x + noise) - linear(x)`` adds to ``n_samples`` outputs, drawn in output space.

        For a linear layer with weight :math:`W`, input noise :math:`\varepsilon \sim N(0, \sigma^2 S^2)`
        reaches the outputs as :math:`W \varepsilon \sim N(0, \sigma^2 W S^2 W^\top)`, a distribution over
        ``out_features`` values rather than ``in_features``: drawing it there (the local reparameterisation
        trick of Kingma et al., 2015) gives outputs with exactly the same distribution, and unbiased gradients
        of the same expected loss, for a fraction of the random numbers (2 instead of 1,024 per sample for a
        binary linear head on a DenseNet embedding).

        Parameters
        ----------
        linear : torch.nn.Linear
            The layer the noisy input goes through.

        n_samples : int
            Batch size.

        Returns
        -------
        noise : torch.Tensor of shape (n_samples, out_features) or None
            None when the layer has more outputs than inputs (the output covariance is then singular); add
            the noise to the input instead.

        Notes
        -----
        The covariance gets a ridge of ``1e-5`` times its mean variance before the Cholesky factorisation, so
        that the factorisation exists when rows of :math:`W` are (nearly) dependent, e.g. the weights of a
        class without samples after weight decay, and nothing is read back to check it: that check was a
        device-to-host synchronisation at every training step on a GPU. The noise's variances grow by
        ``1e-5`` of their mean.
        """
        weight = linear.weight
        n_out = weight.shape[0]
        if n_out > weight.shape[1]:
            return None
        factor = (
            weight * self.std if self.scale is None else weight * (self.std * self.scale.to(weight.dtype))
        )
        with torch.no_grad():  # the ridge only keeps the factorisation defined: no gradient through it
            # The mean variance is the trace over n_out, and the trace of F F^T is the sum of F's squares.
            variance = factor.square().sum() * (_NOISE_RIDGE / n_out) + torch.finfo(weight.dtype).tiny
            ridge = _identity(n_out, weight.dtype, weight.device) * variance
        chol = torch.linalg.cholesky_ex(torch.addmm(ridge, factor, factor.T)).L
        return torch.randn(n_samples, n_out, dtype=weight.dtype, device=weight.device) @ chol.T

    def extra_repr(self):
        scaled = "" if self.scale is None else f", scale=<{tuple(self.scale.shape) or 'scalar'}>"
        return f"std={self.std}{scaled}"


class FeatureDropout(nn.Module):
    """Input-feature dropout around a centre, in training mode only.

    Each feature of each sample is, with probability ``p``, replaced by ``center`` (the feature's training
    mean); kept features are moved away from the centre by ``1 / (1 - p)`` so that the expectation of the
    output equals the input (inverted dropout on centred features). With ``center=None`` this is
    :class:`torch.nn.Dropout` (dropped features become 0). A dropped feature then looks "average" instead of
    "zero", which is what a missing feature means on embeddings that are not centred.

    Parameters
    ----------
    p : float, default=0.0
        Probability of dropping each feature, in ``[0, 1)``.

    center : float, array-like of shape (n_features,) or None, default=None
        Value that replaces a dropped feature. Stored as a buffer.

    Examples
    --------
    >>> import torch
    >>> from skdfl.heads import FeatureDropout
    >>> drop = FeatureDropout(p=0.5, center=[3.0, 3.0]).train()
    >>> out = drop(torch.full((10_000, 2), 5.0))
    >>> sorted(set(out.flatten().tolist()))  # 3 + (5 - 3) / 0.5 = 7
    [3.0, 7.0]
    """

    def __init__(self, p=0.0, center=None):
        super().__init__()
        if not 0 <= p < 1:
            raise ValueError(f"p must be in [0, 1), got {p!r}")
        self.p = float(p)
        self.register_buffer("center", _as_feature_vector(center, "center"))

    def forward(self, x):
        """Drop features of ``x`` in training mode; return ``x`` itself otherwise.

        Parameters
        ----------
        x : torch.Tensor of shape (n_samples, n_features)
            Input features.

        Returns
        -------
        out : torch.Tensor
            Tensor of the same shape as ``x``.
        """
        if not self.training or self.p == 0:
            return x
        if self.center is None:
            return nn.functional.dropout(x, self.p, training=True)
        center = self.center.to(x.dtype)
        return center + nn.functional.dropout(x - center, self.p, training=True)

    def extra_repr(self):
        centred = "" if self.center is None else f", center=<{tuple(self.center.shape) or 'scalar'}>"
        return f"p={self.p}{centred}"


def mixup_embeddings(x, alpha):
    """Mix each embedding of a batch with a random partner from the same batch (mixup).

    Parameters
    ----------
    x : torch.Tensor of shape (n_samples, n_features)
        A training batch.

    alpha : float
        Concentration of the ``Beta(alpha, alpha)`` distribution of the mixing weights, ``> 0``. Small values
        (0.1-0.4) keep most mixtures close to one of the two embeddings.

    Returns
    -------
    mixed : torch.Tensor of shape (n_samples, n_features)
        ``lam * x + (1 - lam) * x[partner]``, one ``lam`` per sample.

    partner : torch.Tensor of shape (n_samples,)
        Index of each sample's partner in the batch.

    lam : torch.Tensor of shape (n_samples,)
        Mixing weight of the sample itself; the loss of ``mixed[i]`` is ``lam[i]`` times the loss against
        its own label plus ``1 - lam[i]`` times the loss against its partner's.

    Examples
    --------
    >>> import torch
    >>> from skdfl.heads import mixup_embeddings
    >>> x = torch.eye(4)
    >>> mixed, partner, lam = mixup_embeddings(x, alpha=0.2)
    >>> bool(torch.allclose(mixed, lam[:, None] * x + (1 - lam[:, None]) * x[partner]))
    True
    """
    if not alpha > 0:
        raise ValueError(f"alpha must be > 0, got {alpha!r}")
    n = x.shape[0]
    concentration = torch.full((n,), float(alpha), device=x.device)
    lam = torch.distributions.Beta(concentration, concentration).sample().to(x.dtype)
    partner = torch.randperm(n, device=x.device)
    mixed = lam[:, None] * x + (1 - lam[:, None]) * x[partner]
    return mixed, partner, lam
