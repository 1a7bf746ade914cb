"""What happens around the training loop, one small class each: the epoch record (epochs.jsonl), the
per-epoch progress line, early stopping, and experiment trackers (TensorBoard, MLflow).

A callback sees the trainer (`trainer.run`: model name, seed, folder; `trainer.phase`: `select`, `refit`,
`valid` or `literature`) and each epoch's row as it goes into epochs.jsonl; `on_fit_end` gets the unit's
summary. Callbacks run on rank 0 only under torchrun.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from .errors import ConfigError
from .runs import SELECTION_METRIC

TRACKERS = ("tensorboard", "mlflow")
INSTALL = {"tensorboard": ("tensorboard", "pip install -e '.[tensorboard]'"),
           "mlflow": ("mlflow", "pip install -e '.[mlflow]'")}


class Callback:
    def on_epoch_end(self, trainer, row: dict) -> None:
        pass

    def on_fit_end(self, trainer, summary: dict) -> None:
        pass

    def close(self) -> None:
        pass


class EpochRecord(Callback):
    """One line per epoch in the unit's epochs.jsonl (the refit's in refit/epochs.jsonl)."""

    def on_epoch_end(self, trainer, row):
        trainer.run.append_epoch(row)


class EpochPrinter(Callback):
    """`srgnn seed0 epoch 3: loss ... valid HR@20 ... MRR@20 ... 12.3s train + 1.0s eval`."""

    def on_epoch_end(self, trainer, row):
        from tqdm.auto import tqdm

        seen = row.get(trainer.watch or "", {})
        tqdm.write(f"  {trainer.run.model} seed{trainer.seed} epoch {row['epoch']}: loss {row['loss']:.4f}  "
                   + (f"{trainer.watch} HR@20 {seen.get('HR@20', float('nan')):.2f} "
                      f"MRR@20 {seen.get(SELECTION_METRIC, float('nan')):.2f}  " if seen else "")
                   + f"{row['time']['train']:.1f}s train + {row['time']['eval']:.1f}s eval")


class EarlyStopping:
    """Stop after `patience` epochs without a strictly better watched MRR@20 (0: never). The count of bad
    epochs lives in the trainer's checkpointed state, so a resumed run stops where the first would have."""

    def __init__(self, patience: int):
        self.patience = int(patience or 0)

    def should_stop(self, state: dict) -> bool:
        return self.patience > 0 and state["bad_epochs"] >= self.patience


def _scalars(row: dict) -> dict:
    """The numbers of an epoch row worth plotting, as tag -> value."""
    out = {"train/loss": row["loss"], "train/lr": row["lr"], "train/examples_per_s": row["examples_per_s"]}
    out.update({f"train/loss_{k}": v for k, v in row.get("loss_parts", {}).items()})
    out.update({f"time/{k}": v for k, v in row["time"].items()})
    for split in ("valid", "test"):
        out.update({f"{split}/{k}": v for k, v in row.get(split, {}).items()})
    return out


def check_trackers(names) -> list[str]:
    """The tracker names, each known and installed (else a ConfigError before anything trains)."""
    import importlib.util

    for name in names:
        if name not in TRACKERS:
            raise ConfigError("log", f"expected {' or '.join(TRACKERS)}", name)
        module, hint = INSTALL[name]
        if importlib.util.find_spec(module) is None:
            raise ConfigError("log", f"{name} is not installed; install the extra with `{hint}`", name)
    return list(names)


def make_trackers(names, unit, runs_dir, run_id: str, cfg: dict) -> list[Callback]:
    """A tracker per name for one unit (`unit`: its `Run`)."""
    made = []
    for name in names:
        if name == "tensorboard":
            made.append(TensorBoardTracker(unit.path / "tensorboard"))
        else:
            made.append(MLflowTracker(unit.path, Path(runs_dir), f"{run_id}/{unit.model}/seed{unit.seed}",
                                      experiment=run_id, params=cfg))
    return made


class _Tracker(Callback):
    """What every tracker records: each epoch's numbers at step = epoch (the refit's under `refit/`) and
    the test metrics under `final_test/` at the tested epoch. A tracker says how to `log` a step."""

    def log(self, scalars: dict, step: int) -> None:  # pragma: no cover - interface
        raise NotImplementedError

    def on_epoch_end(self, trainer, row):
        prefix = "refit/" if trainer.phase == "refit" else ""
        self.log({prefix + tag: value for tag, value in _scalars(row).items()}, row["epoch"])

    def on_fit_end(self, trainer, summary):
        self.log({f"final_test/{k}": v for k, v in summary["test"].items()}, summary.get("best_epoch") or 0)


class TensorBoardTracker(_Tracker):
    """Event files in `<unit>/tensorboard/` (`tensorboard --logdir runs/`)."""

    def __init__(self, log_dir):
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(str(log_dir))

    def log(self, scalars, step):
        for tag, value in scalars.items():
            self.writer.add_scalar(tag, value, step)
        self.writer.flush()

    def close(self):
        self.writer.close()


class MLflowTracker(_Tracker):
    """One MLflow run per unit, in the experiment named after the run folder, with the unit's cfg as
    params (MLflow's names take no `@`: `valid/MRR_at_20`). Tracking URI: $MLFLOW_TRACKING_URI, else a
    local store in `<runs-dir>/mlruns` (MLflow's file store, which MLflow keeps in maintenance mode: allowed
    here for that folder only). A resumed unit continues its MLflow run (its id is kept in
    `<unit>/mlflow.json`)."""

    def __init__(self, unit_path: Path, runs_dir: Path, run_name: str, experiment: str, params: dict):
        import mlflow
        from mlflow.entities import Param

        uri = os.environ.get("MLFLOW_TRACKING_URI")
        if not uri:
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
            uri = (runs_dir.resolve() / "mlruns").as_uri()
        self.client = mlflow.tracking.MlflowClient(uri)
        self.record = unit_path / "mlflow.json"
        if self.record.exists():
            self.run_id = json.loads(self.record.read_text())["run_id"]
        else:
            found = self.client.get_experiment_by_name(experiment)
            experiment_id = found.experiment_id if found else self.client.create_experiment(experiment)
            self.run_id = self.client.create_run(experiment_id, run_name=run_name).info.run_id
            self.client.log_batch(self.run_id, params=[Param(k, str(v)) for k, v in params.items()])
            from .io import write_json

            write_json(self.record, {"run_id": self.run_id, "tracking_uri": uri})

    def log(self, scalars, step):
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self.client.log_batch(self.run_id, metrics=[Metric(tag.replace("@", "_at_"), float(value), now, step)
                                                    for tag, value in scalars.items()])

    def on_fit_end(self, trainer, summary):
        super().on_fit_end(trainer, summary)
        self.client.set_terminated(self.run_id)
