"""Full-ranking evaluation with an explicit tie rule.

For every example the target is ranked against *all* items 1..N (never sampled, padding excluded):
- optimistic rank  = 1 + #(score > target score)
- pessimistic rank = optimistic + #(score == target score, other items)
- expected rank under uniformly random tie-breaking = the mean of the two; the headline metrics are the
  *expected* HR/MRR/NDCG@K over that uniform tie-breaking (McSherry & Najork 2008), computed exactly.
A non-finite target score gets the worst rank N. A constant scorer therefore scores at random level.
Scores are computed in item chunks so memory stays bounded for large catalogues (two passes when the
catalogue does not fit one chunk: first the target scores, then the counts, from identical computations).
Every batch's scores go into one reused buffer when the scorer (or a counting baseline) takes `out=`, and
the counts are taken a few rows at a time, so evaluation does not allocate per batch.
Metrics are means over examples (never per-batch averages), so they do not depend on the batch size.
A model with `sparse_scores(batch) -> (rows, background)` (the kNN, rule and popularity anchors) is
ranked without dense rows: every item off the sparse `rows` scores `background`, so the same counts
follow from the stored entries plus the background's share (`sparse_rank_counts`), ranks identical.
"""

from __future__ import annotations

import inspect
import time
from dataclasses import dataclass, field

import numpy as np
import scipy.sparse as sp
import torch

from .data.graphs import collate_examples

KS = (5, 10, 20)
MAX_SCORE_CELLS = 1 << 25  # B x chunk scores held at once (128 MiB of float32)
COUNT_CELLS = 1 << 18  # scores compared at once when counting (boolean temporaries stay in cache)


@dataclass
class EvalResult:
    metrics: dict  # expected metrics under random tie-breaking, x100: HR@K, MRR@K, NDCG@K
    ranks: np.ndarray  # float64 [examples] expected rank, in split order
    ranks_optimistic: np.ndarray  # int64
    ranks_pessimistic: np.ndarray  # int64
    tie_rate: float  # share of examples whose target ties with at least one other item
    nonfinite: int  # examples with a non-finite target score (ranked last)
    seconds: float
    metrics_pessimistic: dict = field(default_factory=dict)


def _cum_gain(n_items: int, k: int):
    """Prefix sums over positions 1..n of hit, reciprocal rank and DCG, zero beyond k."""
    pos = np.arange(1, n_items + 1, dtype=np.float64)
    inside = pos <= k
    hit = np.concatenate([[0.0], np.cumsum(inside)])
    rr = np.concatenate([[0.0], np.cumsum(np.where(inside, 1.0 / pos, 0.0))])
    dcg = np.concatenate([[0.0], np.cumsum(np.where(inside, 1.0 / np.log2(pos + 1.0), 0.0))])
    return hit, rr, dcg


def per_example(metric: str, optimistic, pessimistic=None, n_items=None) -> np.ndarray:
    """Per-example value in [0, 1] of 'HR@K', 'MRR@K' or 'NDCG@K': with both rank bounds, the exact
    expectation over a uniformly random order of the tied items; with one, that rank's value. Its mean
    is the metric, so significance tests run on exactly what the tables report."""
    name, _, k = metric.partition("@")
    if name not in ("HR", "MRR", "NDCG") or not k.isdigit():
        raise ValueError(f"unknown metric '{metric}'; use HR@K, MRR@K or NDCG@K")
    lo = np.asarray(optimistic, dtype=np.int64)
    hi = lo if pessimistic is None else np.asarray(pessimistic, dtype=np.int64)
    n = int(max(hi.max(initial=1), n_items or 0))
    cum = dict(zip(("HR", "MRR", "NDCG"), _cum_gain(n, int(k))))[name]
    return (cum[hi] - cum[lo - 1]) / (hi - lo + 1)


def metrics_from_ranks(optimistic, pessimistic=None, ks=KS, n_items=None) -> dict:
    """HR@K, MRR@K, NDCG@K (x100), averaged over examples (see `per_example`)."""
    if len(optimistic) == 0:
        return {f"{m}@{k}": float("nan") for k in ks for m in ("HR", "MRR", "NDCG")}
    return {f"{m}@{k}": float(np.mean(per_example(f"{m}@{k}", optimistic, pessimistic, n_items)) * 100.0)
            for k in ks for m in ("HR", "MRR", "NDCG")}


class ScoreBuffer:
    """One reusable score block: evaluation writes every batch's scores into the same memory instead of
    allocating a fresh [B, N] matrix per batch (on CPU a block that size is mmap'ed and page-faulted in
    anew each time, which cost more system time than the scoring itself)."""

    def __init__(self):
        self.memory = None

    def take(self, rows: int, cols: int, dtype, device) -> torch.Tensor:
        need = rows * cols
        m = self.memory
        if m is None or m.numel() < need or m.dtype != dtype or m.device != torch.device(device):
            self.memory = m = torch.empty(need, dtype=dtype, device=device)
        return m[:need].view(rows, cols)


def accepts_out(fn) -> bool:
    """Whether a scorer/model `forward` takes `out=` (scores written into a given [B, n] tensor)."""
    forward = getattr(fn, "forward", fn)
    try:
        return "out" in inspect.signature(forward).parameters
    except (TypeError, ValueError):
        return False


def _score_fn(model, batch, n_items: int, buffer: ScoreBuffer | None = None):
    """A function (c0, c1) -> scores [B, c1 - c0] for items c0+1..c1. With a `buffer`, scorers and models
    that accept `out=` write into it (the returned scores are valid until the next call)."""
    B = batch.num_graphs
    if hasattr(model, "session_repr"):
        s, items, _ = model.session_repr(batch)
        scorer = model.scorer
        if buffer is not None and s.dtype == items.dtype and accepts_out(scorer):
            return lambda c0, c1: scorer(s, items[c0:c1], out=buffer.take(B, c1 - c0, s.dtype, s.device))
        return lambda c0, c1: scorer(s, items[c0:c1])
    if buffer is not None and accepts_out(model):  # counting baselines: float32 scores by contract
        scores = model(batch, out=buffer.take(B, n_items, torch.float32, batch.x.device))
    else:
        scores = model(batch)
    return lambda c0, c1: scores[:, c0:c1]


def _count_block(sc: torch.Tensor, t: torch.Tensor, greater: torch.Tensor, equal: torch.Tensor) -> None:
    """Add #(score > t) and #(score == t) per row. On CPU a few rows at a time: the boolean temporaries
    of each block stay small (cache-resident, reused by malloc) instead of two fresh [B, n] matrices that
    are page-faulted in per batch; an accelerator's caching allocator reuses them, so one block there."""
    rows = max(1, COUNT_CELLS // max(sc.shape[1], 1)) if sc.device.type == "cpu" else sc.shape[0]
    for r0 in range(0, sc.shape[0], rows):
        block, tb = sc[r0 : r0 + rows], t[r0 : r0 + rows]
        greater[r0 : r0 + rows] += (block > tb).sum(1)
        equal[r0 : r0 + rows] += (block == tb).sum(1)


def rank_counts(score, target0: torch.Tensor, n_items: int, chunk: int):
    """(#greater, #equal-excluding-target, target-finite) per row; `score(c0, c1)` gives item chunks.
    The target score and the counts come from the same chunk computation (a repeated chunk is computed
    identically), so a target always ties with itself and nothing else spuriously."""
    B = target0.numel()
    rows = torch.arange(B, device=target0.device)
    bounds = [(c0, min(c0 + chunk, n_items)) for c0 in range(0, n_items, chunk)]
    if len(bounds) == 1:
        cached = score(0, n_items)
        target = cached[rows, target0]
    else:
        cached, target = None, None
        for c0, c1 in bounds:
            inside = (target0 >= c0) & (target0 < c1)
            if inside.any():
                sc = score(c0, c1)
                if target is None:  # in the scores' own dtype: a float64 model keeps its precision
                    target = torch.empty(B, device=target0.device, dtype=sc.dtype)
                target[inside] = sc[rows[inside], target0[inside] - c0]
    greater = torch.zeros(B, dtype=torch.long, device=target0.device)
    equal = torch.zeros_like(greater)
    t = target.unsqueeze(1)
    for c0, c1 in bounds:
        _count_block(cached if cached is not None else score(c0, c1), t, greater, equal)
    finite = torch.isfinite(target)
    return greater, (equal - 1).clamp_min(0), finite


class SortedBackground:
    """The sorted copy of a background row, kept while the model returns an equal row (a comparison per
    batch instead of a sort)."""

    def __init__(self):
        self.row = self.sorted = None

    def __call__(self, row: np.ndarray) -> np.ndarray:
        if self.row is None or not np.array_equal(row, self.row):
            self.row, self.sorted = row.copy(), np.sort(row)
        return self.sorted


def sparse_rank_counts(rows: sp.csr_matrix, background, target0: np.ndarray, sorted_background=None):
    """`rank_counts` of scores given as sparse `rows` [B, N] (no duplicate entries) over a `background`,
    the score of every item off them: a number, or a finite row [N] with its sorted copy
    `sorted_background`. Compared in the rows' dtype, as the dense scores would be."""
    B, n_items = rows.shape
    stored = np.diff(rows.indptr)
    row_of = np.repeat(np.arange(B), stored)
    cols, data = rows.indices, rows.data
    scalar = np.ndim(background) == 0
    t = np.full(B, background, dtype=data.dtype) if scalar else background[target0].astype(data.dtype)
    hit = np.flatnonzero(cols == target0[row_of])  # the target's stored entry, where it has one
    t[row_of[hit]] = data[hit]
    tc = t[row_of]
    greater = np.bincount(row_of[data > tc], minlength=B)
    equal = np.bincount(row_of[data == tc], minlength=B)
    # Every other item scores the background: all N items' share, less that of the items stored.
    if scalar:
        rest = n_items - stored
        greater += rest * (background > t)
        equal += rest * (background == t)
    else:
        right = np.searchsorted(sorted_background, t, side="right")
        replaced = background[cols]
        greater += n_items - right - np.bincount(row_of[replaced > tc], minlength=B)
        equal += right - np.searchsorted(sorted_background, t, side="left") - np.bincount(
            row_of[replaced == tc], minlength=B)
    return greater, np.maximum(equal - 1, 0), np.isfinite(t)


def _sparse_counts(model, batch, sorter: SortedBackground):
    """`rank_counts` of a model with `sparse_scores`, as tensors on the batch's device."""
    rows, background = model.sparse_scores(batch)
    sorted_background = None if np.ndim(background) == 0 else sorter(background)
    counts = sparse_rank_counts(rows, background, (batch.y - 1).cpu().numpy(), sorted_background)
    return tuple(torch.from_numpy(np.asarray(c)).to(batch.y.device) for c in counts)


def _sparse_scores_match_forward(model) -> bool:
    """Whether `model.sparse_scores` gives its `forward`'s scores: defined by the class that defines
    `forward` or below it (a subclass that overrides only `forward` is ranked by its `forward`)."""
    mro = type(model).__mro__
    owner = next((c for c in mro if "sparse_scores" in vars(c)), None)
    return owner is not None and issubclass(owner, next(c for c in mro if "forward" in vars(c)))


@torch.no_grad()
def evaluate(model, split, n_items, batch_size=500, device="cpu", extra=None, ks=KS, order=None,
             sparse=True) -> EvalResult:
    """Rank every example of `split`. `order` (a permutation) evaluates in another order; the ranks
    returned are always in split order. `sparse=False` ranks dense score rows even for a model with
    `sparse_scores` (the same ranks)."""
    start = time.perf_counter()
    was_training = getattr(model, "training", False)
    model.eval()
    extra = tuple(getattr(model, "extra_graphs", ()) if extra is None else extra)
    idx_order = np.arange(len(split)) if order is None else np.asarray(order)
    # Ranks stay on the device until the end: one transfer, not a synchronising copy per batch.
    opt_d = torch.empty(len(split), dtype=torch.long, device=device)
    pes_d = torch.empty_like(opt_d)
    bad_d = torch.zeros(len(split), dtype=torch.bool, device=device)
    chunk = max(1, min(n_items, MAX_SCORE_CELLS // max(batch_size, 1)))
    buffer, sorter = ScoreBuffer(), SortedBackground()
    use_sparse = sparse and _sparse_scores_match_forward(model)
    for b0 in range(0, len(split), batch_size):
        idx = idx_order[b0 : b0 + batch_size]
        batch = collate_examples(split, idx, n_items, extra).to(device)
        if use_sparse:
            greater, equal, finite = _sparse_counts(model, batch, sorter)
        else:
            greater, equal, finite = rank_counts(_score_fn(model, batch, n_items, buffer), batch.y - 1, n_items, chunk)
        at = torch.as_tensor(idx, dtype=torch.long).to(device, non_blocking=True)
        worst = torch.full_like(greater, n_items)
        opt_d[at] = torch.where(finite, 1 + greater, worst)
        pes_d[at] = torch.where(finite, 1 + greater + equal, worst)
        bad_d[at] = ~finite
    opt, pes, bad = opt_d.cpu().numpy(), pes_d.cpu().numpy(), bad_d.cpu().numpy()
    if was_training:
        model.train()
    return EvalResult(
        metrics=metrics_from_ranks(opt, pes, ks, n_items),
        ranks=(opt + pes) / 2.0,
        ranks_optimistic=opt,
        ranks_pessimistic=pes,
        tie_rate=float(np.mean(pes > opt)) if len(opt) else 0.0,
        nonfinite=int(bad.sum()),
        seconds=time.perf_counter() - start,
        metrics_pessimistic=metrics_from_ranks(pes, None, ks, n_items),
    )


def bucket_metrics(optimistic, pessimistic, lengths, edges=(5,), ks=(20,)) -> dict:
    """Metrics per prefix-length bucket: edges (5,) gives '<=5' (short) and '>5' (long) as in paper Fig. 7;
    finer edges e.g. (2, 3, 5, 8, 12) give more buckets."""
    lengths = np.asarray(lengths)
    out, lo = {}, 0
    for hi in list(edges) + [None]:
        mask = (lengths > lo) & (lengths <= hi) if hi is not None else lengths > lo
        label = f"<={hi}" if lo == 0 else (f"{lo + 1}-{hi}" if hi is not None else f">{lo}")
        if mask.any():
            out[label] = dict(metrics_from_ranks(np.asarray(optimistic)[mask], np.asarray(pessimistic)[mask], ks),
                              examples=int(mask.sum()))
        lo = hi if hi is not None else lo
    return out


def audit_order_invariance(model, split, n_items, batch_size=500, device="cpu", seed=0) -> dict:
    """Evaluate twice — in split order and shuffled with another batch size — and compare per-example
    ranks. Any difference beyond float noise means the model mixes information across a batch
    (leakage, evaluation-pitfalls item 4)."""
    a = evaluate(model, split, n_items, batch_size, device)
    perm = np.random.default_rng(seed).permutation(len(split))
    b = evaluate(model, split, n_items, max(1, batch_size // 3 + 1), device, order=perm)
    diff = np.abs(a.ranks - b.ranks)
    return {"examples": len(split), "differing": int((diff > 0).sum()), "max_rank_difference": float(diff.max(initial=0))}


class Evaluator:
    """Full-ranking, tie-aware evaluation that any model or score function can use (after OGB's
    `Evaluator`): the target is ranked against every item 1..n_items, ties count as a uniformly random
    order, and the metrics are HR@K, MRR@K and NDCG@K (x100) averaged over examples.

    >>> ev = Evaluator(n_items=3, ks=(1, 2))
    >>> ev.eval(torch.tensor([[0.1, 0.9, 0.5]]), torch.tensor([2]))["HR@1"]
    100.0

    Args:
        n_items: the catalogue size; scores are [B, n_items] for items 1..n_items, targets in 1..n_items.
        ks: the cut-offs K.
    """

    def __init__(self, n_items: int, ks=KS):
        if n_items < 1:
            raise ValueError(f"n_items must be at least 1, not {n_items}")
        self.n_items, self.ks = int(n_items), tuple(int(k) for k in ks)

    def ranks(self, scores: torch.Tensor, target: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
        """(optimistic, pessimistic) rank of each target; a non-finite target score ranks last."""
        scores, target = torch.as_tensor(scores), torch.as_tensor(target, dtype=torch.long)
        if scores.dim() != 2 or scores.shape[1] != self.n_items or target.shape != (scores.shape[0],):
            raise ValueError(f"expected scores [B, {self.n_items}] and targets [B], got {tuple(scores.shape)} "
                             f"and {tuple(target.shape)}")
        if len(target) and (int(target.min()) < 1 or int(target.max()) > self.n_items):
            raise ValueError(f"targets must lie in 1..{self.n_items}")
        greater, equal, finite = rank_counts(lambda c0, c1: scores[:, c0:c1], target - 1, self.n_items,
                                             self.n_items)
        worst = torch.full_like(greater, self.n_items)
        opt = torch.where(finite, 1 + greater, worst)
        return opt.cpu().numpy(), torch.where(finite, opt + equal, worst).cpu().numpy()

    def eval(self, scores: torch.Tensor, target: torch.Tensor) -> dict:
        """Metrics of a [B, n_items] score matrix against targets [B] (one batch or a whole split)."""
        return metrics_from_ranks(*self.ranks(scores, target), self.ks, self.n_items)

    def eval_split(self, model, split, batch_size: int = 500, device: str = "cpu") -> EvalResult:
        """Rank every example of a `Split` with `model`: an `SBRModel`, a counting baseline, or any
        function batch -> [B, n_items] scores (batches as `sbr_bench.data.graphs.collate_examples` makes)."""
        if not hasattr(model, "eval"):
            model = _ScoreFunction(model)
        return evaluate(model, split, self.n_items, batch_size=batch_size, device=device, ks=self.ks)


class _ScoreFunction:
    """A plain score function seen as a model (`evaluate` calls `eval()` and `forward(batch)`)."""

    def __init__(self, fn):
        self.fn, self.training = fn, False

    def eval(self):
        return self

    def __call__(self, batch):
        return self.fn(batch)
