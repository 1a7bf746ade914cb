"""A unit's training checkpoint: weights, optimizer, schedule, progress and every random stream, so that a
run killed at any point resumes with exactly the numbers of an uninterrupted one (on CPU).

A checkpoint records what it was trained with (a hash of the cfg, the seed and the dataset fingerprint);
resuming it under another is refused (`RecordError`). Under torchrun rank 0 writes it, with every rank's
random states; every rank reads it.
"""

from __future__ import annotations

import random

import numpy as np
import torch

from . import distributed
from .runs import RecordError, Run, config_hash, dataset_fingerprint


def rng_state() -> dict:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def seed_rank(seed: int, rank: int) -> None:
    """Per-rank random streams for multi-process training (dropout masks must differ between ranks)."""
    derived = int(np.random.SeedSequence([seed, rank]).generate_state(1)[0])
    random.seed(derived)
    np.random.seed(derived)
    torch.manual_seed(derived)


class Checkpointer:
    """Saves and restores one unit's training state in `run.checkpoint_path`."""

    def __init__(self, run: Run, cfg: dict, seed: int, dataset):
        self.run, self.cfg, self.seed = run, cfg, int(seed)
        self.world, self.rank = distributed.world(), distributed.rank()
        self.identity = {"cfg": config_hash(cfg), "seed": self.seed, "dataset": dataset_fingerprint(dataset)}

    def save(self, model, optimizer, scheduler, state: dict) -> None:
        """Rank 0 writes the checkpoint, with every rank's RNG states (a collective: all ranks call it)."""
        rng_ranks = distributed.all_gather_object(rng_state()) if self.world > 1 else None
        if not distributed.is_main():
            return
        saved = {"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                 "scheduler": scheduler.state_dict(), "rng": rng_state(), "state": state, "cfg": self.cfg,
                 "seed": self.seed, "unit": self.identity}
        if rng_ranks is not None:
            saved.update(rng_ranks=rng_ranks, world_size=self.world)
        self.run.save_checkpoint(saved)

    def restore(self, model, optimizer, scheduler) -> dict | None:
        """Load the checkpoint into `model`, `optimizer` and `scheduler` and this rank's RNG states; return
        the training state, or None when there is nothing to resume. Resumed with another number of
        processes, the ranks get fresh per-rank streams."""
        ckpt = self.run.load_checkpoint()
        if ckpt is None or "optimizer" not in ckpt:  # none, or the slim file of a finished unit
            return None
        recorded = ckpt.get("unit", self.identity)  # older checkpoints have none: resumed as before
        if recorded != self.identity:
            changed = [k for k, v in self.identity.items() if recorded.get(k) != v]
            raise RecordError(f"{self.run.path}: its checkpoint was trained with another {', '.join(changed)} "
                              f"than this run has; delete {self.run.checkpoint_path.name} there to train the unit "
                              "from scratch, or start a new run")
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
        rng_ranks = ckpt.get("rng_ranks")
        if self.world == 1:
            set_rng_state(ckpt["rng"])
        elif rng_ranks is not None and len(rng_ranks) == self.world:
            set_rng_state(rng_ranks[self.rank])
        else:
            st = ckpt["state"]
            seed_rank(int(np.random.SeedSequence([self.seed, st["epoch"], st["batch"]]).generate_state(1)[0]),
                      self.rank)
        return ckpt["state"]
