"""`Experiment`: which models, on which data, over which seeds, selected how; `.run()` trains and tests every
(model, seed) unit into a run folder and returns its `Results`.

`sbr-bench run` (and its `--config FILE`), `sweep`, `dissect`, `reproduce`, the Ray engine and torchrun all
build an `Experiment` and go through `Experiment.plan` (the run config) and `units.train_unit` (one unit).
Every folder of `run` and `sweep` holds `experiment.toml`, the experiment it ran: `Experiment.from_toml` of
it (or `sbr-bench run --config` it) runs the same experiment again.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import shlex
import sys
import time
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from .errors import ConfigError, UserError
from .models.config import validate
from .runs import DEFAULT_SELECTION, SELECTIONS

# Epoch caps for built-in datasets when neither `epochs` nor a model's own `epochs` override is given.
DEFAULT_EPOCH_CAPS = {"synthetic": 5}
# Settings the built-in synthetic data's size needs, by the module that defines the models, applied unless
# the experiment sets the key, and named in every table caption: at its paper's d = 256 Atten-Mixer peaks
# after its first epoch on 500 items and then overfits; at d = 64 it peaks after 2-10 (docs/synthetic.md).
SYNTHETIC_SETTINGS = {"sbr_bench.models.attenmixer": ({"dim": 64}, "Atten-Mixer models at d = 64 (at d = 256 "
                                                                   "they peak after one epoch on this data)")}
DEFAULT_CHECKPOINT_EVERY = 1000
EXPERIMENT_FILE = "experiment.toml"  # = RunDir.TOML


@dataclass
class DataConfig:
    """Which dataset and how it is prepared (`sbr_bench.load_dataset` takes the same arguments).

    Attributes:
        name: a built-in or imported dataset name (`sbr-bench datasets list`), `synthetic:tiny`, or the
            path of a preprocessed split or click log.
        data_dir: where processed datasets are cached.
        protocol: `srgnn` or `lessr` preprocessing of a raw source (default: the dataset's own).
        valid_fraction: the latest share of training sessions held out for validation.
        params: protocol parameters, e.g. `{"strict": True}`.
    """

    name: str = "synthetic"
    data_dir: str = "datasets"
    protocol: str | None = None
    valid_fraction: float = 0.1
    params: dict = field(default_factory=dict)

    def __post_init__(self):
        self.data_dir = _path_text(self.data_dir)
        validate(self, "dataset.")
        if self.protocol not in (None, "srgnn", "lessr"):
            raise ConfigError("dataset.protocol", "expected srgnn or lessr", self.protocol)
        if not 0 < self.valid_fraction < 1:
            raise ConfigError("dataset.valid_fraction", "must lie between 0 and 1", self.valid_fraction)

    def spec(self) -> dict:
        return dataclasses.asdict(self)


@dataclass
class Experiment:
    """A benchmark experiment: typed and validated on construction (a `ConfigError` names the setting).

    Attributes:
        models: names, `ENCODER+READOUT` compositions, `all` (every model but ablations and the extra
            anchors), `anchors` (counting, rule and kNN anchors) or `table3`; a comma-separated string is split.
        dataset: a `DataConfig`, a dataset name, or a dict of `DataConfig` fields.
        seeds: a list of seeds, or a count n for seeds 0..n-1.
        epochs: epochs for every trainable model (default: each model's own, capped at 5 on synthetic data).
        batch_size: training batch size for every trainable model.
        overrides: parameters for every selected model that has them, e.g. `{"dim": 64}`.
        model_overrides: parameters for one model, e.g. `{"srgnn": {"step": 2}}`; they win over `overrides`.
        selection: `refit` | `valid` | `literature` (`sbr_bench.runs.SELECTIONS`).
        device: `auto` | `cpu` | `cuda[:k]`.
        deterministic: `torch.use_deterministic_algorithms` (warn-only).
        checkpoint_every: also checkpoint every N batches within an epoch (0: epoch ends only).
        runs_dir, run_id: where the run folder goes (default id: UTC time + config hash).
        log: experiment trackers for every unit, `tensorboard` and/or `mlflow` (`sbr_bench.callbacks`).
    """

    models: list = field(default_factory=lambda: ["all"])
    dataset: DataConfig = field(default_factory=DataConfig)
    seeds: list = field(default_factory=lambda: [0])
    epochs: int | None = None
    batch_size: int | None = None
    overrides: dict = field(default_factory=dict)
    model_overrides: dict = field(default_factory=dict)
    selection: str = DEFAULT_SELECTION
    device: str = "auto"
    deterministic: bool = False
    checkpoint_every: int = DEFAULT_CHECKPOINT_EVERY
    runs_dir: str = "runs"
    run_id: str | None = None
    log: list = field(default_factory=list)

    def __post_init__(self):
        from .callbacks import check_trackers
        from .runs import check_run_id

        # The shorthands first (a comma-separated string, a dataset name or table, a number of seeds) ...
        self.models, self.log = _names(self.models), _names(self.log)
        if isinstance(self.dataset, str):
            self.dataset = DataConfig(name=self.dataset)
        elif isinstance(self.dataset, dict):
            self.dataset = DataConfig(**_known("dataset", self.dataset, DataConfig))
        self.seeds = _seeds(self.seeds)
        self.runs_dir = _path_text(self.runs_dir)
        validate(self)  # ... then every field's type, then what a type cannot say
        if not self.models or not all(isinstance(m, str) and m for m in self.models):
            raise ConfigError("models", "expected model names (all for every model)", self.models)
        for key in ("epochs", "batch_size"):
            if getattr(self, key) is not None and getattr(self, key) < 1:
                raise ConfigError(key, "must be at least 1", getattr(self, key))
        for name, params in self.model_overrides.items():
            if not isinstance(params, dict):
                raise ConfigError(f"model_overrides.{name}", "expected a table of parameters", params)
        if self.selection not in SELECTIONS:
            raise ConfigError("selection", f"expected one of {', '.join(SELECTIONS)}", self.selection)
        if self.checkpoint_every < 0:
            raise ConfigError("checkpoint_every", "expected 0 (end of epoch only) or more batches",
                              self.checkpoint_every)
        self.log = check_trackers(self.log)
        if self.run_id is not None:
            check_run_id(self.run_id)

    # --- files ------------------------------------------------------------------------------------
    @classmethod
    def from_dict(cls, data: dict) -> "Experiment":
        """An experiment from a dict of its fields (unknown keys are a ConfigError)."""
        return cls(**_known("", data, cls))

    @classmethod
    def from_toml(cls, path) -> "Experiment":
        """Read an experiment file (TOML; the standard library's reader: data only, nothing is executed).

        Raises:
            UserError: the file is missing or not TOML; ConfigError: a setting is wrong (the message
            starts with the file name).
        """
        return from_file(cls, path)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def to_toml(self) -> str:
        """This experiment as TOML that `from_toml` reads back (unset settings are left out)."""
        return toml_text(self.to_dict())

    def replace(self, **changes) -> "Experiment":
        return dataclasses.replace(self, **changes)

    # --- what runs ----------------------------------------------------------------------------------
    def model_names(self, dataset) -> list[str]:
        """`models` resolved for `dataset` (`all` includes the oracle on the built-in synthetic data)."""
        from .models.oracle import oracle_available
        from .models.registry import resolve_names

        names = resolve_names(self.models, synthetic=oracle_available(dataset))
        if not names:
            raise ConfigError("models", "no models available", self.models)
        return names

    def model_configs(self, names: list[str], dataset_name: str, notes: list | None = None) -> dict:
        """The full cfg of every model: defaults, then `overrides` (for the models that have each key),
        `epochs`/`batch_size`, then `model_overrides`; on the built-in synthetic data epochs are capped
        and `SYNTHETIC_SETTINGS` apply, unless set. What was applied is appended to `notes`."""
        from .models.registry import TABLE3_DIM, model_config, spec_for

        common = dict(self.overrides)
        if "table3" in self.models:
            common.setdefault("dim", TABLE3_DIM)  # both sides of Table 3 at the paper's d
        for key in ("epochs", "batch_size"):
            if getattr(self, key) is not None:
                common[key] = getattr(self, key)
        for name in self.model_overrides:
            if name not in names:
                raise ConfigError(f"model_overrides.{name}", f"'{name}' is not among the models "
                                  f"({', '.join(names)})")
        defaults = {name: model_config(name) for name in names}
        for key in self.overrides:
            if not any(key in cfg for cfg in defaults.values()):
                raise ConfigError(f"overrides.{key}", f"no selected model has the parameter '{key}'")
        cap = epoch_cap(dataset_name)
        configs, applied = {}, {}
        for name in names:
            given = {k: v for k, v in common.items() if k in defaults[name]}
            given.update(self.model_overrides.get(name, {}))
            if dataset_name.startswith("synthetic"):
                readout = name.rpartition("+")[2]  # a composition takes the readout's settings
                settings, note = SYNTHETIC_SETTINGS.get(spec_for(readout).source, ({}, None))
                unset = {k: v for k, v in settings.items() if k not in given}
                if unset:
                    given.update(unset)
                    applied.setdefault(note, []).append(name)
            cfg = model_config(name, given)
            if cap is not None and "epochs" not in given and "epochs" in cfg:
                if int(cfg["epochs"]) > cap:
                    applied.setdefault(f"epochs capped at {cap} on this built-in dataset", []).append(name)
                cfg["epochs"] = min(int(cfg["epochs"]), cap)
            configs[name] = cfg
        if notes is not None:
            notes += [f"{note}: {', '.join(models)}" for note, models in applied.items()]
        return configs

    def plan(self, dataset, command: str | None = None) -> dict:
        """The run config (config.json) of this experiment on `dataset`: resolved models and their full cfg;
        every model is built once, so a bad parameter is an error before anything trains."""
        from .data.synthetic import is_synthetic
        from .models.registry import build_model
        from .runs import dataset_fingerprint

        names = self.model_names(dataset)
        notes = []
        configs = self.model_configs(names, dataset.name, notes)
        if "oracle" in configs and is_synthetic(dataset):  # the oracle rebuilds this dataset's generator
            configs["oracle"].update(synthetic_size=dataset.meta["size"], synthetic_seed=int(dataset.meta["seed"]))
        for name, cfg in configs.items():
            check_memory(name, cfg, dataset.n_items)
            try:
                build_model(name, dataset.n_items, cfg)
            except (ValueError, TypeError) as e:
                raise ConfigError("models", str(e), name) from None
        return {
            "command": command or f"python: Experiment(...).run() in {shlex.quote(sys.argv[0] or 'python')}",
            "models": names,
            "cfg": configs,
            "seeds": list(self.seeds),
            "dataset": dict(self.dataset.spec(), resolved_name=dataset.name, meta=dataset.meta,
                            fingerprint=dataset_fingerprint(dataset), stats=dataset.stats()),
            "device": self.device,
            "deterministic": self.deterministic,
            "checkpoint_every": self.checkpoint_every,
            "settings_notes": notes,  # dataset-size settings applied, for every table caption
            "selection": self.selection,
            "log": list(self.log),
        }

    def load_dataset(self):
        from .units import load_dataset

        return load_dataset(self.dataset.spec())

    # --- running ------------------------------------------------------------------------------------
    def run(self, progress: bool = False, engine: str = "local", command: str | None = None,
            **engine_options) -> "Results":
        """Train and test every (model, seed) unit into a new run folder under `runs_dir`.

        Args:
            progress: progress bars and per-epoch lines.
            engine: `local` (units one after another in this process; under torchrun every process takes
                part) or `ray` (one Ray task per unit; `engine_options`: address, cpus_per_task,
                gpus_per_task, max_retries as in `engines.run_ray`).
            command: what to record as the command that started the run.
        Returns:
            The `Results` of the run folder.
        """
        if engine not in ("local", "ray"):
            raise ConfigError("engine", "expected local or ray", engine)
        ray_gpus = engine_options.get("gpus_per_task", 0) if engine == "ray" else None
        return _in_session(self.device, lambda device, quiet: _execute(
            lambda held: _start(self, device, command, held, ray_gpus), progress and not quiet, engine,
            engine_options))


def resume(run, runs_dir="runs", device: str | None = None, checkpoint_every: int | None = None,
           deterministic: bool = False, progress: bool = False, discard_checkpoint: bool = False) -> "Results":
    """Continue an interrupted run (a run id under `runs_dir` or a run folder) with its recorded config:
    finished units are kept, an unfinished one continues from its checkpoint. `discard_checkpoint`: a
    checkpoint that cannot be read is moved aside and its unit trained from scratch."""
    from .runs import RunDir

    run_dir = RunDir.open(str(run), runs_dir)
    device = device or run_dir.config()["device"]
    # Options of this process only, never recorded: the checkpoint interval, determinism, discarding.
    changes = dict(discard_checkpoint=discard_checkpoint, **({"checkpoint_every": checkpoint_every}
                                                             if checkpoint_every is not None else {}),
                   **({"deterministic": True} if deterministic else {}))
    return _in_session(device, lambda dev, quiet: _execute(
        lambda held: _continue(run_dir, dev, device, changes, f"resume {run}", held), progress and not quiet,
        "local", {}))


def check_memory(name: str, cfg: dict, n_items: int) -> None:
    """Refuse a model that cannot fit: its item table and one d x d weight, each with its gradient and
    Adam's two moments (16 bytes a number), are a lower bound of what training holds; more than this
    machine's memory is a ConfigError with the estimate (before anything is allocated)."""
    if "dim" not in cfg:
        return
    dim = int(cfg["dim"])
    need = 16 * ((n_items + 1) * dim + dim * dim)
    have = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    if need > have:
        raise ConfigError(f"model_overrides.{name}.dim", f"needs at least {need / 2**30:,.0f} GiB (the item "
                          f"table of {n_items:,} items and one {dim:,} x {dim:,} weight, with gradients and Adam "
                          f"states), more than the {have / 2**30:,.0f} GiB of memory this machine has", dim)


def epoch_cap(dataset_name: str) -> int | None:
    for prefix, cap in DEFAULT_EPOCH_CAPS.items():
        if dataset_name.startswith(prefix):
            return cap
    return None


def _in_session(device_name: str, body):
    """Run `body(device, quiet)` in a (torchrun-aware) process group; ranks but 0 run quietly."""
    from . import distributed

    with distributed.session(device_name) as device:
        if distributed.is_main():
            return body(device, False)
        with open(os.devnull, "w") as quiet, contextlib.redirect_stdout(quiet):  # rank 0 prints for all
            return body(device, True)


def _execute(prepare, progress: bool, engine: str, engine_options: dict) -> "Results":
    """Prepare a run (`prepare(held)` -> run folder, config, dataset, device; it puts the folders it locks
    in `held`), train its units and collect the results. The run folder stays locked throughout
    (`sbr_bench.lock`; a second process on it is refused)."""
    from . import distributed

    held = []
    try:
        run_dir, config, dataset, device = prepare(held)
        _train_units(run_dir, config, dataset, device, progress, engine, engine_options)
        results = run_dir.write_results() if distributed.is_main() else None
        return Results(run_dir.path, distributed.broadcast_object(results))
    finally:
        for locked in held:  # also on errors; the end of the process would release it anyway
            locked.unlock()


def _start(experiment: Experiment, device, command, held: list, ray_gpus: float | None = None):
    """A new run of `experiment`: its dataset, config and run folder (locked). `ray_gpus`: the GPUs of each
    Ray task, None when the units train here."""
    from . import distributed
    from .runs import new_run_id
    from .training import check_precisions, resolve_device, seed_everything

    dataset = _load_in_turn(experiment.dataset.spec())
    config = experiment.plan(dataset, command)
    device = device if device is not None else resolve_device(config["device"])
    check_precisions(config["cfg"].values(), device, ray_gpus)
    config["distributed"] = distributed.describe()
    if config["deterministic"]:  # so that env.json records the flags in force
        seed_everything(0, deterministic=True)
    hashed = {k: config[k] for k in ("models", "cfg", "seeds", "dataset", "deterministic", "selection")}
    run_id = experiment.run_id or (new_run_id(hashed) if distributed.is_main() else None)
    run_dir = _create_run_dir(experiment, distributed.broadcast_object(run_id), config)
    held.append(run_dir)
    return run_dir, config, dataset, device


def _continue(run_dir, device, device_name: str, changes: dict, what: str, held: list):
    """A recorded run to resume: locked, its config (with this process's `changes`), its dataset (checked
    against the recorded fingerprint) and the device."""
    from . import distributed
    from .env import environment
    from .io import remove_orphans, write_json
    from .runs import dataset_fingerprint
    from .training import check_precisions, resolve_device

    held.append(run_dir)
    _on_main(lambda: run_dir.lock(what))
    config = dict(run_dir.config(), **changes)
    dataset = _load_in_turn(config["dataset"])
    if dataset_fingerprint(dataset) != config["dataset"]["fingerprint"]:
        raise UserError(f"{what}: dataset '{config['dataset']['name']}' differs from the one this run "
                        "started with (fingerprint mismatch); start a new run instead")
    device = device if device is not None else resolve_device(device_name)
    check_precisions(config["cfg"].values(), device)
    if distributed.is_main():
        remove_orphans(run_dir.path)  # e.g. a results.json a kill interrupted; units clean their own folders
        write_json(run_dir.path / f"env.resume-{time.strftime('%Y%m%d-%H%M%S', time.gmtime())}.json",
                   environment())
    return run_dir, config, dataset, device


def _train_units(run_dir, config, dataset, device, progress, engine, engine_options) -> None:
    from . import distributed
    from .units import train_unit

    world = distributed.world()
    print(f"run {run_dir.run_id}: {len(config['models'])} model(s) x {len(config['seeds'])} seed(s) on "
          f"{config['dataset']['resolved_name']} ({len(dataset.train)} train / {len(dataset.valid)} valid / "
          f"{len(dataset.test)} test examples, {dataset.n_items} items), device {device}"
          + (f", {world} processes ({distributed.backend()})" if world > 1 else ""), flush=True)
    try:
        if engine == "ray":
            from .engines import Unit, run_ray

            units = [Unit(str(run_dir.path.resolve()), name, seed, f"{run_dir.run_id} {name} seed {seed}")
                     for name in config["models"] for seed in config["seeds"]
                     if not run_dir.unit(name, seed).is_finished()]
            if units:
                options = dict(dict(address=None, cpus_per_task=1, gpus_per_task=0, max_retries=3), **engine_options)
                run_ray(units, str(Path(config["dataset"]["data_dir"]).resolve()), config["device"], **options)
            return
        for name in config["models"]:
            for seed in config["seeds"]:
                train_unit(run_dir, name, config["cfg"][name], seed, dataset, device, config, progress)
    except KeyboardInterrupt:
        print(f"\ninterrupted: continue with `sbr-bench run --resume {run_dir.path}`", file=sys.stderr)
        raise


def from_file(cls, path):
    """`cls.from_dict` of a TOML file (the standard library's reader: data only); a ConfigError names the file."""
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except OSError as e:
        raise UserError(f"{path}: cannot read it ({e.strerror or e})") from None
    except tomllib.TOMLDecodeError as e:
        raise UserError(f"{path}: not a valid TOML file ({e})") from None
    try:
        return cls.from_dict(data)
    except ConfigError as e:
        raise ConfigError(e.key, e.message, e.value, source=str(path)) from None


def experiment_record(experiment: Experiment, config: dict) -> str:
    """The text of `<run>/experiment.toml`: the experiment as given, with its model list resolved (`all`
    becomes the names) and without a run id. With the same sbr-bench version it runs the same config
    again (config.json keeps every model's full parameters for other versions); options given with
    `--config` override it as they override any experiment file."""
    from . import __version__

    given = experiment.replace(models=list(config["models"]), run_id=None)
    try:
        text = ("# The experiment of this run (sbr-bench " + __version__ + "): `sbr-bench run --config "
                "experiment.toml`\n# (or sbr_bench.Experiment.from_toml) runs it again, into a new run folder.\n"
                + given.to_toml())
        tomllib.loads(text)  # what we write must read back
    except (ValueError, tomllib.TOMLDecodeError) as e:  # checked before the run folder exists
        raise ConfigError("experiment", f"cannot be recorded as an experiment file ({e})") from None
    return text


def _on_main(action) -> None:
    """`action()` on rank 0; an error there is raised on every rank (a ConfigError as itself, for the CLI's
    wording; another UserError as its message; anything else on the other ranks as a RuntimeError)."""
    from . import distributed

    if distributed.world() == 1:
        return action()
    error, raised = None, None
    if distributed.is_main():
        try:
            action()
        except ConfigError as e:
            error, raised = e, e
        except UserError as e:
            error, raised = UserError(str(e)), e
        except Exception as e:
            error, raised = RuntimeError(f"rank 0 failed: {type(e).__name__}: {e}"), e
    error = distributed.broadcast_object(error)
    if raised is not None:
        raise raised
    if error is not None:
        raise error


def _load_in_turn(spec: dict):
    """`load_dataset` on rank 0 first (it may prepare and cache the dataset), then on the other ranks."""
    from .units import load_dataset

    found = []
    _on_main(lambda: found.append(load_dataset(spec)))
    return found[0] if found else load_dataset(spec)


def create_run_dir(runs_dir, run_id: str, config: dict, experiment_toml: str, kind=None):
    """A new run folder (a `RunDir`, or the subclass `kind`) with its record (config.json), env.json and
    experiment file (experiment.toml), holding its lock (released if a write fails)."""
    from .env import environment
    from .io import write_text
    from .runs import RunDir

    kind = kind or RunDir
    run_dir = kind.create(runs_dir, run_id, config, environment(), lock=True)
    try:
        write_text(run_dir.path / kind.TOML, experiment_toml)
    except BaseException:
        run_dir.unlock()
        raise
    return run_dir


def _create_run_dir(experiment: Experiment, run_id: str, config: dict):
    """Rank 0 creates the run folder and holds its lock; every rank gets its path."""
    from . import distributed
    from .runs import RunDir

    made, text = [], experiment_record(experiment, config)

    def create():
        made.append(create_run_dir(experiment.runs_dir, run_id, config, text))

    _on_main(create)
    path = distributed.broadcast_object(str(made[0].path) if made else None)
    return made[0] if made else RunDir(path)


class Results:
    """What a run produced: its folder, config, metrics per model and seed, and per-example ranks."""

    def __init__(self, path, summary: dict | None = None):
        from .runs import RunDir

        self.run_dir = RunDir(path)
        self.summary = summary if summary is not None else self.run_dir.write_results()

    @classmethod
    def load(cls, path) -> "Results":
        """The results of an existing run folder."""
        from .runs import RunDir, read_record

        return cls(path, read_record(RunDir(path).results_path, "run `sbr-bench run --resume` on the folder to "
                                                                "write it again"))

    @property
    def path(self) -> Path:
        return self.run_dir.path

    @property
    def config(self) -> dict:
        return self.run_dir.config()

    @property
    def metrics(self):
        """A pandas DataFrame, one row per (model, seed): status, best epoch, epochs trained and the test
        metrics (HR@K, MRR@K, NDCG@K, x100) under the run's selection."""
        import pandas as pd

        config, rows = self.config, []
        for name in config["models"]:
            for seed in config["seeds"]:
                summary = self.run_dir.unit(name, seed).read_summary() or {"status": "not finished"}
                rows.append({"model": name, "seed": seed, "status": summary.get("status"),
                             "selection": summary.get("selection", config.get("selection")),
                             "best_epoch": summary.get("best_epoch"), "epochs_trained": summary.get("epochs_trained"),
                             **summary.get("test", {})})
        return pd.DataFrame(rows)

    def ranks(self, model: str, seed: int = 0) -> dict:
        """Per-example test ranks of one unit (numpy arrays: expected, optimistic, pessimistic, prefix
        length), in test split order; None if the unit did not finish."""
        return self.run_dir.unit(model, seed).read_ranks()

    def table(self) -> str:
        """The Table 2 style text that `sbr-bench run` prints."""
        from .runs import results_text

        return results_text(self.summary)

    def __repr__(self) -> str:
        return f"Results({str(self.path)!r})"


# --- helpers ----------------------------------------------------------------------------------------

def _whole(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _names(value):
    """A comma-separated string as a list of its names; anything else as it is (checked by type)."""
    return [part.strip() for part in value.split(",") if part.strip()] if isinstance(value, str) else value


def _path_text(value):
    return os.fspath(value) if isinstance(value, os.PathLike) else value


def _known(prefix: str, data: dict, cls) -> dict:
    if not isinstance(data, dict):
        raise ConfigError(prefix or "experiment", "expected a table of settings", data)
    names = [f.name for f in dataclasses.fields(cls)]
    for key in data:
        if key not in names:
            raise ConfigError(f"{prefix}.{key}" if prefix else key, f"unknown setting; known: {', '.join(names)}")
    return dict(data)


def _seeds(seeds) -> list[int]:
    if _whole(seeds):
        if seeds < 1:
            raise ConfigError("seeds", "need at least one seed", seeds)
        return list(range(seeds))
    if not isinstance(seeds, (list, tuple, range)) or not seeds or not all(_whole(s) for s in seeds):
        raise ConfigError("seeds", "expected a number of seeds or a list of whole numbers", seeds)
    if min(seeds) < 0:  # numpy refuses them: every unit would fail instead of one error
        raise ConfigError("seeds", "seeds must be 0 or more", seeds)
    return list(dict.fromkeys(seeds))


def toml_text(data: dict) -> str:
    """TOML for nested dicts of strings, numbers, booleans and lists of them (None values are left out)."""
    lines, tables = [], []
    for key, value in data.items():
        if value is None or value == {}:
            continue
        if isinstance(value, dict):
            tables.append((key, value))
        else:
            lines.append(f"{_toml_key(key)} = {_toml_value(value)}")
    out = "\n".join(lines) + ("\n" if lines else "")
    for key, table in tables:
        out += _toml_table(_toml_key(key), table)
    return out


def _toml_table(name: str, table: dict) -> str:
    plain = {k: v for k, v in table.items() if not isinstance(v, dict)}
    nested = {k: v for k, v in table.items() if isinstance(v, dict) and v}
    out = ""
    if plain or not nested:
        out += f"\n[{name}]\n" + toml_text(plain)
    for key, value in nested.items():
        out += _toml_table(f"{name}.{_toml_key(key)}", value)
    return out


def _toml_key(key: str) -> str:
    bare = key and all(c.isascii() and (c.isalnum() or c in "_-") for c in key)
    return key if bare else _toml_string(key)


def _toml_string(text: str) -> str:
    if any(0xD800 <= ord(c) <= 0xDFFF for c in text):
        raise ValueError(f"{text!r} holds a lone surrogate, which TOML cannot hold")
    escaped = "".join(c if c.isprintable() and c not in '"\\' else
                      f"\\u{ord(c):04x}" if ord(c) <= 0xFFFF else f"\\U{ord(c):08x}" for c in text)
    return f'"{escaped}"'


def _toml_value(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return _toml_string(value)
    if isinstance(value, (list, tuple)) and not any(isinstance(v, dict) for v in value):
        return "[" + ", ".join(_toml_value(v) for v in value if v is not None) + "]"
    raise ValueError(f"cannot write {type(value).__name__} {value!r:.60} to an experiment file")
