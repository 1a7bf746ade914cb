"""Where an epoch's time goes, against the unavoidable cost of a training step (`run --profile`, benchmarks).

Scoring bound. Every SBR model scores each session of a batch against every item: s [B, d] @ E.T
[d, |V|], and backpropagates through it. `scoring_bound` times exactly those three matrix products:

- forward   scores = s @ E.T      [B, d] x [d, |V|]
- backward  grad_s = G @ E        [B, |V|] x [|V|, d]
- backward  grad_E = G.T @ s      [|V|, B] x [B, d]

on random float32 tensors of the epoch's shapes, on the given device, with the current torch thread
setting and preallocated outputs (so allocation, softmax/cross-entropy, normalisation, the encoder, the
optimizer and data loading are all outside it: it is the products alone, a lower bound, not a model).
An epoch has at most two batch shapes (B, and the smaller last batch), so each shape is timed `repeats`
times after one warm-up, its median taken, and multiplied by how many batches of that shape the epoch
has: seconds per epoch without running an epoch. `profile_model` times it in the same process right
after the model's epoch, so both see the same machine load; `ratio = epoch train time / bound` says
how far a model is from that floor (the issue's target: within 2x on CPU).

Peak memory. On CUDA: torch's peak allocated bytes during the training epoch. On CPU, the process peak
RSS (getrusage) only grows, so across models in one process it says nothing per model; on Linux the
peak ("VmHWM") can be reset through /proc/self/clear_refs, and `reset_peak_rss`/`peak_rss_mb` use it so
that each model's number is the process peak while that model trained one epoch and validated. It
includes what was resident before (interpreter, dataset): the "base" RSS at the reset is reported too.
"""

from __future__ import annotations

import math
import re
import statistics
import tempfile
import time
from dataclasses import dataclass, field

import numpy as np
import torch

_HWM = re.compile(r"VmHWM:\s+(\d+)\s+kB")
_RSS = re.compile(r"VmRSS:\s+(\d+)\s+kB")


# --- scoring bound -----------------------------------------------------------------------------------

@dataclass
class ScoringBound:
    """The three scoring products of one epoch, timed alone (see the module doc)."""

    seconds: float  # per epoch
    batch_sizes: dict  # {B: number of batches of that size in the epoch}
    per_batch_s: dict  # {B: median seconds of the three products for one batch of size B}
    dim: int
    n_items: int
    flops: float  # 3 products x 2·B·d·|V| (a multiply-add = 2 flops), summed over the epoch's batches
    repeats: int
    device: str = "cpu"
    threads: int = field(default_factory=torch.get_num_threads)

    @property
    def gflops_per_s(self) -> float:
        return self.flops / max(self.seconds, 1e-12) / 1e9


def epoch_batch_sizes(n_examples: int, batch_size: int) -> dict:
    """{batch size: count} of one shuffled training epoch, by ExampleLoader's rule (a last batch of one
    example joins the one before)."""
    if n_examples < 1 or batch_size < 1:
        raise ValueError(f"need at least one example and a batch size >= 1 (got {n_examples}, {batch_size})")
    full, rest = divmod(int(n_examples), int(batch_size))
    sizes = {batch_size: full} if full else {}
    if rest == 1 and full:
        sizes[batch_size] -= 1
        sizes[batch_size + 1] = 1
        if sizes[batch_size] == 0:
            del sizes[batch_size]
    elif rest:
        sizes[rest] = sizes.get(rest, 0) + 1
    return sizes


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_scoring_products(batch: int, dim: int, n_items: int, device="cpu", repeats: int = 5,
                          dtype=torch.float32) -> float:
    """Median seconds of forward + both backward scoring products for one batch of `batch` sessions."""
    device = torch.device(device)
    gen = torch.Generator(device="cpu").manual_seed(0)
    s = torch.randn(batch, dim, generator=gen, dtype=dtype).to(device)
    items = torch.randn(n_items, dim, generator=gen, dtype=dtype).to(device)
    grad = torch.randn(batch, n_items, generator=gen, dtype=dtype).to(device)
    scores = torch.empty(batch, n_items, dtype=dtype, device=device)
    grad_s = torch.empty(batch, dim, dtype=dtype, device=device)
    grad_items = torch.empty(n_items, dim, dtype=dtype, device=device)
    times = []
    for rep in range(repeats + 1):  # the first is a warm-up (page faults, BLAS/cuBLAS initialisation)
        _sync(device)
        start = time.perf_counter()
        torch.matmul(s, items.t(), out=scores)
        torch.matmul(grad, items, out=grad_s)
        torch.matmul(grad.t(), s, out=grad_items)
        _sync(device)
        if rep:
            times.append(time.perf_counter() - start)
    return statistics.median(times)


def scoring_bound(n_examples: int, batch_size: int, dim: int, n_items: int, device="cpu",
                  repeats: int = 5) -> ScoringBound:
    """Seconds per epoch of the scoring products alone for `n_examples` in batches of `batch_size`."""
    if repeats < 1:
        raise ValueError(f"repeats must be at least 1, got {repeats}")
    sizes = epoch_batch_sizes(n_examples, batch_size)
    per_batch = {b: time_scoring_products(b, dim, n_items, device, repeats) for b in sizes}
    return ScoringBound(
        seconds=sum(per_batch[b] * count for b, count in sizes.items()), batch_sizes=sizes,
        per_batch_s=per_batch, dim=int(dim), n_items=int(n_items),
        flops=float(sum(3 * 2 * b * dim * n_items * count for b, count in sizes.items())),
        repeats=repeats, device=str(device))


# --- per-model peak memory on CPU --------------------------------------------------------------------

def _status_kb(pattern) -> int | None:
    try:
        with open("/proc/self/status") as f:
            m = pattern.search(f.read())
    except OSError:
        return None
    return int(m.group(1)) if m else None


def reset_peak_rss() -> bool:
    """Reset this process's peak RSS to its current RSS (Linux >= 4.0); False where not possible."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        return False
    return _status_kb(_HWM) is not None


def current_rss_mb() -> float | None:
    kb = _status_kb(_RSS)
    return None if kb is None else kb / 1024.0


def peak_rss_mb() -> float:
    """Peak RSS since the last `reset_peak_rss` (else since the process started), in MiB."""
    kb = _status_kb(_HWM)
    if kb is None:
        import resource

        kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # Linux reports KiB; never resets
    return kb / 1024.0


# --- one epoch of one model --------------------------------------------------------------------------

def _capture_scoring_shape(model) -> tuple[dict, object]:
    """Record (B, d, |V|) of the first scorer call; the hook removes itself after it."""
    shape: dict = {}
    scorer = getattr(model, "scorer", None)
    if scorer is None:
        return shape, None

    def hook(module, inputs, output):
        s, items = inputs[0], inputs[1]
        shape.update(batch=int(s.shape[0]), dim=int(s.shape[1]), n_items=int(items.shape[0]))
        handle.remove()

    handle = scorer.register_forward_hook(hook)
    return shape, handle


def profile_model(name: str, cfg: dict, dataset, device, seed: int = 0, deterministic: bool = False,
                  progress: bool = False, bound_repeats: int = 5) -> dict:
    """Train `name` one epoch (validation included, no test), as `sbr-bench run` trains it, and return
    its timing row: phases, examples/s, peak memory, the scoring bound and train time / bound."""
    from .models.registry import build_model
    from .runs import Run
    from .training import TrainingFailed, seed_everything, train_model

    device = torch.device(device)
    row: dict = {"model": name, "device": str(device), "threads": torch.get_num_threads()}
    base_mb = current_rss_mb()  # before the model exists: its parameters count as its memory
    row["peak_kind"] = "rss" if device.type == "cpu" and reset_peak_rss() else "rss-process"
    seed_everything(seed, deterministic)
    model, _ = build_model(name, dataset.n_items, cfg)
    shape, handle = _capture_scoring_shape(model)
    with tempfile.TemporaryDirectory(prefix="sbr-bench-profile-") as tmp:
        try:
            out = train_model(model, dataset, cfg, Run(f"{tmp}/{name}", name, seed), device=device, seed=seed,
                              progress=progress, max_epochs=1, evaluate_test=False, deterministic=deterministic)
        except Exception as e:  # noqa: BLE001 - a broken model must not stop the profile of the others
            reason = e.reason if isinstance(e, TrainingFailed) else f"{type(e).__name__}: {e}"
            return dict(row, status="failed", reason=reason)
        finally:
            if handle is not None:
                handle.remove()
    row.update(base_rss_mb=base_mb, peak_mb=peak_rss_mb())
    if out.get("status") != "selected":  # a baseline: fitted, not trained
        return dict(row, status="fitted", fit_s=out["timing"]["fit_s"], eval_s=out["timing"]["eval_median_s"])
    r = out["history"][0]
    t = r["time"]
    row.update(status="trained", train_s=t["train"], data_s=t["data"], forward_s=t["forward"],
               backward_s=t["backward"], eval_s=t["eval"], examples=r["examples"], batches=r["batches"],
               examples_per_s=r["examples_per_s"], valid=r.get("valid"))
    if "peak_gpu_mb" in r:
        row.update(peak_kind="cuda", peak_mb=r["peak_gpu_mb"], peak_gpu_reserved_mb=r.get("peak_gpu_reserved_mb"))
    batch = int(cfg["batch_size"])
    dim = shape.get("dim", getattr(getattr(model, "embedding", None), "embedding_dim", cfg.get("dim")))
    n_items = shape.get("n_items", dataset.n_items)
    bound = scoring_bound(r["examples"], batch, dim, n_items, device, repeats=bound_repeats)
    row.update(batch_size=batch, dim=int(dim), n_items=int(n_items), bound_s=bound.seconds,
               bound_gflops_per_s=bound.gflops_per_s, ratio=t["train"] / bound.seconds)
    return row


# --- tables ------------------------------------------------------------------------------------------

TABLE_HEADER = ["model", "train s", "data", "forward", "backward+step", "eval", "ex/s", "peak MB",
                "bound s", "train/bound"]


def _f(value, fmt: str) -> str:
    return "" if value is None or (isinstance(value, float) and not math.isfinite(value)) else format(value, fmt)


def _sec(value) -> str:
    return "" if value is None else f"{value:.2f}" if value >= 1 else f"{value:.3g}"


def _peak(row: dict) -> str:
    peak, base = row.get("peak_mb"), row.get("base_rss_mb")
    if peak is None:
        return ""
    if row.get("peak_kind") == "rss" and base is not None:
        return f"{peak:.0f} (+{peak - base:.0f})"
    return f"{peak:.0f}"


def table_row(row: dict) -> list[str]:
    name = row["model"] + (f" [{row['variant']}]" if row.get("variant") else "")
    if row["status"] == "failed":
        return [name, "failed: " + row["reason"][:80]] + [""] * (len(TABLE_HEADER) - 2)
    peak = _peak(row)
    if row["status"] == "fitted":
        return [name, f"fit {row['fit_s']:.2f}", "", "", "", _f(row["eval_s"], ".2f"), "", peak, "", ""]
    return [name, _f(row["train_s"], ".2f"), _f(row["data_s"], ".2f"), _f(row["forward_s"], ".2f"),
            _f(row["backward_s"], ".2f"), _f(row["eval_s"], ".2f"), _f(row["examples_per_s"], ".0f"), peak,
            _sec(row.get("bound_s")), _f(row.get("ratio"), ".1f") + "x"]


def format_rows(rows: list[dict]) -> str:
    from .runs import format_table

    return format_table(TABLE_HEADER, [table_row(r) for r in rows], markdown=False)


def legend(rows: list[dict]) -> str:
    kinds = {r.get("peak_kind") for r in rows if r["status"] != "failed"}
    peak = {"cuda": "peak CUDA memory allocated during the training epoch",
            "rss": "peak resident memory of the process while this model trained and validated (Linux\n"
                   "  VmHWM, reset per model; includes the interpreter and the dataset; (+N) = above the RSS at the\n"
                   "  model's start)",
            "rss-process": "peak resident memory of the process so far (not resettable here: not per model)"}
    lines = ["train s = data + forward + backward+step (one training epoch); eval = the validation pass.",
             "bound s = the scoring products alone (s@E^T, G@E, G^T@s) for the model's batch sizes, dim and\n"
             "  item count, timed on random tensors (sbr_bench/profiling.py); train/bound = train s / bound s."]
    lines += [f"peak MB = {peak[k]}." for k in sorted(k for k in kinds if k)]
    return "\n".join(lines)


def ratio_line(rows: list[dict], a: str = "attenmixer", b: str = "srgnn") -> str | None:
    """'Atten-Mixer / SR-GNN epoch time' when both trained (per variant when rows carry one)."""
    lines = []
    for variant in dict.fromkeys(r.get("variant") for r in rows):
        got = {r["model"]: r for r in rows if r.get("variant") == variant and r["status"] == "trained"}
        if a in got and b in got:
            tag = f" [{variant}]" if variant else ""
            lines.append(f"{a} / {b} epoch train time{tag}: {got[a]['train_s'] / got[b]['train_s']:.2f}x")
    return "\n".join(lines) or None


# --- `sbr-bench run --profile` -------------------------------------------------------------------------

def profile(config: dict, dataset, device, progress: bool) -> int:
    """One epoch per model (first seed): phases, examples/s, peak memory, scoring bound; keeps nothing."""
    seed = config["seeds"][0]
    rows = [profile_model(name, config["cfg"][name], dataset, device, seed, config["deterministic"], progress)
            for name in config["models"]]
    print(f"\nOne epoch on {config['dataset']['resolved_name']} ({len(dataset.train)} training examples, "
          f"{dataset.n_items} items), device {device}, {torch.get_num_threads()} torch thread(s), seed {seed}:")
    print(format_rows(rows))
    print(legend(rows))
    line = ratio_line(rows)
    if line:
        print(line)
    return 0


def subset_split(split, n: int | None, seed: int = 0):
    """The first `n` examples of a fixed seeded permutation (kept in stored order); all when n is None."""
    from .data.sessions import Split

    if n is None or n >= len(split):
        return split
    if n < 1:
        raise ValueError(f"subset size must be at least 1, got {n}")
    idx = np.sort(np.random.default_rng(seed).permutation(len(split))[:n])
    return Split(split.sessions, split.ex_seq[idx], split.ex_len[idx])
