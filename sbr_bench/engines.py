"""Engines that run the (grid point, seed) units of a sweep: `local` trains them one after the other in
this process; `ray` submits one Ray task per unit to a local or remote Ray cluster.

Both call `sweep_unit`, which trains one unit of a run folder that the driver has already created
(config.json, env.json) with `units.train_unit`, so a point's record is the same whichever engine
ran it. A unit resumes from its checkpoint, so a Ray task retried after its worker process died continues
where the last checkpoint left it; a unit that fails (non-finite loss, out of memory, a bug) is recorded
as failed and not retried. Ray is optional and imported only by `run_ray`.
"""

from __future__ import annotations

import json
import os
import socket
import time
from dataclasses import dataclass
from pathlib import Path

from .errors import ConfigError, UserError

RAY_INSTALL_HINT = "pip install -e '.[ray]'"

# The dataset of the units this process runs: points are ordered dataset by dataset, and a Ray worker
# process runs many units, so one entry avoids reloading without holding several large datasets.
_DATASET: dict = {}


@dataclass(frozen=True)
class Unit:
    run_path: str  # the point's run folder (absolute: Ray workers need not share our working directory)
    model: str
    seed: int
    label: str  # for messages, e.g. "sweep-attenmixer-levels-gowalla-levels2 seed 0"


def cached_dataset(spec: dict):
    """(dataset, fingerprint) of a dataset spec (`DataConfig.spec`, or a run config's dataset record, which
    adds what the data turned out to be), loaded once per process."""
    from .units import load_dataset
    from .runs import dataset_fingerprint

    spec = dict(spec, data_dir=str(Path(spec["data_dir"]).resolve()))  # one key for "datasets" and its path
    key = json.dumps({k: spec.get(k) for k in ("name", "data_dir", "protocol", "valid_fraction", "params")},
                     sort_keys=True, default=str)
    if key not in _DATASET:
        _DATASET.clear()
        dataset = load_dataset(spec)
        _DATASET[key] = (dataset, dataset_fingerprint(dataset))
    return _DATASET[key]


def sweep_unit(run_path: str, model: str, seed: int, data_dir: str, device: str = "auto",
               threads: int | None = None, engine: str = "local", progress: bool = False) -> dict:
    """Train one unit of a prepared run folder (the body of a Ray task) and return its summary."""
    import torch

    from .units import train_unit
    from .io import append_jsonl
    from .runs import RunDir
    from .training import resolve_device

    if threads:
        torch.set_num_threads(threads)
    run_dir = RunDir(run_path)
    config = run_dir.config()
    unit = run_dir.unit(model, seed)
    if unit.is_finished():  # e.g. a worker that died after writing the summary
        return unit.read_summary()
    recorded = config["dataset"]
    spec = {"name": recorded["name"], "data_dir": data_dir, "protocol": recorded.get("protocol"),
            "valid_fraction": recorded.get("valid_fraction", 0.1), "params": recorded.get("params", {})}
    try:
        resolved, problem = resolve_device(device), None
    except UserError as e:  # e.g. cuda on a node (or in a task) without a GPU: recorded below, then raised
        resolved, problem = f"{device} (unavailable)", e
    # One line per attempt: a retried unit shows where each attempt ran and that it resumed.
    append_jsonl(unit.path / "attempts.jsonl", {
        "start": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "engine": engine, "host": socket.gethostname(),
        "pid": os.getpid(), "device": str(resolved), "torch_threads": torch.get_num_threads(),
        "resumed": unit.checkpoint_path.exists()})
    if problem is not None:
        raise problem
    dataset, fingerprint = cached_dataset(spec)
    if fingerprint != recorded["fingerprint"]:
        return unit.fail(f"dataset '{spec['name']}' under {data_dir} on {socket.gethostname()} differs from the "
                         "one this point was created with (fingerprint mismatch); is --data-dir shared?")
    return train_unit(run_dir, model, config["cfg"][model], seed, dataset, resolved, config, progress)


def _report(unit: Unit, summary: dict | None, done: int, total: int) -> None:
    summary = summary or {}
    if summary.get("status") == "ok":
        test = summary.get("test", {})
        what = f"ok  test HR@20 {test.get('HR@20', float('nan')):.2f}  MRR@20 {test.get('MRR@20', float('nan')):.2f}"
    else:
        what = f"FAILED: {summary.get('reason', 'no summary')}"
    print(f"[{unit.label}] {what}  ({done}/{total} units)", flush=True)


def run_local(units: list[Unit], data_dir: str, device: str, progress: bool) -> None:
    """Every unit in turn, in this process."""
    for i, unit in enumerate(units, 1):
        print(f"[{unit.label}] start", flush=True)
        summary = sweep_unit(unit.run_path, unit.model, unit.seed, data_dir, device, None, "local", progress)
        _report(unit, summary, i, len(units))


def import_ray():
    try:
        import ray
    except ImportError:
        raise ConfigError("engine", f"Ray is not installed; install the extra with `{RAY_INSTALL_HINT}`",
                          "ray") from None
    return ray


def _reason(error: BaseException) -> str:
    """One line for a unit whose task raised or whose worker died once more than --max-retries allows."""
    cause = getattr(error, "cause", None) or error  # a RayTaskError wraps the task's own exception
    lines = [line for line in str(cause).splitlines() if line.strip()]
    return f"{type(cause).__name__}: {lines[0] if lines else ''}"[:300]


def run_ray(units: list[Unit], data_dir: str, device: str, address: str | None, cpus_per_task: float,
            gpus_per_task: float, max_retries: int) -> None:
    """One Ray task per unit. A process of Ray's already started (ray.init) is used as it is; otherwise
    connect to `address` (ray://host:10001, auto) or start a local instance, and stop it at the end."""
    ray = import_ray()
    from .runs import RunDir

    started = False
    if not ray.is_initialized():
        try:
            if address:
                ray.init(address=address)
            else:
                ray.init(include_dashboard=False)
        except ConnectionError as e:
            raise ConfigError("address", f"cannot connect to a Ray cluster ({e})", address) from None
        started = True
    threads = max(1, int(cpus_per_task))
    task = ray.remote(sweep_unit).options(num_cpus=cpus_per_task, num_gpus=gpus_per_task, max_retries=max_retries,
                                          retry_exceptions=False)
    refs = {}
    try:
        for unit in units:
            refs[task.remote(unit.run_path, unit.model, unit.seed, data_dir, device, threads, "ray")] = unit
        print(f"submitted {len(refs)} unit(s) to Ray ({ray.cluster_resources().get('CPU', 0):g} CPUs in the "
              f"cluster, {cpus_per_task:g} per unit, up to {max_retries} retries if a worker dies)", flush=True)
        pending, done = list(refs), 0
        while pending:
            finished, pending = ray.wait(pending, num_returns=1)
            for ref in finished:
                unit, done = refs[ref], done + 1
                try:
                    summary = ray.get(ref)
                except Exception as e:  # the task raised, or its worker died more often than max_retries
                    record = RunDir(unit.run_path).unit(unit.model, unit.seed)
                    summary = record.read_summary() if record.is_finished() else record.fail(_reason(e))
                _report(unit, summary, done, len(units))
    except KeyboardInterrupt:
        for ref in refs:  # stop the workers too; a later run of the sweep resumes from the checkpoints
            ray.cancel(ref, force=True)
        raise
    finally:
        if started:
            ray.shutdown()
