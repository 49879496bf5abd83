"""The focal loss of Lin et al. (2017) on logits, the training criterion of the heads."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["FocalLoss"]

_REDUCTIONS = ("mean", "sum", "none")


class FocalLoss(nn.Module):
    r"""Multiclass focal loss on logits (Lin et al., 2017).

    For a sample with true class :math:`t` and predicted probability :math:`p_t`,

    .. math:: \mathrm{FL}(p_t) = -\alpha_t \, (1 - p_t)^{\gamma} \, \log p_t .

    With ``gamma=0`` and ``alpha=None`` this is exactly
    :func:`torch.nn.functional.cross_entropy`. ``gamma > 0`` shrinks the loss of well-classified samples
    (``p_t`` close to 1) so training concentrates on hard, often minority-class, samples.

    Parameters
    ----------
    gamma : float, default=2.0
        Focusing parameter, ``>= 0``. 2.0 is the value recommended by Lin et al.

    alpha : sequence of float, torch.Tensor or None, default=None
        Per-class weight :math:`\alpha_c`, one non-negative entry per class (indexed by the integer target).
        ``None`` weights all classes by 1. Stored as a buffer, so it follows ``.to(device)`` and is saved in
        the ``state_dict``; a floating tensor keeps its dtype, other inputs become the default dtype.

    reduction : {"mean", "sum", "none"}, default="mean"
        ``"mean"`` averages the per-sample losses over the batch. Unlike
        ``cross_entropy(weight=alpha)``, it does **not** divide by the sum of the selected weights, which
        is the usual focal-loss convention: ``alpha`` rescales samples, it is not a weighted average.

    Examples
    --------
    >>> import torch
    >>> from skdfl.heads import FocalLoss
    >>> logits = torch.tensor([[2.0, 0.0], [0.0, 1.0]])
    >>> target = torch.tensor([0, 1])
    >>> loss = FocalLoss(gamma=0.0)(logits, target)
    >>> bool(torch.isclose(loss, torch.nn.functional.cross_entropy(logits, target)))
    True
    """

    def __init__(self, gamma=2.0, alpha=None, reduction="mean"):
        super().__init__()
        if not gamma >= 0:
            raise ValueError(f"gamma must be >= 0, got {gamma!r}")
        if reduction not in _REDUCTIONS:
            raise ValueError(f"reduction must be one of {_REDUCTIONS}, got {reduction!r}")
        self.gamma = float(gamma)
        self.reduction = reduction
        if alpha is not None:
            # A floating tensor keeps its dtype; anything else becomes the default dtype (float32), which
            # every device supports (MPS has no float64).
            is_float_tensor = isinstance(alpha, torch.Tensor) and alpha.is_floating_point()
            dtype = alpha.dtype if is_float_tensor else torch.get_default_dtype()
            alpha = torch.as_tensor(alpha, dtype=dtype).detach().clone()
            if alpha.ndim != 1:
                raise ValueError(
                    f"alpha must be one-dimensional (one weight per class), got shape {tuple(alpha.shape)}"
                )
            if not bool(torch.isfinite(alpha).all()) or bool((alpha < 0).any()):
                raise ValueError("alpha must contain finite, non-negative weights")
        self.register_buffer("alpha", alpha)

    def forward(self, logits, target):
        """Compute the focal loss.

        Parameters
        ----------
        logits : torch.Tensor of shape (n_samples, n_classes)
            Unnormalised scores.

        target : torch.Tensor of shape (n_samples,)
            Integer class indices in ``[0, n_classes)``.

        Returns
        -------
        loss : torch.Tensor
            A scalar for ``reduction="mean"``/``"sum"``, shape ``(n_samples,)`` for ``"none"``.
        """
        if logits.ndim != 2:
            raise ValueError(f"logits must have shape (n_samples, n_classes), got {tuple(logits.shape)}")
        target = target.long()
        if self.gamma == 0:
            # Plain cross-entropy: one fused kernel instead of log-softmax, gather and negation (fewer autograd
            # nodes per step, which is what a small head's step is made of).
            loss = F.cross_entropy(logits, target, reduction="none")
        else:
            log_pt = F.log_softmax(logits, dim=1).gather(1, target.unsqueeze(1)).squeeze(1)
            # expm1 keeps 1 - p_t accurate when p_t is close to 1 (the easy samples focal loss is about);
            # the clamp avoids 0 ** gamma, whose gradient is inf * 0 = nan for gamma < 1.
            one_minus_pt = (-torch.expm1(log_pt)).clamp_min(torch.finfo(log_pt.dtype).tiny)
            loss = -log_pt * one_minus_pt.pow(self.gamma)
        if self.alpha is not None:
            if self.alpha.shape[0] != logits.shape[1]:
                raise ValueError(
                    f"alpha has {self.alpha.shape[0]} entries but logits have {logits.shape[1]} classes"
                )
            loss = loss * self.alpha.to(loss.dtype)[target]
        if self.reduction == "mean":
            return loss.mean()
        if self.reduction == "sum":
            return loss.sum()
        return loss

    def extra_repr(self):
        return f"gamma={self.gamma}, reduction={self.reduction!r}"
