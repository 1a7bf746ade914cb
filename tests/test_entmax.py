"""α-entmax by bisection: exact gradients for scores and α (float64 gradcheck, masked rows, α near 1 and 2),
its limits (α = 2 is sparsemax, α → 1 softmax), masking, and agreement with the `entmax` package."""

import pytest
import torch

from sbr_bench.nn.entmax import entmax

INF = float("inf")


def sparsemax(z: torch.Tensor) -> torch.Tensor:
    """Martins & Astudillo (2016), by sorting: τ = (Σ_{j<=k} z_(j) − 1)/k for the largest k with
    1 + k·z_(k) > Σ_{j<=k} z_(j)."""
    zs, _ = torch.sort(z, dim=-1, descending=True)
    k = torch.arange(1, z.size(-1) + 1, dtype=z.dtype)
    cum = zs.cumsum(-1)
    support = (1 + k * zs > cum).sum(-1, keepdim=True)
    tau = (cum.gather(-1, support - 1) - 1) / support
    return torch.clamp(z - tau, min=0)


def scores_and_mask(rows=5, n=7, seed=0):
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(rows, n, generator=g, dtype=torch.float64) * 2
    mask = torch.zeros(rows, n, dtype=torch.bool)
    mask[1, 4:] = True  # a padded row
    mask[3, ::2] = True  # holes
    return z, mask


@pytest.mark.parametrize("alpha", [1.001, 1.01, 1.05, 1.3, 1.5, 1.8, 1.99, 2.0])
def test_gradcheck_scores_and_alpha_with_masked_entries(alpha):
    z, mask = scores_and_mask()
    a = torch.full((5, 1), alpha, dtype=torch.float64)
    a[::2] += -0.005 if alpha > 1.01 else 0.005  # rows with different α, all in (1, 2]
    z.requires_grad_()
    a.requires_grad_(alpha < 2.0)  # α = 2 is the upper end: no finite difference around it in the test
    assert torch.autograd.gradcheck(lambda z, a: entmax(z.masked_fill(mask, -INF), a), (z, a))


def test_gradcheck_along_another_dim_with_a_broadcast_alpha():
    g = torch.Generator().manual_seed(1)
    z = torch.randn(3, 6, 4, generator=g, dtype=torch.float64, requires_grad=True)
    a = torch.tensor([[[1.2]], [[1.6]], [[1.9]]], dtype=torch.float64, requires_grad=True)  # one α per [6, 4] block
    assert torch.autograd.gradcheck(lambda z, a: entmax(z, a, dim=1), (z, a))
    scalar = torch.tensor(1.4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda z, a: entmax(z, a, dim=1), (z, scalar))


def test_masked_entries_get_zero_and_no_nans_anywhere():
    z, mask = scores_and_mask()
    mask[2] = True  # a row masked entirely
    z = z.masked_fill(mask, -INF).requires_grad_()
    a = torch.full((5, 1), 1.5, dtype=torch.float64, requires_grad=True)
    p = entmax(z, a)
    assert torch.isfinite(p).all() and (p[mask] == 0).all() and (p[2] == 0).all()
    torch.testing.assert_close(p.sum(-1)[[0, 1, 3, 4]], torch.ones(4, dtype=torch.float64))
    (p * torch.randn_like(p)).sum().backward()
    assert torch.isfinite(z.grad).all() and torch.isfinite(a.grad).all()
    assert (z.grad[mask] == 0).all() and a.grad[2].item() == 0


def test_alpha_two_is_sparsemax():
    z, _ = scores_and_mask(rows=20, n=9, seed=2)
    p = entmax(z, 2.0)
    torch.testing.assert_close(p, sparsemax(z))
    assert (p == 0).any()  # sparse indeed


def test_alpha_near_one_approaches_softmax():
    z, _ = scores_and_mask(rows=20, n=9, seed=3)
    torch.testing.assert_close(entmax(z, 1.001), torch.softmax(z, -1), atol=5e-3, rtol=0)
    assert (entmax(z, 1.5) - torch.softmax(z, -1)).abs().max() > 0.05  # the tolerance above does tell them apart


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_rows_sum_to_one(dtype):
    g = torch.Generator().manual_seed(4)
    z = (torch.randn(8, 5, 30, generator=g) * 5).to(dtype)
    a = 1 + torch.rand(8, 5, 1, generator=g).to(dtype)
    for dim in (-1, 1):
        p = entmax(z if dim == -1 else z.transpose(1, 2), a if dim == -1 else a.transpose(1, 2), dim=dim)
        torch.testing.assert_close(p.sum(dim), torch.ones_like(p.sum(dim)))
        assert (p >= 0).all()


def test_agrees_with_the_entmax_package_in_values_and_gradients():
    package = pytest.importorskip("entmax")
    z, mask = scores_and_mask(rows=6, n=11, seed=5)
    z = z.masked_fill(mask, -INF)
    a = torch.tensor([[1.01], [1.2], [1.5], [1.7], [1.95], [2.0]], dtype=torch.float64)
    g = torch.randn(6, 11, generator=torch.Generator().manual_seed(6), dtype=torch.float64)
    results = []
    for fn in (entmax, package.entmax_bisect):
        zz, aa = z.clone().requires_grad_(), a.clone().requires_grad_()
        p = fn(zz, aa, dim=-1)
        (p * g).sum().backward()
        results.append((p.detach(), zz.grad, aa.grad))
    for ours, theirs in zip(*results):
        torch.testing.assert_close(ours, theirs, atol=1e-10, rtol=1e-8)


def test_agrees_with_the_entmax_package_in_float32_along_dim1():
    package = pytest.importorskip("entmax")
    g = torch.Generator().manual_seed(7)
    z = torch.randn(4, 12, 3, generator=g)
    z[0, 5:] = -INF
    a = 1 + torch.rand(4, 1, 3, generator=g)
    up = torch.randn(4, 12, 3, generator=g)
    results = []
    for fn in (entmax, package.entmax_bisect):
        zz, aa = z.clone().requires_grad_(), a.clone().requires_grad_()
        p = fn(zz, aa, dim=1)
        (p * up).sum().backward()
        results.append((p.detach(), zz.grad, aa.grad))
    for ours, theirs in zip(*results):
        torch.testing.assert_close(ours, theirs, atol=1e-4, rtol=1e-4)
