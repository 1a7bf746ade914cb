"""Scoring products with a cheap backward for the candidate table, the largest tensor of a training step,
and the full-softmax cross-entropy over their [B, N] scores.

`table_scores(s, items)` is s @ itemsᵀ. When `items` is a tail slice of a table (the item embedding
without its padding row 0), the product reads the table itself and writes the table's gradient in one
piece: autograd would otherwise pad the slice's gradient back to the table's shape, a zero fill and a
copy of the whole table every step.

`normalised_scores` is the normalised scorers' product (Atten-Mixer's Eq. 4-5, cosine, SGNN-HN's layer
norm):
    scores[b, j] = σ · s[b] · dropout(f(v_j)) / ‖f(v_j)‖,   f = identity or centring (v - mean v).
Written as "normalise the table, then multiply", autograd makes several full passes over the table
forward and backward. Here the row norms scale score columns instead:
    raw = s @ (v ⊙ m)ᵀ,  scores = raw · c,  c_j = σ / (keep · max(‖f(v_j)‖, eps))
(`m` the 0/1 keep mask, `keep` = 1 - p: dropout commutes with scaling a row; with centring, v above is
the centred table). The backward is written out so that the table sees one matmul plus one pass:
    grad_s = (G·c) @ (f(v) ⊙ m),   grad_f = ((G·c)ᵀ @ s) ⊙ m + k_j · f(v_j),   k_j = -Σ_b G·scores / ‖f(v_j)‖²
(the second term is the gradient through the norm; zero where the norm is clamped at eps, as
F.normalize), then grad_v = grad_f minus its row mean with centring. The mask is a float tensor that
multiplies (a boolean `masked_fill` over the table is a much slower kernel on the CPU), drawn by
`keep_mask`.

Scores in training are item-major: a [B, N] view of an [N, B] tensor, computed as items @ sᵀ. The CPU
BLAS does that product faster than s @ itemsᵀ into a row-major [B, N], and the table's gradient Gᵀ @ s
then reads a contiguous [N, B] gradient (benchmarks/model_step.py --breakdown, `bound*`). Without
gradients (evaluation) the scores are s @ itemsᵀ, row-major, the same with or without an `out` buffer
(the two layouts' products can differ in the last bit).

`precision` (every neural model's config key) sets the arithmetic of these products: fp32; tf32, TF32
tensor cores on CUDA; bf16, inputs rounded to bfloat16, products accumulated and returned in float32 (a
bfloat16 result, as autocast gives, would put ties into the full-catalogue ranking). The norms, the
softmax and everything else stay float32.

`cross_entropy` is F.cross_entropy (mean over the batch) that keeps exp(scores - max) from its forward
and turns it into the gradient softmax - onehot in place: one pass over the [B, N] scores in backward,
where F.cross_entropy writes a zero [B, N] gradient for its NLL step and then reads it back.
"""

from __future__ import annotations

import contextlib

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from torch.autograd.function import once_differentiable

EPS = 1e-12  # F.normalize's default
PRECISIONS = ("fp32", "tf32", "bf16")


@contextlib.contextmanager
def _tf32(on: bool):
    """CUDA matmuls inside in TF32 or in strict float32, through torch's `fp32_precision` where it has it
    (touching the legacy `allow_tf32` flag after a user set the new one makes torch raise)."""
    matmul = torch.backends.cuda.matmul
    name, value = ("fp32_precision", "tf32" if on else "ieee") if hasattr(matmul, "fp32_precision") \
        else ("allow_tf32", on)
    previous = getattr(matmul, name)
    if previous == value:
        yield
        return
    setattr(matmul, name, value)
    try:
        yield
    finally:
        setattr(matmul, name, previous)


def _mm(a: Tensor, b: Tensor, precision: str, out: Tensor | None = None) -> Tensor:
    """a @ b in the given precision (module doc); float32 result, into `out` if given."""
    if precision == "bf16":
        a16, b16 = a.to(torch.bfloat16), b.to(torch.bfloat16)
        if a.is_cuda:  # bfloat16 tensor cores, float32 accumulation and result (a bf16 result would tie scores)
            product = torch.mm(a16, b16, out_dtype=torch.float32)
        else:  # no such kernel on the CPU: the same rounded inputs, multiplied in float32
            product = torch.mm(a16.float(), b16.float())
        return product if out is None else out.copy_(product)
    with _tf32(precision == "tf32") if a.is_cuda else contextlib.nullcontext():  # fp32 means no TF32 either
        return torch.mm(a, b) if out is None else torch.mm(a, b, out=out)


def _item_major_mm(s: Tensor, rows: Tensor, precision: str) -> Tensor:
    """s @ rowsᵀ [B, N] as a view of rows @ sᵀ [N, B] (module doc)."""
    return _mm(rows, s.t(), precision).t()


def keep_mask(shape, p: float, device=None, chunk: int = 1 << 18) -> Tensor:
    """Float32 dropout mask, 1 = kept, each entry independently dropped with probability p rounded to a
    multiple of 2^-16 (|error| <= 7.6e-6). On the CPU, random number generation is the cost (more than
    the forward scoring product for Atten-Mixer's 43k x 256 table), so each 64-bit draw of numpy's PCG64
    (faster per bit than torch's CPU generator) is cut into four 16-bit uniforms; the PCG64 seed is drawn
    from torch's default generator, so `torch.manual_seed` and checkpoints of torch's RNG state fix the
    mask. Draws go `chunk` words at a time, so they stay in cache. Elsewhere `bernoulli_`."""
    device = torch.device("cpu") if device is None else torch.device(device)
    if device.type != "cpu":
        return torch.empty(shape, device=device).bernoulli_(1.0 - p)
    out = torch.empty(shape)
    flat = out.view(-1)
    n = flat.numel()
    threshold = round(p * 65536) - 32768  # a signed 16-bit lane is below it with probability round(p·2^16)/2^16
    bits = np.random.PCG64(int(torch.randint(0, 2**63 - 1, (), dtype=torch.int64)))
    for start in range(0, n, 4 * chunk):
        m = min(4 * chunk, n - start)
        lanes = torch.from_numpy(bits.random_raw((m + 3) // 4).view(np.int16))
        torch.ge(lanes[:m], threshold, out=flat[start : start + m])
    return out


def tail_of(items: Tensor) -> tuple[Tensor, int]:
    """(table, first) with items = table[first:] when `items` is a differentiable tail slice of a
    contiguous 2-D tensor that requires grad (so its gradient would flow into the table anyway); else
    (items, 0)."""
    base = items._base
    if (base is None or items.grad_fn is None or not base.requires_grad or base.dim() != 2 or items.dim() != 2
            or base.shape[1] != items.shape[1] or not (base.is_contiguous() and items.is_contiguous())):
        return items, 0
    first, rest = divmod(items.storage_offset() - base.storage_offset(), base.stride(0))
    if rest or first < 0 or first + items.shape[0] != base.shape[0]:
        return items, 0
    return base, first


def _table_grad(table: Tensor, first: int, g: Tensor, s: Tensor, precision: str) -> tuple[Tensor, Tensor]:
    """A gradient for the whole table, rows before `first` zero, and its rows from `first` set to gᵀ @ s."""
    grad = table.new_empty(table.shape)
    grad[:first].zero_()
    rows = grad[first:]
    _mm(g.t(), s, precision, out=rows)
    return grad, rows


class _TableScores(torch.autograd.Function):
    @staticmethod
    def forward(ctx, s: Tensor, table: Tensor, first: int, precision: str):
        ctx.first, ctx.precision = first, precision
        ctx.save_for_backward(s, table)
        return _item_major_mm(s, table[first:], precision)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: Tensor):
        s, table = ctx.saved_tensors
        grad_s = _mm(grad, table[ctx.first :], ctx.precision) if ctx.needs_input_grad[0] else None
        grad_table = _table_grad(table, ctx.first, grad, s, ctx.precision)[0] if ctx.needs_input_grad[1] else None
        return grad_s, grad_table, None, None


def _needs_grad(s: Tensor, items: Tensor, out: Tensor | None, name: str) -> bool:
    needs = torch.is_grad_enabled() and (s.requires_grad or items.requires_grad)
    if needs and out is not None:
        raise RuntimeError(f"{name}(out=...) is for evaluation without gradients")
    return needs


def table_scores(s: Tensor, items: Tensor, precision: str = "fp32", out: Tensor | None = None) -> Tensor:
    """s @ itemsᵀ; the same values and gradients, with the table's gradient in one piece (module doc).
    `out`: a [B, N] buffer to write the scores into (no-grad evaluation only)."""
    if not _needs_grad(s, items, out, "table_scores"):
        return _mm(s, items.t(), precision, out=out)
    return _TableScores.apply(s, *tail_of(items), precision)


def _rows(items: Tensor, centre: bool) -> tuple[Tensor, Tensor]:
    """f(items) and its row norms."""
    rows = items - items.mean(dim=-1, keepdim=True) if centre else items
    return rows, rows.norm(dim=-1)


def _column_scaled(items: Tensor, sigma: float, centre: bool, keep_m: Tensor | None, keep: float):
    """What the scores are made of (module doc): f(items), its row norms, the column scales c and the
    masked rows f(items) ⊙ m."""
    rows, norm = _rows(items, centre)
    kept = rows * keep_m if keep_m is not None else rows
    return rows, norm, (sigma / keep) / norm.clamp_min(EPS), kept


class _ColumnScaledScores(torch.autograd.Function):
    @staticmethod
    def forward(ctx, s: Tensor, table: Tensor, first: int, sigma: float, centre: bool, keep_m: Tensor | None,
                keep: float, precision: str):
        with torch.no_grad():
            rows, norm, col, kept = _column_scaled(table[first:], sigma, centre, keep_m, keep)
            scores = _item_major_mm(s, kept, precision).mul_(col)
        ctx.centre, ctx.first, ctx.precision = centre, first, precision
        # The backward scales by `col` on the smaller side: the [B, N] gradient while B <= d, else the
        # [N, d] table (then it needs no copy of the scores either).
        ctx.save_for_backward(s, table, rows, kept, keep_m, norm, col, scores if s.shape[0] <= s.shape[1] else None)
        return scores

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: Tensor):
        s, table, rows, kept, keep_m, norm, col, scores = ctx.saved_tensors
        grad_s = grad_table = None
        if scores is not None:
            g = grad * col
            if ctx.needs_input_grad[0]:
                grad_s = _mm(g, kept, ctx.precision)
            if ctx.needs_input_grad[1]:
                grad_table, grad_rows = _table_grad(table, ctx.first, g, s, ctx.precision)
                weighted = (grad * scores).sum(0)  # Σ_b G·scores per item
        else:
            if ctx.needs_input_grad[0]:
                grad_s = _mm(grad, kept * col[:, None], ctx.precision)
            if ctx.needs_input_grad[1]:
                grad_table, grad_rows = _table_grad(table, ctx.first, grad, s, ctx.precision)
                grad_rows.mul_(col[:, None])
                weighted = (kept * grad_rows).sum(1)  # the same Σ_b G·scores, from the table side
        if grad_table is not None:
            # gradient through the norm, per row: k_j · f(v_j); zero where the clamp is active
            k = weighted.div_(norm.square().clamp_min(EPS * EPS)).neg_().masked_fill_(norm < EPS, 0.0)
            if keep_m is not None:
                grad_rows.mul_(keep_m)
            grad_rows.addcmul_(rows, k[:, None])
            if ctx.centre:
                grad_rows.sub_(grad_rows.mean(dim=-1, keepdim=True))
        return grad_s, grad_table, None, None, None, None, None, None


def normalised_scores(s: Tensor, items: Tensor, sigma: float, centre: bool = False, dropout: float = 0.0,
                      training: bool = False, out: Tensor | None = None, precision: str = "fp32") -> Tensor:
    """σ · s @ dropout(f(items) / ‖f(items)‖)ᵀ with f = centring (x - mean x) if `centre` else identity;
    dropout as nn.Dropout(dropout) in training.
    `out`: a [B, N] buffer to write the scores into (no-grad evaluation only)."""
    keep_m, keep = None, 1.0
    if training and dropout > 0:
        keep = 1.0 - dropout
        if keep > 0:
            keep_m = keep_mask(items.shape, dropout, items.device)
        else:  # nn.Dropout(1) zeroes everything
            keep_m, keep = torch.zeros(items.shape, device=items.device), 1.0
    if not _needs_grad(s, items, out, "normalised_scores"):
        _, _, col, kept = _column_scaled(items, float(sigma), centre, keep_m, keep)
        return _mm(s, kept.t(), precision, out=out).mul_(col)
    return _ColumnScaledScores.apply(s, *tail_of(items), float(sigma), bool(centre), keep_m, keep, precision)


def _row_max(scores: Tensor) -> Tensor:
    """scores.amax(dim=1, keepdim=True). Over item-major scores that is a reduction over the outer memory
    dimension, which torch's CPU kernel does more slowly than a max over blocks of 16 rows first."""
    columns = scores.t()
    if scores.is_cuda or not columns.is_contiguous() or columns.shape[0] < 16:
        return scores.amax(dim=1, keepdim=True)
    n = columns.shape[0] // 16 * 16
    top = columns[:n].view(-1, 16, columns.shape[1]).amax(1).amax(0)
    if n < columns.shape[0]:
        top = torch.maximum(top, columns[n:].amax(0))
    return top[:, None]


class _CrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, scores: Tensor, target: Tensor) -> Tensor:
        top = _row_max(scores)
        e = torch.sub(scores, top).exp_()
        total = e.sum(dim=1)
        lse = total.log().add_(top.squeeze(1))
        ctx.save_for_backward(e, total, target)
        return (lse - scores.gather(1, target[:, None]).squeeze(1)).mean()

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: Tensor):
        # e is turned into the gradient in place: a second backward through the same graph finds it
        # modified and autograd raises, instead of reusing it
        e, total, target = ctx.saved_tensors
        scale = grad / e.shape[0]
        g = e.div_((total / scale)[:, None])
        g[torch.arange(e.shape[0], device=e.device), target] -= scale
        return g, None


def cross_entropy(scores: Tensor, target: Tensor) -> Tensor:
    """F.cross_entropy(scores, target) (mean reduction) with a one-pass backward (module doc)."""
    if not torch.is_grad_enabled() or not scores.requires_grad:
        return F.cross_entropy(scores, target)
    return _CrossEntropy.apply(scores, target)
