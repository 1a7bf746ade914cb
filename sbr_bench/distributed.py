"""Multi-process training under torchrun: the process group, who writes, and how a global batch is shared.

`torchrun --nproc_per_node N -m sbr_bench.cli run ...` starts N copies of `sbr-bench run`; torchrun sets
WORLD_SIZE, RANK and LOCAL_RANK in their environment. `session(device)` joins them into one process group
(gloo on CPU, NCCL on CUDA with one GPU per process: cuda:LOCAL_RANK). Without torchrun (or with one
process) nothing here is used and training is single-process, exactly as before.

How the math stays that of single-process training (see `training.py`):
- every rank draws the same epoch permutation (same seed) and takes a contiguous share of each GLOBAL batch
  (`shard`), so `batch_size` stays the global batch size;
- each rank's mean loss is scaled by `loss_weight` (its share of the global batch times the world size),
  so DDP's gradient average is the gradient of the global batch's mean loss, uneven shares included;
- evaluation is sharded the same way and the per-example ranks are gathered, so every rank computes the
  same metrics and takes the same model-selection and early-stopping decisions.
Only rank 0 (`is_main()`) writes records, checkpoints and prints.
"""

from __future__ import annotations

import contextlib
import os
from datetime import timedelta

import numpy as np
import torch

from .errors import ConfigError, UserError

ENV_KEYS = ("WORLD_SIZE", "RANK", "LOCAL_RANK")


def launched() -> bool:
    """True when torchrun (or `python -m torch.distributed.run`) started this process with others."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def active() -> bool:
    import torch.distributed as dist

    return dist.is_available() and dist.is_initialized()


def world() -> int:
    import torch.distributed as dist

    return dist.get_world_size() if active() else 1


def rank() -> int:
    import torch.distributed as dist

    return dist.get_rank() if active() else 0


def is_main() -> bool:
    return rank() == 0


def backend() -> str | None:
    import torch.distributed as dist

    return dist.get_backend() if active() else None


def describe() -> dict:
    """What the run records: world size and backend (None when single-process)."""
    return {"world_size": world(), "backend": backend()}


def barrier() -> None:
    if active():
        import torch.distributed as dist

        dist.barrier()


def broadcast_object(obj, src: int = 0):
    """`obj` of rank `src` on every rank (any picklable object)."""
    if not active():
        return obj
    import torch.distributed as dist

    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def all_gather_object(obj) -> list:
    """Every rank's `obj`, in rank order, on every rank."""
    if not active():
        return [obj]
    import torch.distributed as dist

    out = [None] * world()
    dist.all_gather_object(out, obj)
    return out


def all_reduce_sum(values: list[float], device) -> list[float]:
    """Element-wise sum over ranks of a few floats (float64 on `device`: NCCL needs CUDA tensors)."""
    if not active():
        return [float(v) for v in values]
    import torch.distributed as dist

    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t.tolist()


def sync_buffers(module: torch.nn.Module) -> None:
    """Rank 0's buffers (BatchNorm running statistics) on every rank: after the last training step each
    rank's buffers hold its own shard's update, and evaluation must use one model."""
    if not active():
        return
    import torch.distributed as dist

    for buf in module.buffers():
        dist.broadcast(buf.data, src=0)


def shard(index: np.ndarray, rank_: int, world_: int) -> np.ndarray:
    """The contiguous share of `index` that rank `rank_` of `world_` takes (sizes differ by at most one;
    the first `len % world` ranks take one more). The shares of all ranks cover `index` exactly once."""
    n = len(index)
    base, extra = divmod(n, world_)
    start = rank_ * base + min(rank_, extra)
    return index[start : start + base + (1 if rank_ < extra else 0)]


def loss_weight(n_local: int, n_global: int, world_: int) -> float:
    """Factor on a rank's mean loss so that DDP's gradient AVERAGE over ranks equals the gradient of the
    mean loss over the global batch: mean_r(w_r * g_r) = sum_r (n_r / n) g_r."""
    return n_local * world_ / n_global


def _device_for(name: str) -> torch.device:
    """The device of this process: CUDA means cuda:LOCAL_RANK (one GPU per process)."""
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ConfigError("device", f"CUDA is not available on this machine (torch {torch.__version__})", name)
        if name != "cuda":
            raise ConfigError("device", "under torchrun each process takes its own GPU (cuda:LOCAL_RANK); use cuda",
                              name)
        if local >= torch.cuda.device_count():
            raise UserError(f"torchrun: LOCAL_RANK {local} but only {torch.cuda.device_count()} GPU(s) visible; "
                            "use --nproc_per_node <= the number of GPUs")
        torch.cuda.set_device(local)
        return torch.device("cuda", local)
    if name != "cpu":
        raise ConfigError("device", "under torchrun use cpu, cuda or auto", name)
    return torch.device("cpu")


@contextlib.contextmanager
def session(device_name: str, timeout_min: float = 60.0):
    """Join torchrun's process group for the duration of a command; yields this process's device, or
    None when not launched by torchrun (the caller then resolves the device as usual)."""
    if not launched():
        yield None
        return
    import torch.distributed as dist

    missing = [k for k in ENV_KEYS if k not in os.environ]
    if missing:
        raise UserError(f"WORLD_SIZE > 1 but {', '.join(missing)} unset: start multi-process runs with torchrun")
    device = _device_for(device_name)
    # A long evaluation or checkpoint on rank 0 keeps the others waiting at the next collective.
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo", timeout=timedelta(minutes=timeout_min))
    try:
        yield device
    finally:
        dist.destroy_process_group()
