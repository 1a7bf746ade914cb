"""Hardware and library versions, recorded with every run (`env.json`): timings mean little without them."""

from __future__ import annotations

import os
import platform
import socket
import subprocess
import sys
from pathlib import Path


_ALLOCATOR: dict = {}


def keep_freed_memory() -> dict:
    """Ask glibc to keep freed blocks for reuse instead of returning every block over 32 MiB to the OS.
    A training step allocates and frees several |V| x d and B x |V| tensors; by default each one is a
    fresh mmap that page-faults in again on every step (measured 25-35% of an Atten-Mixer or SGNN-HN
    step at d=256 on Diginetica, benchmarks/model_step.py --keep-freed-memory). Peak memory is unchanged;
    the process just does not shrink between steps. Linux/glibc only; a no-op elsewhere, and when the
    user set MALLOC_MMAP_THRESHOLD_ / MALLOC_TRIM_THRESHOLD_ themselves. Idempotent; returns what it set."""
    if _ALLOCATOR or sys.platform != "linux" or platform.libc_ver()[0] != "glibc":
        return _ALLOCATOR
    if any(k in os.environ for k in ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_")):
        _ALLOCATOR["glibc"] = "left to the MALLOC_*_THRESHOLD_ environment variables"
        return _ALLOCATOR
    import ctypes

    libc = ctypes.CDLL("libc.so.6")
    m_trim_threshold, m_mmap_threshold = -1, -3  # mallopt parameters from <malloc.h>
    if libc.mallopt(m_mmap_threshold, 1 << 30) and libc.mallopt(m_trim_threshold, 2**31 - 1):
        _ALLOCATOR["glibc"] = {"mmap_threshold": 1 << 30, "trim_threshold": 2**31 - 1}
    return _ALLOCATOR


def _version(module_name: str) -> str | None:
    try:
        module = __import__(module_name)
    except Exception:  # an optional library that is absent or broken is recorded as missing
        return None
    return getattr(module, "__version__", "unknown")


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _ram_gb() -> float | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) / 1024**2, 2)
    except OSError:
        pass
    return None


def _git_sha() -> str | None:
    """The suite's own commit (and whether its tree has local changes), when it runs from a clone."""
    root = Path(__file__).resolve().parents[1]
    try:
        sha = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True,
                             text=True, timeout=5)
        if sha.returncode != 0:
            return None
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=5)
        return sha.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return None


def _gpu_info(torch) -> dict | None:
    if not torch.cuda.is_available():
        return None
    index = torch.cuda.current_device()
    props = torch.cuda.get_device_properties(index)
    info = {
        "name": props.name,
        "memory_gb": round(props.total_memory / 1024**3, 2),
        "count": torch.cuda.device_count(),
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version(),
        "driver": None,
    }
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=10)
        if out.returncode == 0:
            info["driver"] = out.stdout.strip().splitlines()[0]
    except (OSError, subprocess.SubprocessError, IndexError):
        pass
    return info


def environment() -> dict:
    import torch

    return {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "hostname": socket.gethostname(),
        "cpu": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "cpu_affinity": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "ram_gb": _ram_gb(),
        "torch_threads": torch.get_num_threads(),
        "versions": {name: _version(name) for name in
                     ("torch", "torch_geometric", "numpy", "pandas", "scipy", "torch_scatter", "torch_sparse")},
        "gpu": _gpu_info(torch),
        "flags": {
            "deterministic_algorithms": torch.are_deterministic_algorithms_enabled(),
            "cudnn_benchmark": torch.backends.cudnn.benchmark,
            "cudnn_deterministic": torch.backends.cudnn.deterministic,
            "amp": False,  # no autocast: float32, but for each model's `precision` of its scoring products (config.json)
        },
        "suite_git_sha": _git_sha(),
        "distributed": _distributed(),
        "allocator": dict(_ALLOCATOR) or "default",
    }


def _distributed() -> dict:
    """World size and backend of a torchrun job ({"world_size": 1, "backend": None} otherwise)."""
    from . import distributed

    return distributed.describe()
