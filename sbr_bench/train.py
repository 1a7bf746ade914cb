"""The training loop: per-phase timing, validation-only model selection, early stopping, checkpoints.

- Model selection and early stopping use validation MRR@20 only; the test split is evaluated exactly once,
  with the best-validation weights, after training (HR and MRR come from that one best epoch).
- The learning-rate schedule (StepLR(lr_step, lr_decay)) steps at the END of each epoch, as the papers
  describe; `scheduler_at_start_compat=True` in the cfg steps it at the start instead, like SR-GNN's code
  (so its first decay comes one epoch early).
- Every epoch ends with a checkpoint (model, optimizer, scheduler, RNG states, best state, epoch history);
  `checkpoint_every=N` also saves one every N batches, so a run killed mid-epoch resumes at the last saved
  batch with the same data order (`ExampleLoader.batches(epoch, start_batch)`) and the same RNG states:
  on CPU the resumed run gives exactly the numbers of an uninterrupted one.
- Phases are timed separately per epoch: data (collate + copy to device), forward (loss), backward (+
  optimizer step) and eval (validation pass), with `torch.cuda.synchronize()` around them on CUDA.
- Baselines (`trainable = False`) are fitted once (`fit(train)`) and evaluated on valid and test.
- Under torchrun (`sbr_bench.distributed`) the model is wrapped in DistributedDataParallel: each rank
  trains on its share of every global batch with its mean loss weighted by its share, so the update is
  that of single-process training; evaluation is sharded over ranks and the per-example ranks gathered,
  so every rank takes the same selection and early-stopping decisions. Only rank 0 writes records.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import random
import resource
import time
import warnings

import numpy as np
import torch

from . import distributed
from .env import keep_freed_memory
from .errors import UserError
from .runs import SELECTION_METRIC, Run, timing_summary

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
        raise UserError(f"--device {name}: CUDA is not available on this machine (torch {torch.__version__})")
    try:
        return torch.device(name)
    except RuntimeError as e:
        raise UserError(f"--device {name}: {e}") from None


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _host_peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux reports KiB


def _rng_state() -> dict:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _seed_rank(seed: int, rank: int) -> None:
    """Per-rank random streams for multi-process training (dropout masks must differ between ranks)."""
    derived = int(np.random.SeedSequence([seed, rank]).generate_state(1)[0])
    random.seed(derived)
    np.random.seed(derived)
    torch.manual_seed(derived)


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
    name = str(cfg.get("optimizer", "adam")).lower()
    kinds = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW}
    if name not in kinds:
        raise UserError(f"--set optimizer={name}: unknown optimizer; choose one of {', '.join(kinds)}")
    params = list(model.parameters())
    try:  # fused: one kernel over all parameters; 5-10x faster steps on the item table (model_step.py)
        optimizer = kinds[name](params, lr=cfg["lr"], weight_decay=cfg["l2"], fused=True)
    except (RuntimeError, TypeError):  # a device or dtype without a fused kernel
        optimizer = kinds[name](params, lr=cfg["lr"], weight_decay=cfg["l2"])
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=max(1, int(cfg["lr_step"])),
                                                gamma=cfg["lr_decay"])
    return optimizer, scheduler


def train_model(model, dataset, cfg: dict, run: Run, device="cpu", seed: int = 0, progress: bool = True,
                checkpoint_every: int = 0, deterministic: bool = False, max_epochs: int | None = None,
                evaluate_test: bool = True) -> dict:
    """Train (or fit) `model` on `dataset.train`, select on `dataset.valid`, test once; write the unit's
    records in `run` and return its summary. `max_epochs`/`evaluate_test=False` serve `--profile`.
    Raises TrainingFailed on a non-finite loss or when out of memory."""
    device = torch.device(device)
    keep_freed_memory()
    seed_everything(seed, deterministic)
    try:
        if getattr(model, "trainable", True) is False:
            return _fit_baseline(model, dataset, run, device, evaluate_test)
        return _Trainer(model, dataset, cfg, run, device, seed, progress, checkpoint_every).fit(
            max_epochs, evaluate_test)
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


def _fit_baseline(model, dataset, run: Run, device, evaluate_test: bool = True) -> dict:
    if hasattr(model, "to"):
        model.to(device)
    start = time.perf_counter()
    model.fit(dataset.train)  # training sessions only, like the neural models
    fit_s = time.perf_counter() - start
    valid = evaluate_split(model, dataset.valid, dataset.n_items, device)
    if not evaluate_test:  # --profile
        return {"status": "fitted", "timing": {"fit_s": fit_s, "eval_median_s": float(valid.seconds)}}
    test = evaluate_split(model, dataset.test, dataset.n_items, device)
    summary = {
        "status": "ok", "kind": "baseline", "best_epoch": None, "epochs_trained": 0,
        "valid": valid.metrics, "test": test.metrics,
        "timing": {"fit_s": fit_s, "eval_median_s": float(valid.seconds), "host_peak_rss_mb": _host_peak_rss_mb(),
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
    def __init__(self, model, dataset, cfg, run: Run, device, seed, progress, checkpoint_every):
        from .data.graphs import ExampleLoader

        self.model, self.dataset, self.cfg, self.run = model, dataset, cfg, run
        self.world, self.rank, self.main = distributed.world(), distributed.rank(), distributed.is_main()
        self.device, self.seed, self.progress = device, seed, progress and self.main
        self.checkpoint_every = int(checkpoint_every or 0)
        self.extra = tuple(getattr(model, "extra_graphs", ()))
        if hasattr(model, "prepare"):  # before moving: what prepare builds (buffers) moves with the model
            model.prepare(dataset.train)
        model.to(device)
        self.optimizer, self.scheduler = make_optimizer(model, cfg)
        try:
            self.loader = ExampleLoader(dataset.train, cfg["batch_size"], dataset.n_items, shuffle=True, seed=seed,
                                        extra=self.extra, rank=self.rank, world=self.world)
        except ValueError as e:
            raise UserError(f"batch_size={cfg['batch_size']}: {e}") from None
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
            _seed_rank(seed, self.rank)
        self.at_start = bool(cfg.get("scheduler_at_start_compat", False))
        self.state = {
            "epoch": 0, "batch": 0, "partial": None, "history": [], "best_metric": -math.inf,
            "best_epoch": None, "best_valid": None, "best_weights": None, "bad_epochs": 0, "done": False,
        }

    # --- checkpoints -------------------------------------------------------------------------------
    def save(self) -> None:
        """Rank 0 writes the checkpoint, with every rank's RNG states (a collective: all ranks call it)."""
        rng_ranks = distributed.all_gather_object(_rng_state()) if self.world > 1 else None
        if not self.main:
            return
        state = {
            "model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(), "rng": _rng_state(), "state": self.state,
            "cfg": self.cfg, "seed": self.seed,
        }
        if rng_ranks is not None:
            state.update(rng_ranks=rng_ranks, world_size=self.world)
        self.run.save_checkpoint(state)

    def restore(self) -> bool:
        """Every rank loads the same checkpoint (weights, optimizer, schedule, progress) and its own RNG
        states; resumed with another number of processes, the ranks get fresh per-rank streams."""
        ckpt = self.run.load_checkpoint()
        if ckpt is None or "optimizer" not in ckpt:  # none, or the slim file of a finished unit
            return False
        self.model.load_state_dict(ckpt["model"])
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.scheduler.load_state_dict(ckpt["scheduler"])
        rng_ranks = ckpt.get("rng_ranks")
        if self.world == 1:
            _set_rng_state(ckpt["rng"])
        elif rng_ranks is not None and len(rng_ranks) == self.world:
            _set_rng_state(rng_ranks[self.rank])
        else:
            st = ckpt["state"]
            _seed_rank(int(np.random.SeedSequence([self.seed, st["epoch"], st["batch"]]).generate_state(1)[0]),
                       self.rank)
        self.state = ckpt["state"]
        if self.main:
            self.run.rewrite_epochs(self.state["history"])
        return True

    # --- loop --------------------------------------------------------------------------------------
    def fit(self, max_epochs: int | None, evaluate_test: bool) -> dict:
        resumed = self.restore()
        epochs = int(self.cfg["epochs"] if max_epochs is None else max_epochs)
        patience = int(self.cfg.get("patience") or 0)
        st = self.state
        while not st["done"] and st["epoch"] < epochs and not (patience > 0 and st["bad_epochs"] >= patience):
            row = self.train_epoch(resumed and st["batch"] > 0)
            resumed = False
            self.end_epoch(row)
        st["done"] = True
        if not evaluate_test:
            return {"status": "profiled", "history": st["history"]}
        self.save()  # a crash during the test pass resumes straight to it
        return self.finish(epochs, patience)

    def train_epoch(self, mid_epoch_resume: bool) -> dict:
        from tqdm.auto import tqdm

        model, st, device = self.model, self.state, self.device
        self.net.train()
        if self.at_start and st["batch"] == 0:
            with warnings.catch_warnings():  # stepping before optimizer.step() is the point of this mode
                warnings.simplefilter("ignore", UserWarning)
                self.scheduler.step()
        acc = st["partial"] or {"loss_sum": 0.0, "parts": {}, "examples": 0, "batches": 0,
                                "data": 0.0, "forward": 0.0, "backward": 0.0, "checkpoint": 0.0}
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

            acc["loss_sum"] += loss_value * n
            for key, value in parts.items():
                acc["parts"][key] = acc["parts"].get(key, 0.0) + float(value) * n
            acc["examples"] += n
            acc["batches"] += 1
            acc["data"] += t1 - t0
            acc["forward"] += t2 - t1
            acc["backward"] += t3 - t2
            st["batch"] += 1
            if self.checkpoint_every and st["batch"] % self.checkpoint_every == 0 and st["batch"] < len(self.loader):
                st["partial"] = acc
                saving = time.perf_counter()
                self.save()
                acc["checkpoint"] += time.perf_counter() - saving  # outside the timed phases
            bar.update(1)
            if st["batch"] % 10 == 0 or st["batch"] == len(self.loader):
                train_s = acc["data"] + acc["forward"] + acc["backward"]
                bar.set_postfix(loss=f"{acc['loss_sum'] / max(acc['examples'], 1):.4f}",
                                ex_s=f"{acc['examples'] / max(train_s, 1e-9):.0f}")
        bar.close()
        train_s = acc["data"] + acc["forward"] + acc["backward"]
        row = {
            "epoch": st["epoch"], "lr": lr, "loss": acc["loss_sum"] / max(acc["examples"], 1),
            "loss_parts": {k: v / max(acc["examples"], 1) for k, v in acc["parts"].items()},
            "examples": acc["examples"], "batches": acc["batches"],
            "time": {"data": acc["data"], "forward": acc["forward"], "backward": acc["backward"], "train": train_s,
                     "checkpoint": acc.get("checkpoint", 0.0)},
            "examples_per_s": acc["examples"] / max(train_s, 1e-9),
            "resumed_mid_epoch": bool(mid_epoch_resume),
        }
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
        _sync(self.device)
        start = time.perf_counter()
        valid = evaluate_split(self.model, self.dataset.valid, self.dataset.n_items, self.device, self.extra)
        _sync(self.device)
        row["time"]["eval"] = time.perf_counter() - start
        row["valid"] = valid.metrics
        row["valid_tie_rate"] = float(valid.tie_rate)
        row["valid_nonfinite"] = int(valid.nonfinite)
        row["host_peak_rss_mb"] = _host_peak_rss_mb()
        score = valid.metrics[SELECTION_METRIC]
        if not math.isfinite(score):  # gathered metrics: the same on every rank
            raise TrainingFailed(f"validation {SELECTION_METRIC} is {score} at epoch {st['epoch']}", shared=True)
        if score > st["best_metric"]:  # strictly better: the earliest best epoch wins ties
            st.update(best_metric=score, best_epoch=st["epoch"], best_valid=valid.metrics, bad_epochs=0,
                      best_weights={k: v.detach().cpu().clone() for k, v in self.model.state_dict().items()})
        else:
            st["bad_epochs"] += 1
        row["best_epoch_so_far"] = st["best_epoch"]
        st["history"].append(row)
        if self.main:
            self.run.append_epoch(row)
        st.update(epoch=st["epoch"] + 1, batch=0, partial=None)
        self.save()
        if self.progress:
            from tqdm.auto import tqdm

            tqdm.write(f"  {self.run.model} seed{self.seed} epoch {row['epoch']}: loss {row['loss']:.4f}  "
                       f"valid HR@20 {valid.metrics.get('HR@20', float('nan')):.2f} "
                       f"MRR@20 {score:.2f}  {row['time']['train']:.1f}s train + {row['time']['eval']:.1f}s eval")

    def finish(self, epochs: int, patience: int) -> dict:
        st = self.state
        if st["best_weights"] is not None:
            self.model.load_state_dict(st["best_weights"])
        test = evaluate_split(self.model, self.dataset.test, self.dataset.n_items, self.device, self.extra)
        timing = dict(timing_summary(st["history"]), **_distributed_timing())
        summary = {
            "status": "ok", "kind": "trained", "best_epoch": st["best_epoch"],
            "epochs_trained": len(st["history"]), "max_epochs": epochs, "patience": patience,
            "stopped_early": len(st["history"]) < epochs,
            "selection": f"valid {SELECTION_METRIC}", "valid": st["best_valid"] or {}, "test": test.metrics,
            "timing": timing, "n_parameters": sum(p.numel() for p in self.model.parameters()),
            **_result_fields("test", test), "test_by_length": _length_buckets(test, self.dataset.test),
            "audit": _audit(self.model, self.dataset, self.device),
        }
        if not self.main:
            return summary
        self.run.write_ranks(test, self.dataset.test.ex_len)
        self.run.write_summary(summary)
        # Keep only the selected weights: enough for later analysis, a fraction of the full state.
        self.run.save_checkpoint({"model": copy.deepcopy(self.model.state_dict()), "best_epoch": st["best_epoch"],
                                  "cfg": self.cfg, "seed": self.seed, "finished": True})
        return summary
