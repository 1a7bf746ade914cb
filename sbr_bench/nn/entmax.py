"""α-entmax (Peters et al., 2019) with a learned α, by bisection, with exact gradients for scores and α.

    entmax_α(z)_i = [(α-1)·z_i − τ]_+^{1/(α-1)},   τ such that Σ_i p_i = 1,   α > 1

α → 1 gives softmax, α = 2 sparsemax; in between the output is sparse but smoother than sparsemax. DSAN
learns α per session (`sbr_bench.models.dsan`), so the backward pass gives dα as well (Correia et al.,
2019). It is written here rather than imported because the suite's dependencies are fixed (torch,
torch-geometric, numpy, pandas, matplotlib, scipy, tqdm); the `entmax` package (`entmax_bisect`) is only a
test extra, used to cross-check this one.

Masked entries (z = −inf) get p = 0 and no gradient; a row masked entirely gives zeros, not NaNs.
"""

from __future__ import annotations

import torch
from torch import Tensor


def _bisect(z: Tensor, alpha: Tensor, dim: int, n_iter: int) -> Tensor:
    am1 = alpha - 1
    x = z * am1
    top = x.amax(dim=dim, keepdim=True)
    top = torch.where(torch.isfinite(top), top, torch.zeros_like(top))  # a fully masked row: p = 0 below
    beta = 1 / am1
    # Σp is decreasing in τ; it is >= 1 at τ = max − 1 (the top entry alone gives 1) and <= 1 at
    # τ = max − (1/n)^(α−1) (each of the n unmasked entries at most 1/n). n counts the unmasked entries
    # only (the row's size is looser but also valid): padding then does not change the bisection's path.
    # `lo` keeps Σp >= 1, so the support is never empty.
    n = torch.isfinite(x).sum(dim=dim, keepdim=True).clamp_min(1).to(x.dtype)
    lo = top - 1
    hi = top - n.reciprocal().pow(am1)
    for _ in range(n_iter):
        mid = (lo + hi) / 2
        enough = torch.clamp(x - mid, min=0).pow(beta).sum(dim=dim, keepdim=True) >= 1
        new_lo, new_hi = torch.where(enough, mid, lo), torch.where(enough, hi, mid)
        # At the dtype's resolution the bracket stops moving, and then every later step would repeat this
        # one: stopping gives the same result (float32 gets there in ~25 steps, halving the cost).
        if torch.equal(new_lo, lo) and torch.equal(new_hi, hi):
            break
        lo, hi = new_lo, new_hi
    p = torch.clamp(x - lo, min=0).pow(beta)
    return p / p.sum(dim=dim, keepdim=True).clamp_min(torch.finfo(p.dtype).tiny)


class EntmaxBisect(torch.autograd.Function):
    """entmax over `dim` with α already expanded to the scores' shape with size 1 along `dim`."""

    @staticmethod
    def forward(ctx, z: Tensor, alpha: Tensor, dim: int, n_iter: int) -> Tensor:
        with torch.no_grad():
            p = _bisect(z, alpha, dim, n_iter)
        ctx.dim = dim
        ctx.save_for_backward(p, alpha)
        return p

    @staticmethod
    def backward(ctx, g: Tensor):
        p, alpha = ctx.saved_tensors
        dim = ctx.dim
        # On the support, dp = s ⊙ (dz − dτ/(α−1)) with s = p^(2−α); Σ dp = 0 fixes dτ, giving the
        # symmetric Jacobian diag(s) − s sᵀ/Σs.
        support = p > 0
        s = torch.where(support, p.pow(2 - alpha), torch.zeros_like(p))
        s_sum = s.sum(dim=dim, keepdim=True).clamp_min(torch.finfo(p.dtype).tiny)  # 0 only in all-masked rows
        s_hat = s / s_sum
        gs = (g * s).sum(dim=dim, keepdim=True)
        dz = s * g - s_hat * gs
        dalpha = None
        if ctx.needs_input_grad[1]:
            # dp_i/dα = [(p_i − ŝ_i)/(α−1) + ŝ_i·H − p_i ln p_i]/(α−1), H = Σ p ln p (0 ln 0 = 0)
            am1 = alpha - 1
            plogp = torch.xlogy(p, p)
            h = plogp.sum(dim=dim, keepdim=True)
            dp_dalpha = ((p - s_hat) / am1 + s_hat * h - plogp) / am1
            dalpha = (g * dp_dalpha).sum(dim=dim, keepdim=True)
        return dz, dalpha, None, None


def entmax(scores: Tensor, alpha, dim: int = -1, n_iter: int = 50) -> Tensor:
    """α-entmax of `scores` over `dim`.

    Args:
        scores: any shape; −inf marks masked entries.
        alpha: a number or a tensor (> 1) that broadcasts against `scores` with size 1 along `dim` (e.g.
            [B, 1] for scores [B, n], one α per row); gradients flow to it.
        n_iter: bisection steps; 50 halve the initial bracket (width <= 1) to float64 precision.
    Returns:
        Probabilities of the shape of `scores`, summing to 1 over `dim` (0 for a fully masked row).
    """
    dim = dim % scores.dim()
    if not isinstance(alpha, Tensor):
        alpha = torch.tensor(float(alpha), dtype=scores.dtype, device=scores.device)
    shape = list(scores.shape)
    shape[dim] = 1
    # expand (not a copy) outside the Function, so autograd sums dα back to α's own shape
    alpha = alpha.to(scores.dtype).expand(shape)
    return EntmaxBisect.apply(scores, alpha, dim, n_iter)
