"""One unit of a run: the dataset of a run config, and one model trained with one seed into its record.
`sbr-bench run`, sweeps (local and Ray engines) and torchrun all train units through `train_unit`."""

from __future__ import annotations

import sys
import traceback

from .errors import ConfigError


def load_dataset(spec: dict):
    """The processed dataset of a `dataset_spec`; every split must hold examples to train and select on."""
    from .data.dataset import load_dataset as load

    dataset = load(spec["name"], data_dir=spec["data_dir"], protocol=spec.get("protocol"),
                   valid_fraction=spec.get("valid_fraction", 0.1), **spec.get("params", {}))
    for split in ("train", "valid", "test"):
        if len(getattr(dataset, split)) == 0:
            raise ConfigError("dataset.name", f"the {split} split has no examples"
                              + (" (raise dataset.valid_fraction)" if split == "valid" else ""), spec["name"])
    return dataset


def train_unit(run_dir, name: str, cfg: dict, seed: int, dataset, device, config: dict, progress: bool):
    """Train one model with one seed; record a failure instead of raising (the other units go on).
    `config["discard_checkpoint"]` (set by a resume, never recorded) moves an unreadable checkpoint aside."""
    from . import distributed
    from .io import remove_orphans
    from .models.registry import build_model
    from .runs import RecordError, selection_of
    from .training import TrainingFailed, seed_everything, train_model

    unit = run_dir.unit(name, seed)
    if distributed.is_main():
        for folder in (unit.path, unit.refit.path):
            remove_orphans(folder)  # temporary files of a process killed while writing
    if unit.is_finished():
        summary = unit.read_summary()
        print(f"[{name} seed {seed}] already finished ({summary.get('status')}), skipped")
        return summary
    if distributed.is_main() and config.get("discard_checkpoint"):
        for record in (unit, unit.refit):
            if (aside := record.discard_unreadable_checkpoint()) is not None:
                print(f"[{name} seed {seed}] unreadable checkpoint moved to {aside}; training from scratch")
    print(f"[{name} seed {seed}] {'resuming' if unit.checkpoint_path.exists() else 'training'} on {device}",
          flush=True)
    def build():
        seed_everything(seed, config["deterministic"])  # model init depends on the seed
        return build_model(name, dataset.n_items, cfg)[0]

    trackers = []
    try:
        if distributed.is_main() and config.get("log"):
            from .callbacks import make_trackers

            trackers = make_trackers(config["log"], unit, run_dir.path.parent, run_dir.run_id, cfg)
        summary = train_model(build(), dataset, cfg, unit, device=device, seed=seed, progress=progress,
                              checkpoint_every=config["checkpoint_every"], deterministic=config["deterministic"],
                              selection=selection_of(config), rebuild=build, callbacks=trackers)
    except TrainingFailed as e:
        if distributed.world() > 1 and not e.shared:  # one rank alone: the others wait in a collective
            raise
        if not distributed.is_main():
            return {"status": "failed", "reason": e.reason}
        print(f"[{name} seed {seed}] FAILED: {e.reason}", file=sys.stderr)
        return unit.fail(e.reason)
    except (KeyboardInterrupt, RecordError):  # an unsafe or changed checkpoint: the user decides, exit 2
        raise
    except Exception as e:  # a broken model must not take the other models down
        if distributed.world() > 1:  # ... except under torchrun: stop the job; --resume retries the unit
            raise
        reason = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"[:300]
        return _record_failure(unit, reason, traceback.format_exc())
    finally:
        for tracker in trackers:
            tracker.close()
    test, tag = summary["test"], " best-on-test" if summary.get("test_selected") else ""
    print(f"[{name} seed {seed}] test{tag} HR@20 {test.get('HR@20', float('nan')):.2f}  "
          f"MRR@20 {test.get('MRR@20', float('nan')):.2f}  (best epoch {summary.get('best_epoch')})", flush=True)
    return summary


def _record_failure(unit, reason: str, trace: str) -> dict:
    """Record a failed unit: error.txt and a failed summary. Writing either may itself fail (a full disk):
    then say so and go on to the next unit, with the failure in this process's output only."""
    from .io import write_text

    where = f"traceback in {unit.path / 'error.txt'}"
    try:
        write_text(unit.path / "error.txt", trace)
    except OSError as e:
        where = f"traceback not written: {e.strerror or e}"
    print(f"[{unit.model} seed {unit.seed}] FAILED: {reason} ({where})", file=sys.stderr)
    try:
        return unit.fail(reason)
    except OSError as e:
        print(f"[{unit.model} seed {unit.seed}] its failure could not be recorded either ({e.strerror or e}); "
              "--resume will train it again", file=sys.stderr)
        return {"status": "failed", "reason": reason, "model": unit.model, "seed": unit.seed}
