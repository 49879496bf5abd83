"""The torch module of the heads: input perturbations followed by a small MLP."""

from __future__ import annotations

from numbers import Integral

from torch import nn

from ._augment import FeatureDropout, GaussianNoise

__all__ = ["MLPHead", "as_hidden_units"]


def as_hidden_units(hidden_units):
    """Normalise ``hidden_units`` to a tuple of positive ints (an int means one hidden layer).

    Parameters
    ----------
    hidden_units : int or sequence of int
        Hidden layer widths.

    Returns
    -------
    units : tuple of int
        The widths, ``()`` for a linear head.
    """
    if isinstance(hidden_units, Integral) and not isinstance(hidden_units, bool):
        hidden_units = (hidden_units,)
    try:
        units = tuple(hidden_units)
    except TypeError:
        units = None
    if units is None or not all(isinstance(u, Integral) and not isinstance(u, bool) and u > 0 for u in units):
        raise ValueError(f"hidden_units must be a sequence of positive integers, got {hidden_units!r}")
    return tuple(int(u) for u in units)


class MLPHead(nn.Module):
    """Feed-forward head on embeddings.

    ``FeatureDropout -> GaussianNoise -> [Linear -> ReLU -> Dropout] * len(hidden_units) -> Linear``; the two
    input perturbations act in training mode only. Without hidden layers, the input noise is drawn directly in
    logit space (:meth:`GaussianNoise.through_linear`): the same distribution of logits, far fewer random
    numbers.

    Parameters
    ----------
    n_features : int
        Input (embedding) width.

    n_classes : int
        Number of output logits.

    hidden_units : sequence of int, default=(512,)
        Width of each hidden layer. ``()`` gives the paper's single dense softmax layer (a multinomial
        logistic regression, used to compare backbones); ``(512,)`` is the paper's task head.

    dropout : float, default=0.0
        Dropout probability after each hidden ReLU. No dropout layer is created when 0.

    noise_std : float, default=0.0
        Level of the :class:`GaussianNoise` added to the input during training.

    noise_scale : float, array-like of shape (n_features,) or None, default=None
        Multiplier of ``noise_std`` (see :class:`GaussianNoise`), e.g. each feature's training spread.

    feature_dropout : float, default=0.0
        Probability of dropping each input feature during training (see :class:`FeatureDropout`).

    feature_center : float, array-like of shape (n_features,) or None, default=None
        Value of a dropped input feature, e.g. its training mean; None drops to 0.

    Attributes
    ----------
    feature_dropout : FeatureDropout
        Input-feature dropout (identity in eval mode).

    noise : GaussianNoise
        Input noise (identity in eval mode).

    hidden : torch.nn.Sequential
        Hidden layers; empty when ``hidden_units=()``. Its output is the head's penultimate representation.

    output : torch.nn.Linear
        Final projection to logits.
    """

    def __init__(
        self,
        n_features,
        n_classes,
        hidden_units=(512,),
        dropout=0.0,
        noise_std=0.0,
        noise_scale=None,
        feature_dropout=0.0,
        feature_center=None,
    ):
        super().__init__()
        hidden_units = as_hidden_units(hidden_units)
        if not 0 <= dropout < 1:
            raise ValueError(f"dropout must be in [0, 1), got {dropout!r}")
        self.feature_dropout = FeatureDropout(feature_dropout, center=feature_center)
        self.noise = GaussianNoise(noise_std, scale=noise_scale)
        layers = []
        in_features = n_features
        for units in hidden_units:
            layers += [nn.Linear(in_features, units), nn.ReLU()]
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
            in_features = units
        self.hidden = nn.Sequential(*layers)
        self.output = nn.Linear(in_features, n_classes)

    def forward(self, x):
        """Compute logits.

        Parameters
        ----------
        x : torch.Tensor of shape (n_samples, n_features)
            Embeddings.

        Returns
        -------
        logits : torch.Tensor of shape (n_samples, n_classes)
            Unnormalised class scores (train with :class:`FocalLoss`, apply softmax for probabilities).
        """
        x = self.feature_dropout(x)
        if self.training and self.noise.std > 0 and len(self.hidden) == 0:
            # A linear head: draw the noise where it lands, in logit space (see GaussianNoise.through_linear).
            noise = self.noise.through_linear(self.output, x.shape[0])
            if noise is not None:
                return self.output(x) + noise
        return self.output(self.hidden(self.noise(x)))
