"""nt_xent_loss against a direct, loop-based computation of the SimCLR / MPCS formula."""

from __future__ import annotations

import math

import pytest
import torch

from skdfl.pretrain import nt_xent_loss


def loop_reference(z1: torch.Tensor, z2: torch.Tensor, temperature: float) -> torch.Tensor:
    """The paper's formula, term by term: z_1..z_2N = z1 then z2; the positive of i is i +- N.

    l(i, j) = -log( exp(sim(z_i, z_j) / t) / sum_{k != i} exp(sim(z_i, z_k) / t) ),
    L = 1 / (2N) * sum_{k=1..N} [ l(k, k + N) + l(k + N, k) ],  sim = cosine similarity.
    """
    z = list(z1.double()) + list(z2.double())
    n = len(z1)

    def sim(a, b):
        return torch.dot(a, b) / (torch.linalg.norm(a) * torch.linalg.norm(b))

    def ell(i, j):
        denominator = sum(torch.exp(sim(z[i], z[k]) / temperature) for k in range(2 * n) if k != i)
        return -torch.log(torch.exp(sim(z[i], z[j]) / temperature) / denominator)

    return sum(ell(k, k + n) + ell(k + n, k) for k in range(n)) / (2 * n)


@pytest.mark.parametrize(
    ("n", "dim", "temperature"), [(1, 4, 0.5), (2, 3, 0.5), (5, 8, 0.1), (8, 16, 1.0), (6, 2, 0.07)]
)
def test_values_and_gradients_equal_the_loop_reference(n, dim, temperature):
    gen = torch.Generator().manual_seed(n * 100 + dim)
    z1 = torch.randn(n, dim, generator=gen, dtype=torch.float64, requires_grad=True)
    z2 = torch.randn(n, dim, generator=gen, dtype=torch.float64, requires_grad=True)

    ours = nt_xent_loss(z1, z2, temperature)
    g1, g2 = torch.autograd.grad(ours, (z1, z2))
    reference = loop_reference(z1, z2, temperature)
    r1, r2 = torch.autograd.grad(reference, (z1, z2))

    # nt_xent_loss computes in float32 whatever the input dtype
    assert ours.item() == pytest.approx(reference.item(), rel=1e-5, abs=1e-6)
    torch.testing.assert_close(g1, r1, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(g2, r2, rtol=1e-4, atol=1e-6)


def test_closed_form_for_aligned_positives_and_orthogonal_negatives():
    # Positives identical, all other pairs orthogonal: every term is -log(e^(1/t) / (e^(1/t) + 2N - 2)).
    n, t = 3, 0.5
    z = torch.eye(n, 6) * 3.0
    expected = -math.log(math.exp(1 / t) / (math.exp(1 / t) + 2 * n - 2))
    assert nt_xent_loss(z, z.clone(), t).item() == pytest.approx(expected, rel=1e-6)


def test_scale_invariant_symmetric_and_stable_in_half_precision():
    gen = torch.Generator().manual_seed(0)
    z1, z2 = torch.randn(4, 8, generator=gen), torch.randn(4, 8, generator=gen)
    base = nt_xent_loss(z1, z2, 0.2)
    assert nt_xent_loss(7.0 * z1, 0.01 * z2, 0.2).item() == pytest.approx(base.item(), rel=1e-5)
    assert nt_xent_loss(z2, z1, 0.2).item() == pytest.approx(base.item(), rel=1e-5)
    half = nt_xent_loss(z1.half(), z2.half(), 0.2)
    assert half.dtype == torch.float32
    assert half.item() == pytest.approx(base.item(), rel=1e-2)


def test_positives_lower_the_loss():
    gen = torch.Generator().manual_seed(1)
    z1 = torch.randn(8, 16, generator=gen)
    noise = torch.randn(8, 16, generator=gen)
    close = nt_xent_loss(z1, z1 + 0.05 * noise, 0.5)
    unrelated = nt_xent_loss(z1, noise, 0.5)
    assert close < unrelated


@pytest.mark.parametrize(
    ("z1", "z2", "temperature", "message"),
    [
        (torch.zeros(3, 4), torch.zeros(2, 4), 0.5, "one shape"),
        (torch.zeros(3), torch.zeros(3), 0.5, "matrices"),
        (torch.zeros(0, 4), torch.zeros(0, 4), 0.5, "at least one pair"),
        (torch.ones(2, 4), torch.ones(2, 4), 0.0, "temperature"),
    ],
)
def test_bad_input_raises_a_clear_error(z1, z2, temperature, message):
    with pytest.raises(ValueError, match=message):
        nt_xent_loss(z1, z2, temperature)
