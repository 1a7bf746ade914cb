"""The training loop: per-phase timing, model selection, early stopping, checkpoints.

- Selection modes (`runs.SELECTIONS`): `valid` and `refit` choose the epoch and stop early on validation
  MRR@20 only and evaluate the test split exactly once (HR and MRR from one epoch): `valid` with the
  best-validation weights, `refit` with a fresh model trained on train + validation for the chosen
  number of epochs. `literature` trains on train + validation and evaluates the test split every epoch,
  keeping each metric's best (the reference code's protocol; test-selected).
- The learning-rate schedule (StepLR(lr_step, lr_decay)) steps at the END of each epoch, as the papers
  describe; `scheduler_at_start_compat=True` in the cfg steps it at the start instead, like SR-GNN's code
  (so its first decay comes one epoch early).
- Every epoch ends with a checkpoint (model, optimizer, scheduler, RNG states, best state, epoch history);
  `checkpoint_every=N` also saves one every N batches, so a run killed mid-epoch resumes at the last saved
  batch with the same data order (`ExampleLoader.batches(epoch, start_batch)`) and the same RNG states:
  on CPU the resumed run gives exactly the numbers of an uninterrupted one.
- Phases are timed separately per epoch: data (collate + copy to device), forward (loss), backward (+
  optimizer step) and eval (the watched split's pass), with `torch.cuda.synchronize()` around them on CUDA.
- Baselines (`trainable = False`) are fitted on train and evaluated on valid; for the test they are
  fitted on train (`valid`) or on train + validation (`refit`, `literature`).
- Under torchrun (`sbr_bench.distributed`) the model is wrapped in DistributedDataParallel: each rank
  trains on its share of every global batch with its mean loss weighted by its share, so the update is
  that of single-process training; evaluation is sharded over ranks and the per-example ranks gathered,
  so every rank takes the same selection and early-stopping decisions. Only rank 0 writes records.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import math
import random
import time
import warnings
from types import SimpleNamespace

import numpy as np
import torch

from . import distributed
from .env import keep_freed_memory
from .checkpoint import Checkpointer, rng_state, seed_rank, set_rng_state
from .epoch_stats import EpochStats
from .errors import ConfigError
from .profiling import peak_rss_mb
from .runs import SELECTION_METRIC, SELECTIONS, Run, timing_summary

EVAL_BATCH_SIZE = 500


class TrainingFailed(Exception):
    """A model could not be trained (non-finite loss, out of memory); the run records the reason.
    `shared`: every rank of a multi-process run raised it at the same point (it was decided on gathered
    values), so the run can record it and go on; a failure of one rank alone must stop the job."""

    def __init__(self, reason: str, shared: bool = False):
        super().__init__(reason)
        self.reason, self.shared = reason, shared


def seed_everything(seed: int, deterministic: bool = False) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)  # also seeds every CUDA device
    if deterministic:
        import os

        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # required by cuBLAS for determinism
        # warn_only: PyG scatter ops have no deterministic CUDA kernel; warn rather than refuse to run.
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.deterministic = True
        torch.backends.cudnn.benchmark = False


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError("device", f"CUDA is not available on this machine (torch {torch.__version__})", name)
    try:
        return torch.device(name)
    except RuntimeError as e:
        raise ConfigError("device", str(e), name) from None


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _rank_share(split):
    """This rank's contiguous share of `split` (all of it when single-process)."""
    if distributed.world() == 1:
        return split
    index = distributed.shard(np.arange(len(split)), distributed.rank(), distributed.world())
    return dataclasses.replace(split, ex_seq=split.ex_seq[index], ex_len=split.ex_len[index])


def evaluate_split(model, split, n_items: int, device, extra=None, batch_size: int = EVAL_BATCH_SIZE):
    """Full-ranking evaluation of one split (`sbr_bench.evaluate`: eval mode, no gradients). Under
    torchrun each rank ranks its share and the per-example ranks are gathered: every rank returns the
    result of the whole split, in split order."""
    from .evaluate import KS, EvalResult, evaluate, metrics_from_ranks

    if distributed.world() == 1:
        return evaluate(model, split, n_items, batch_size=batch_size, device=str(device), extra=extra)
    start = time.perf_counter()
    part = evaluate(model, _rank_share(split), n_items, batch_size=batch_size, device=str(device), extra=extra)
    shares = distributed.all_gather_object((part.ranks_optimistic, part.ranks_pessimistic, part.nonfinite))
    opt = np.concatenate([s[0] for s in shares])  # contiguous shares in rank order: split order
    pes = np.concatenate([s[1] for s in shares])
    return EvalResult(
        metrics=metrics_from_ranks(opt, pes, KS, n_items), ranks=(opt + pes) / 2.0, ranks_optimistic=opt,
        ranks_pessimistic=pes, tie_rate=float(np.mean(pes > opt)) if len(opt) else 0.0,
        nonfinite=int(sum(s[2] for s in shares)), seconds=time.perf_counter() - start,
        metrics_pessimistic=metrics_from_ranks(pes, None, KS, n_items))


def make_optimizer(model, cfg: dict):
    """Adam (optionally its AMSGrad variant), AdamW or Adagrad with the cfg's lr and l2, and StepLR(lr_step,
    lr_decay). Parameters a model names in `no_weight_decay()` (SparseVD's variational ones) get no l2."""
    name = str(cfg.get("optimizer", "adam")).lower()
    kinds = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW,
             "amsgrad": functools.partial(torch.optim.Adam, amsgrad=True),
             # GRU4Rec's: steps lr·g / sqrt(1e-6 + Σg²), so rarely updated item rows do not take full steps
             "adagrad": functools.partial(torch.optim.Adagrad, initial_accumulator_value=1e-6, eps=0.0)}
    if name not in kinds:
        raise ConfigError("overrides.optimizer", f"unknown optimizer; choose one of {', '.join(kinds)}", name)
    exempt = model.no_weight_decay() if hasattr(model, "no_weight_decay") else set()
    named = list(model.named_parameters())
    groups = [{"params": [p for n, p in named if n not in exempt], "weight_decay": cfg["l2"]},
              {"params": [p for n, p in named if n in exempt], "weight_decay": 0.0}]
    groups = [g for g in groups if g["params"]]
    try:  # fused: one kernel over all parameters; 5-10x faster steps on the item table (model_step.py).
        # Not Adagrad's: before torch 2.8 it has no CUDA kernel and says so only at its first step.
        optimizer = kinds[name](groups, lr=cfg["lr"], **({} if name == "adagrad" else {"fused": True}))
    except (RuntimeError, TypeError):  # a device or dtype without a fused kernel
        optimizer = kinds[name](groups, lr=cfg["lr"])
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=max(1, int(cfg["lr_step"])),
                                                gamma=cfg["lr_decay"])
    return optimizer, scheduler


def train(model, dataset, cfg: dict | None = None, *, selection: str = "valid", seed: int = 0, device="cpu",
          progress: bool = False, folder=None) -> dict:
    """Train (or fit) `model` on `dataset` and test it, without a run folder unless `folder` is given.

    Args:
        model: an `SBRModel` (e.g. from `sbr_bench.build_model`) or a counting baseline.
        dataset: a `SessionDataset` (`sbr_bench.load_dataset`).
        cfg: training settings (lr, l2, epochs, batch_size, patience, lr_step, lr_decay, optimizer) that
            differ from `model.cfg` (set by `sbr_bench.build_model`), else from `TRAIN_DEFAULTS`.
        selection: `valid`, `refit` or `literature` (see `train_model`).
        folder: keep the records (epochs.jsonl, summary.json, ranks.npz, checkpoint.pt) there.
    Returns:
        The summary: test (and valid) metrics, best epoch, timing. `model` ends with the tested weights
        (under `refit`, those of the model retrained on train + validation).
    """
    import tempfile

    from .models.registry import TRAIN_DEFAULTS

    trainable = getattr(model, "trainable", True) is not False
    own = dict(getattr(model, "cfg", None) or {})
    cfg = {**TRAIN_DEFAULTS, **own, **(cfg or {})} if trainable else {**own, **(cfg or {})}
    initial = copy.deepcopy(model) if trainable and selection == "refit" else None
    with tempfile.TemporaryDirectory(prefix="sbr-bench-train-") as scratch:
        run = Run(folder or scratch, type(model).__name__, seed)
        summary = train_model(model, dataset, cfg, run, device=device, seed=seed, progress=progress,
                              selection=selection,
                              rebuild=(lambda: copy.deepcopy(initial)) if initial is not None else None)
        if initial is not None:  # the refit trained a copy: hand its tested weights to `model`
            model.load_state_dict(run.load_checkpoint()["model"])
    return summary


def check_precision(cfg: dict, device) -> None:
    """A model's `precision` setting is possible on `device` (tf32 exists on CUDA only)."""
    if cfg.get("precision") == "tf32" and torch.device(device).type != "cuda":
        raise ConfigError("overrides.precision", "tf32 is a mode of CUDA tensor cores; on this device use fp32 "
                          "or bf16", "tf32")


def check_precisions(cfgs, device, ray_gpus: float | None = None) -> None:
    """check_precision for every cfg where its units will train: on `device` here (`ray_gpus` None) or on
    Ray's CPU-only workers (`ray_gpus` 0). Ray workers with GPUs may find devices this process lacks; they
    check their own when they train."""
    if ray_gpus:
        return
    for cfg in cfgs:
        check_precision(cfg, device if ray_gpus is None else "cpu")


def train_model(model, dataset, cfg: dict, run: Run, device="cpu", seed: int = 0, progress: bool = True,
                checkpoint_every: int = 0, deterministic: bool = False, max_epochs: int | None = None,
                evaluate_test: bool = True, selection: str = "valid", rebuild=None, callbacks=()) -> dict:
    """Train (or fit) `model` under a selection mode, evaluate the test split, write the unit's records in
    `run` and return its summary.

    Args:
        selection: `refit` (choose the epoch on validation, then train a fresh model on train + validation
            for that many epochs and test it once), `valid` (choose on validation, test those weights once)
            or `literature` (train on train + validation, test every epoch, best epoch per metric: the
            reference code's protocol, test-selected and optimistic). See `runs.SELECTIONS`.
        rebuild: for `refit`, a callable returning a freshly initialised model, seeded as `model` was (the
            refit then follows exactly the trajectory that `literature` would, up to the chosen epoch).
        max_epochs, evaluate_test: `--profile` trains a few epochs and skips the test.
        callbacks: `sbr_bench.callbacks.Callback`s (e.g. trackers) for every phase of the unit.
    Returns:
        The summary written to `run.summary_path`.
    Raises:
        TrainingFailed on a non-finite loss or when out of memory.
    """
    if selection not in SELECTIONS:
        raise ValueError(f"unknown selection '{selection}'; choose one of {', '.join(SELECTIONS)}")
    device = torch.device(device)
    check_precision(cfg or {}, device)
    keep_freed_memory()
    seed_everything(seed, deterministic)
    try:
        if getattr(model, "trainable", True) is False:
            return _fit_baseline(model, dataset, run, device, evaluate_test, selection)
        common = dict(dataset=dataset, run=run, device=device, seed=seed, progress=progress,
                      checkpoint_every=checkpoint_every, callbacks=callbacks)
        if selection == "literature":
            return _Trainer(model, dataset.train_and_valid(), cfg, watch="test", phase="literature",
                            **common).fit(max_epochs, evaluate_test)
        if selection == "valid" or not evaluate_test:
            return _Trainer(model, dataset.train, cfg, watch="valid", **common).fit(max_epochs, evaluate_test)
        if rebuild is None:
            raise ValueError("selection 'refit' needs `rebuild`, a callable that builds a fresh model")
        chosen = _Trainer(model, dataset.train, cfg, watch="valid", phase="select",
                          **common).fit(max_epochs, evaluate_test=False)
        model.zero_grad(set_to_none=True)
        model.to("cpu")  # the selection model is done: free the device for the refit
        del model
        fresh = rebuild()
        seed_everything(seed, deterministic)  # as before the selection run: the same seeds, the same order
        epochs = chosen["best_epoch"] + 1
        common["run"] = run.refit
        selected = dict(best_epoch=chosen["best_epoch"], valid=chosen["best_valid"], refit_epochs=epochs,
                        selection_epochs_trained=len(chosen["history"]), stopped_early=chosen["stopped_early"],
                        max_epochs=chosen["max_epochs"], patience=int(cfg.get("patience") or 0),
                        selection_timing=chosen["timing"])
        # The summary is written once, complete: a kill before that leaves the unit unfinished.
        return _Trainer(fresh, dataset.train_and_valid(), dict(cfg, epochs=epochs, patience=0), watch=None,
                        phase="refit", **common).fit(None, evaluate_test=True, record=run, extra=selected)
    except RuntimeError as e:  # torch's OutOfMemoryError is a RuntimeError too
        if "out of memory" in str(e).lower():
            raise TrainingFailed(f"out of memory: {str(e).splitlines()[0][:200]}") from e
        raise
    finally:
        if device.type == "cuda":
            torch.cuda.empty_cache()


def _result_fields(prefix: str, result) -> dict:
    return {f"{prefix}_tie_rate": float(result.tie_rate), f"{prefix}_nonfinite": int(result.nonfinite),
            f"{prefix}_eval_s": float(result.seconds)}


def _audit(model, dataset, device) -> dict:
    """Leakage audit (evaluation pitfall 4), on the validation split so the test is still used once:
    evaluated again shuffled and with another batch size, per-example ranks must not change. Differences
    mean the model mixes sessions of a batch at inference (or, rarely, float noise across batch sizes)."""
    from .evaluate import audit_order_invariance

    # Under torchrun each rank audits its share (the audit compares per-example ranks, so shares add up).
    audits = distributed.all_gather_object(
        audit_order_invariance(model, _rank_share(dataset.valid), dataset.n_items, EVAL_BATCH_SIZE, str(device)))
    if len(audits) == 1:
        return audits[0]
    return {"examples": sum(a["examples"] for a in audits), "differing": sum(a["differing"] for a in audits),
            "max_rank_difference": max(a["max_rank_difference"] for a in audits)}


def _length_buckets(result, split) -> dict:
    """Test metrics per prefix-length bucket (short <= 5 < long, as in the paper's Figure 7)."""
    from .evaluate import bucket_metrics

    return bucket_metrics(result.ranks_optimistic, result.ranks_pessimistic, split.ex_len, ks=(10, 20))


def _fit_baseline(model, dataset, run: Run, device, evaluate_test: bool = True, selection: str = "valid") -> dict:
    """Fit on the training split and evaluate validation; for the test, `refit` and `literature` fit again
    on train + validation (a baseline has no epochs to select, so both give the same test number)."""
    if hasattr(model, "to"):
        model.to(device)
    start = time.perf_counter()
    model.fit(dataset.train)
    fit_s = time.perf_counter() - start
    valid = evaluate_split(model, dataset.valid, dataset.n_items, device)
    if not evaluate_test:  # --profile, and tuning trials (validation only)
        return {"status": "fitted", "valid": valid.metrics,
                "timing": {"fit_s": fit_s, "eval_median_s": float(valid.seconds)}}
    if selection != "valid":
        start = time.perf_counter()
        model.fit(dataset.train_and_valid())
        fit_s = time.perf_counter() - start
    test = evaluate_split(model, dataset.test, dataset.n_items, device)
    summary = {
        "status": "ok", "kind": "baseline", "best_epoch": None, "epochs_trained": 0, "selection": selection,
        "fitted_on": "train" if selection == "valid" else "train+valid",
        "valid": valid.metrics, "test": test.metrics,
        "timing": {"fit_s": fit_s, "eval_median_s": float(valid.seconds), "host_peak_rss_mb": peak_rss_mb(),
                   **_distributed_timing()},
        **_result_fields("valid", valid), **_result_fields("test", test),
        "test_by_length": _length_buckets(test, dataset.test), "audit": _audit(model, dataset, device),
    }
    if distributed.is_main():  # every rank fitted the same counts and evaluated its share; one writes
        run.write_ranks(test, dataset.test.ex_len)
        run.write_summary(summary)
    return summary


def _distributed_timing() -> dict:
    """World size and backend next to the timings (examples/s counts every rank's examples)."""
    return {"world_size": distributed.world(), "backend": distributed.backend()} if distributed.world() > 1 else {}


class _LossOf(torch.nn.Module):
    """`model.loss(batch)` as a forward, for DistributedDataParallel (which hooks into forward)."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, batch):
        return self.model.loss(batch)


class _Trainer:
    """Trains `model` on `train` (a split of `dataset`) and evaluates `watch` after every epoch: "valid"
    selects the epoch and stops early on validation, "test" does both on the test split (the literature
    protocol), None trains a fixed number of epochs (the refit). The loop is `fit`; checkpoints are the
    `Checkpointer`'s, epoch sums `EpochStats`', and the epoch record, progress line and trackers callbacks."""

    def __init__(self, model, train, cfg, *, dataset, run: Run, watch, device, seed, progress, checkpoint_every,
                 callbacks=(), phase: str = "valid"):
        from .callbacks import EarlyStopping, EpochPrinter, EpochRecord
        from .data.graphs import ExampleLoader

        self.model, self.dataset, self.cfg, self.run, self.watch = model, dataset, cfg, run, watch
        self.world, self.rank, self.main = distributed.world(), distributed.rank(), distributed.is_main()
        self.device, self.seed, self.progress, self.phase = device, seed, progress and self.main, phase
        self.checkpoint_every = int(checkpoint_every or 0)
        self.extra = tuple(getattr(model, "extra_graphs", ()))
        if hasattr(model, "prepare"):  # before moving: what prepare builds (buffers) moves with the model
            model.prepare(train)
        model.to(device)
        self.optimizer, self.scheduler = make_optimizer(model, cfg)
        try:  # a model may train on batches of its own (GRU4Rec's session-parallel steps)
            self.loader = model.train_loader(train, cfg["batch_size"], seed) if hasattr(model, "train_loader") else None
            if self.loader is None:
                self.loader = ExampleLoader(train, cfg["batch_size"], dataset.n_items, shuffle=True, seed=seed,
                                            extra=self.extra, rank=self.rank, world=self.world)
        except ValueError as e:
            raise ConfigError("overrides.batch_size", str(e), cfg["batch_size"]) from None
        if self.world > 1 and not isinstance(self.loader, ExampleLoader):
            raise ConfigError("device", f"{run.model} trains on batches of its own, in one process "
                              "(not under torchrun)")
        # The model itself stays self.model (optimizer, checkpoints, evaluation); training steps go through
        # DDP, which averages gradients over ranks during backward. static_graph: a model uses the same
        # parameters in every step, and DDP then also accepts parameters that a config leaves unused.
        # gradient_as_bucket_view: gradients live in DDP's all-reduce buckets instead of beside them (one
        # copy of the item table's size less per rank; benchmarks/memory_scaling.py).
        self.net = self.model
        if self.world > 1:
            from torch.nn.parallel import DistributedDataParallel

            self.net = DistributedDataParallel(_LossOf(model), device_ids=[device.index] if device.type == "cuda"
                                               else None, static_graph=True, gradient_as_bucket_view=True)
            seed_rank(seed, self.rank)
        self.at_start = bool(cfg.get("scheduler_at_start_compat", False))
        self.checkpoints = Checkpointer(run, cfg, seed, dataset)
        self.stopper = EarlyStopping(int(cfg.get("patience") or 0) if watch else 0)
        self.callbacks = ([EpochRecord()] + ([EpochPrinter()] if self.progress else []) + list(callbacks)
                          if self.main else [])
        self.state = {
            "epoch": 0, "batch": 0, "partial": None, "history": [], "best_metric": -math.inf,
            "best_epoch": None, "best_valid": None, "best_weights": None, "bad_epochs": 0, "done": False,
            "best_test": None, "best_test_epoch": None, "best_test_result": None,
        }

    def save(self) -> None:
        self.checkpoints.save(self.model, self.optimizer, self.scheduler, self.state)

    def restore(self) -> bool:
        state = self.checkpoints.restore(self.model, self.optimizer, self.scheduler)
        if state is None:
            return False
        self.state = state
        if self.main:
            self.run.rewrite_epochs(self.state["history"])
        return True

    # --- loop --------------------------------------------------------------------------------------
    def fit(self, max_epochs: int | None, evaluate_test: bool, record: Run | None = None,
            extra: dict | None = None) -> dict:
        """Train to the end (resuming from the checkpoint), then test; the summary (updated with `extra`),
        ranks and final weights go to `record` (default: this trainer's run)."""
        resumed = self.restore()
        epochs = int(self.cfg["epochs"] if max_epochs is None else max_epochs)
        st = self.state
        while not st["done"] and st["epoch"] < epochs and not self.stopper.should_stop(st):
            row = self.train_epoch(resumed and st["batch"] > 0)
            resumed = False
            self.end_epoch(row)
        if not st["done"]:
            st["done"] = True
            self.save()  # a crash after this point (test pass, refit) resumes straight past training
        if not evaluate_test:
            return {"status": "selected", "history": st["history"], "best_epoch": st["best_epoch"],
                    "best_valid": st["best_valid"], "stopped_early": len(st["history"]) < epochs,
                    "max_epochs": epochs, "timing": timing_summary(st["history"])}
        return self.finish(epochs, self.stopper.patience, record or self.run, extra or {})

    def train_epoch(self, mid_epoch_resume: bool) -> dict:
        from tqdm.auto import tqdm

        model, st, device = self.model, self.state, self.device
        self.net.train()
        if self.at_start and st["batch"] == 0:
            with warnings.catch_warnings():  # stepping before optimizer.step() is the point of this mode
                warnings.simplefilter("ignore", UserWarning)
                self.scheduler.step()
        stats = EpochStats(st["partial"])
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        lr = self.optimizer.param_groups[0]["lr"]
        bar = tqdm(total=len(self.loader), initial=st["batch"], leave=False,
                   disable=None if self.progress else True,  # None: off when not a terminal (logs, CI)
                   desc=f"{self.run.model} seed{self.seed} epoch {st['epoch']}", dynamic_ncols=True)
        batches = self.loader.batches(st["epoch"], st["batch"])
        while True:
            t0 = time.perf_counter()
            batch = next(batches, None)
            if batch is None:
                break
            batch = batch.to(device)
            _sync(device)
            t1 = time.perf_counter()
            if self.world == 1:
                loss, parts = model.loss(batch)
                loss_value = float(loss.detach())  # synchronises, like _sync
                n = int(batch.num_graphs)
            else:
                loss, parts, loss_value, n = self.distributed_loss(batch)
            t2 = time.perf_counter()
            if not math.isfinite(loss_value):  # under DDP the global loss: every rank stops here together
                raise TrainingFailed(f"non-finite loss ({loss_value}) at epoch {st['epoch']}, batch {st['batch']}",
                                     shared=True)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
            _sync(device)
            t3 = time.perf_counter()

            stats.add(loss_value, parts, n, t1 - t0, t2 - t1, t3 - t2)
            st["batch"] += 1
            if self.checkpoint_every and st["batch"] % self.checkpoint_every == 0 and st["batch"] < len(self.loader):
                st["partial"] = stats.as_dict()
                saving = time.perf_counter()
                self.save()
                stats.add_checkpoint_time(time.perf_counter() - saving)
            bar.update(1)
            if st["batch"] % 10 == 0 or st["batch"] == len(self.loader):
                bar.set_postfix(loss=f"{stats.loss:.4f}", ex_s=f"{stats.examples_per_s:.0f}")
        bar.close()
        row = stats.row(st["epoch"], lr, mid_epoch_resume)
        if device.type == "cuda":
            row["peak_gpu_mb"] = torch.cuda.max_memory_allocated(device) / 2**20
            row["peak_gpu_reserved_mb"] = torch.cuda.max_memory_reserved(device) / 2**20
        return row

    def distributed_loss(self, batch):
        """One rank's forward under DDP: (loss to backpropagate, global mean loss parts, global mean loss,
        global batch size). The rank's mean loss is weighted by its share of the global batch, so DDP's
        gradient average is the gradient of the global mean loss (uneven shares included)."""
        n_local, n_global = int(batch.num_graphs), int(batch.global_size)
        loss, parts = self.net(batch)
        sums = distributed.all_reduce_sum([float(loss.detach()) * n_local]
                                          + [float(v) * n_local for v in parts.values()], self.device)
        weighted = loss * distributed.loss_weight(n_local, n_global, self.world)
        return weighted, dict(zip(parts, (v / n_global for v in sums[1:]))), sums[0] / n_global, n_global

    def end_epoch(self, row: dict) -> None:
        st = self.state
        if not self.at_start:
            self.scheduler.step()
        distributed.sync_buffers(self.model)  # one model for evaluation (BatchNorm statistics of rank 0)
        row["host_peak_rss_mb"] = peak_rss_mb()
        row["time"]["eval"] = 0.0
        if self.watch == "test":  # the trajectory must not depend on the test passes (refit = this at e*)
            rng = rng_state()
            self.evaluate_epoch(row)
            set_rng_state(rng)
        elif self.watch is not None:
            self.evaluate_epoch(row)
        row["best_epoch_so_far"] = st["best_epoch"]
        st["history"].append(row)
        for callback in self.callbacks:
            callback.on_epoch_end(self, row)
        st.update(epoch=st["epoch"] + 1, batch=0, partial=None)
        self.save()

    def evaluate_epoch(self, row: dict) -> None:
        """Evaluate the watched split; keep the best epoch by MRR@20 (its weights, or for the test split
        the best value of every metric and the ranks of the best-MRR@20 epoch)."""
        st, split = self.state, getattr(self.dataset, self.watch)
        _sync(self.device)
        start = time.perf_counter()
        result = evaluate_split(self.model, split, self.dataset.n_items, self.device, self.extra)
        _sync(self.device)
        row["time"]["eval"] = time.perf_counter() - start
        row[self.watch] = result.metrics
        row[f"{self.watch}_tie_rate"] = float(result.tie_rate)
        row[f"{self.watch}_nonfinite"] = int(result.nonfinite)
        score = result.metrics[SELECTION_METRIC]
        if not math.isfinite(score):  # gathered metrics: the same on every rank
            raise TrainingFailed(f"{self.watch} {SELECTION_METRIC} is {score} at epoch {st['epoch']}", shared=True)
        improved = score > st["best_metric"]  # strictly better: the earliest best epoch wins ties
        if improved:
            st.update(best_metric=score, best_epoch=st["epoch"], bad_epochs=0)
        else:
            st["bad_epochs"] += 1
        if self.watch == "valid":
            if improved:
                st.update(best_valid=result.metrics,
                          best_weights={k: v.detach().cpu().clone() for k, v in self.model.state_dict().items()})
            return
        best, when = st["best_test"] or {}, st["best_test_epoch"] or {}
        for metric, value in result.metrics.items():  # each metric's best epoch, as the reference code reports
            if metric not in best or value > best[metric]:
                best[metric], when[metric] = value, st["epoch"]
        st.update(best_test=best, best_test_epoch=when)
        if improved:
            st["best_test_result"] = {k: getattr(result, k) for k in (
                "metrics", "ranks", "ranks_optimistic", "ranks_pessimistic", "tie_rate", "nonfinite", "seconds")}

    def finish(self, epochs: int, patience: int, record: Run, extra: dict) -> dict:
        st = self.state
        if self.watch == "test":  # the test split was evaluated every epoch: nothing left to evaluate
            test = SimpleNamespace(**st["best_test_result"])
            reported = dict(st["best_test"])
        else:
            if st["best_weights"] is not None:
                self.model.load_state_dict(st["best_weights"])
            test = evaluate_split(self.model, self.dataset.test, self.dataset.n_items, self.device, self.extra)
            reported = test.metrics
        timing = dict(timing_summary(st["history"]), **_distributed_timing())
        if "selection_timing" in extra:  # the refit evaluates nothing: its eval time is the selection's
            timing["eval_median_s"] = extra["selection_timing"].get("eval_median_s", 0.0)
        summary = {
            "status": "ok", "kind": "trained", "selection": _selection_of(self.watch),
            "best_epoch": st["best_epoch"] if self.watch else len(st["history"]) - 1,
            "epochs_trained": len(st["history"]), "max_epochs": epochs, "patience": patience,
            "stopped_early": len(st["history"]) < epochs,
            "valid": st["best_valid"] or {}, "test": reported,
            "timing": timing, "n_parameters": sum(p.numel() for p in self.model.parameters()),
            **_result_fields("test", test), "test_by_length": _length_buckets(test, self.dataset.test),
            "audit": _audit(self.model, self.dataset, self.device),
        }
        if self.watch == "test":  # ranks, ties and length buckets are those of the best MRR@20 epoch
            summary.update(test_best_epoch=st["best_test_epoch"], test_selected=True, ranks_epoch=st["best_epoch"])
        summary.update(extra)
        from .intent import intent_recovery  # synthetic data and attention readouts only (else None)

        if self.main and (recovery := intent_recovery(self.model, self.dataset, self.device)) is not None:
            summary["intent_recovery"] = recovery
        if not self.main:
            return summary
        for callback in self.callbacks:
            callback.on_fit_end(self, summary)
        record.write_ranks(test, self.dataset.test.ex_len)
        record.write_summary(summary)
        # Keep only the final weights (the tested ones, except under literature: the last epoch's).
        record.save_checkpoint({"model": copy.deepcopy(self.model.state_dict()), "best_epoch": summary["best_epoch"],
                                "weights_epoch": summary["best_epoch"] if self.watch != "test" else len(st["history"]) - 1,
                                "cfg": self.cfg, "seed": self.seed, "finished": True})
        if record.path != self.run.path:  # the refit's full state is no longer needed (its epochs.jsonl stays)
            self.run.checkpoint_path.unlink(missing_ok=True)
        return summary


def _selection_of(watch) -> str:
    return {"valid": "valid", "test": "literature", None: "refit"}[watch]
