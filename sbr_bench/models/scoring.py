"""Scores against a row-normalised candidate table without normalising the table.

The normalised scorers (Atten-Mixer's Eq. 4-5, cosine, SGNN-HN's layer norm) all compute
    scores[b, j] = σ · s[b] · dropout(f(v_j)) / ‖f(v_j)‖,   f = identity or centring (v - mean v),
and the [N, d] table is by far the largest tensor of a training step. Written as "normalise the table,
then multiply", autograd makes several full passes over it forward and backward. Here the row norms
scale score columns instead:
    raw = s @ (v ⊙ mask)ᵀ,  scores = raw · c,  c_j = σ / (keep · max(‖f(v_j)‖, eps))
(`mask` the dropout mask, `keep` = 1 - p: dropout commutes with scaling a row; with centring, v above
is the centred table). The backward is written out so that the table sees one matmul plus one pass:
    grad_s = (G·c) @ (f(v) ⊙ mask),   grad_f = ((G·c)ᵀ @ s) ⊙ mask + k_j · f(v_j),   k_j = -Σ_b G·scores / ‖f(v_j)‖²
(the second term is the gradient through the norm; zero where the norm is clamped at eps, as
F.normalize), then grad_v = grad_f minus its row mean with centring. The dropout mask (`drop_mask`)
keeps an entry with probability 1 - p like `nn.Dropout`, but on the CPU from 16-bit uniforms, four per
64-bit draw: torch's CPU `bernoulli_` takes 4x as long, a large share of a step at d = 256.
"""

from __future__ import annotations

import torch
from torch import Tensor

EPS = 1e-12  # F.normalize's default


def drop_mask(shape, p: float, device=None, chunk: int = 1 << 18) -> Tensor:
    """Boolean dropout mask, True = dropped, each entry independently with probability p rounded to a
    multiple of 2^-16 (|error| <= 7.6e-6). On the CPU, random number generation is the cost (more than
    the forward scoring product for Atten-Mixer's 43k x 256 table), so each 64-bit draw is cut into four
    16-bit uniforms: a quarter of the draws of `bernoulli_` or `uniform_`. Draws go through a reused
    buffer of `chunk` words that stays in cache; elsewhere `bernoulli_`."""
    device = torch.device("cpu") if device is None else torch.device(device)
    if device.type != "cpu":
        return torch.empty(shape, dtype=torch.bool, device=device).bernoulli_(p)
    out = torch.empty(shape, dtype=torch.bool)
    flat = out.view(-1)
    n = flat.numel()
    threshold = round(p * 65536) - 32768  # a signed 16-bit lane is below it with probability round(p·2^16)/2^16
    buf = torch.empty(max(1, min(chunk, (n + 3) // 4)), dtype=torch.int64)
    for start in range(0, n, 4 * buf.numel()):
        m = min(4 * buf.numel(), n - start)
        words = buf[: (m + 3) // 4].random_(-(2**63), 2**63 - 1)  # (almost) all 64 bits random
        torch.lt(words.view(torch.int16)[:m], threshold, out=flat[start : start + m])
    return out


def _rows(items: Tensor, centre: bool) -> tuple[Tensor, Tensor]:
    """f(items) and its row norms."""
    rows = items - items.mean(dim=-1, keepdim=True) if centre else items
    return rows, rows.norm(dim=-1)


class _ColumnScaledScores(torch.autograd.Function):
    @staticmethod
    def forward(ctx, s: Tensor, items: Tensor, sigma: float, centre: bool, drop: Tensor | None, keep: float):
        with torch.no_grad():
            rows, norm = _rows(items, centre)
            col = (sigma / keep) / norm.clamp_min(EPS)
            table = rows.masked_fill(drop, 0.0) if drop is not None else rows
            scores = torch.mm(s, table.t()).mul_(col)
        ctx.centre = centre
        ctx.save_for_backward(s, rows, table, drop, norm, col, scores)
        return scores

    @staticmethod
    def backward(ctx, grad: Tensor):
        s, rows, table, drop, norm, col, scores = ctx.saved_tensors
        g = grad * col
        grad_s = torch.mm(g, table) if ctx.needs_input_grad[0] else None
        grad_items = None
        if ctx.needs_input_grad[1]:
            # gradient through the norm, per row: k_j · f(v_j); zero where the clamp is active
            k = (grad * scores).sum(0).div_(norm.square().clamp_min(EPS * EPS)).neg_()
            k = k.masked_fill_(norm < EPS, 0.0)
            grad_items = torch.mm(g.t(), s)
            if drop is not None:
                grad_items.masked_fill_(drop, 0.0)
            grad_items.addcmul_(rows, k[:, None])
            if ctx.centre:
                grad_items.sub_(grad_items.mean(dim=-1, keepdim=True))
        return grad_s, grad_items, None, None, None, None


def normalised_scores(s: Tensor, items: Tensor, sigma: float, centre: bool = False, dropout: float = 0.0,
                      training: bool = False, out: Tensor | None = None) -> Tensor:
    """σ · s @ dropout(f(items) / ‖f(items)‖)ᵀ with f = centring (x - mean x) if `centre` else identity;
    dropout as nn.Dropout(dropout) in training.
    `out`: a [B, N] buffer to write the scores into (no-grad evaluation only)."""
    drop, keep = None, 1.0
    if training and dropout > 0:
        keep = 1.0 - dropout
        if keep > 0:
            drop = drop_mask(items.shape, dropout, items.device)
        else:  # nn.Dropout(1) zeroes everything
            drop, keep = torch.ones(items.shape, dtype=torch.bool, device=items.device), 1.0
    if out is not None:
        if torch.is_grad_enabled() and (s.requires_grad or items.requires_grad):
            raise RuntimeError("normalised_scores(out=...) is for evaluation without gradients")
        rows, norm = _rows(items, centre)
        col = (float(sigma) / keep) / norm.clamp_min(EPS)
        table = rows.masked_fill(drop, 0.0) if drop is not None else rows
        return torch.mm(s, table.t(), out=out).mul_(col)
    return _ColumnScaledScores.apply(s, items, float(sigma), bool(centre), drop, keep)
