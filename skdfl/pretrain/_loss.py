"""NT-Xent, the normalised temperature-scaled cross-entropy of SimCLR (Chen et al. 2020), used by MPCS too.

Written here on :func:`torch.nn.functional.cross_entropy` rather than taken from lightly: lightly's
``NTXentLoss`` computes the same quantity but installing lightly pulls in PyTorch Lightning, Hydra,
OmegaConf, aiohttp and torchmetrics (14 packages) for what is one matrix product and one cross-entropy.
``tests/test_pretrain_loss.py`` checks it against a loop over the paper's formula, values and gradients.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["nt_xent_loss"]


def nt_xent_loss(z1: torch.Tensor, z2: torch.Tensor, temperature: float = 0.5) -> torch.Tensor:
    r"""NT-Xent loss of a batch of positive pairs ``(z1[i], z2[i])``; every other row is a negative.

    With the :math:`2N` projections :math:`z_1 \dots z_{2N}` (``z1`` then ``z2``), cosine similarity
    :math:`s_{ij}` and temperature :math:`\tau`, SimCLR's loss is

    .. math::
        \ell(i, j) = -\log \frac{\exp(s_{ij} / \tau)}{\sum_{k \ne i} \exp(s_{ik} / \tau)}, \qquad
        \mathcal{L} = \frac{1}{2N} \sum_{i=1}^{N} \left[\ell(i, i + N) + \ell(i + N, i)\right].

    Parameters
    ----------
    z1, z2 : torch.Tensor of shape (n_pairs, dim)
        Projections of the two views; row ``i`` of each forms a positive pair. Computed in float32
        whatever their dtype, so the loss is stable under bf16 / fp16 autocast.
    temperature : float, default=0.5
        :math:`\tau > 0`; lower values weigh hard negatives more.

    Returns
    -------
    torch.Tensor
        The scalar mean loss, differentiable with respect to ``z1`` and ``z2``.
    """
    if z1.ndim != 2 or z1.shape != z2.shape:
        raise ValueError(
            f"z1 and z2 must be (n_pairs, dim) matrices of one shape, got {tuple(z1.shape)} and {tuple(z2.shape)}"
        )
    if z1.shape[0] == 0:
        raise ValueError("nt_xent_loss needs at least one pair, got 0 rows")
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature!r}")
    n = z1.shape[0]
    z = F.normalize(torch.cat([z1, z2]).float(), dim=1)
    logits = z @ z.T / temperature
    # A sample is not its own negative: exp(-inf) = 0 removes k = i from the denominator.
    self_mask = torch.eye(2 * n, dtype=torch.bool, device=z.device)
    logits = logits.masked_fill(self_mask, float("-inf"))
    positives = torch.cat([torch.arange(n, 2 * n), torch.arange(n)]).to(z.device)
    return F.cross_entropy(logits, positives)
