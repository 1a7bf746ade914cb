"""Per-epoch training statistics: loss (and its parts) averaged over examples, and the time of each phase
(data: collate + copy to device; forward: the loss; backward: gradients + optimizer step). The running
sums are part of a mid-epoch checkpoint (`as_dict`), so a resumed epoch reports the whole epoch."""

from __future__ import annotations


class EpochStats:
    def __init__(self, partial: dict | None = None):
        self.sums = partial or {"loss_sum": 0.0, "parts": {}, "examples": 0, "batches": 0,
                                "data": 0.0, "forward": 0.0, "backward": 0.0, "checkpoint": 0.0}

    def add(self, loss: float, parts: dict, examples: int, data_s: float, forward_s: float, backward_s: float):
        s = self.sums
        s["loss_sum"] += loss * examples
        for key, value in parts.items():
            s["parts"][key] = s["parts"].get(key, 0.0) + float(value) * examples
        s["examples"] += examples
        s["batches"] += 1
        s["data"] += data_s
        s["forward"] += forward_s
        s["backward"] += backward_s

    def add_checkpoint_time(self, seconds: float) -> None:
        self.sums["checkpoint"] = self.sums.get("checkpoint", 0.0) + seconds  # outside the timed phases

    @property
    def train_s(self) -> float:
        return self.sums["data"] + self.sums["forward"] + self.sums["backward"]

    @property
    def loss(self) -> float:
        return self.sums["loss_sum"] / max(self.sums["examples"], 1)

    @property
    def examples_per_s(self) -> float:
        return self.sums["examples"] / max(self.train_s, 1e-9)

    def as_dict(self) -> dict:
        return self.sums

    def row(self, epoch: int, lr: float, resumed_mid_epoch: bool) -> dict:
        """The epoch's line in epochs.jsonl (before evaluation adds its metrics and time)."""
        s, n = self.sums, max(self.sums["examples"], 1)
        return {
            "epoch": epoch, "lr": lr, "loss": self.loss, "loss_parts": {k: v / n for k, v in s["parts"].items()},
            "examples": s["examples"], "batches": s["batches"],
            "time": {"data": s["data"], "forward": s["forward"], "backward": s["backward"], "train": self.train_s,
                     "checkpoint": s.get("checkpoint", 0.0)},
            "examples_per_s": self.examples_per_s, "resumed_mid_epoch": bool(resumed_mid_epoch),
        }
