"""Run records: one folder per `sbr-bench run`, one sub-folder per model and seed, and the results index.

```
runs/<run-id>/
  config.json         resolved config: models and their cfg, dataset (meta, fingerprint, stats), seeds, ...
  env.json            hardware and library versions (sbr_bench.env)
  <model>/seed<k>/
    epochs.jsonl      one line per epoch: loss, valid metrics, phase times, examples/s, peak memory, lr
    checkpoint.pt     latest state (end of epoch or mid-epoch): resume continues from here
    summary.json      status ok|failed (+ reason), best epoch, valid + test metrics, timing summary
    ranks.npz         per-example test ranks (expected, pessimistic, optimistic) and prefix lengths
    attempts.jsonl    sweeps only: one line per attempt (engine, host, pid, device, resumed), see engines.py
  results.json        per model: mean ± std over seeds, timing, significance against the best model
  results.md          the same as Markdown tables (paper Table 2 style)
```
A unit (model, seed) is finished when its summary.json says ok; `--resume` skips finished units, retries failed ones and
continues an unfinished one from its checkpoint. Every file is written atomically (`sbr_bench.io`).
"""

from __future__ import annotations

import hashlib
import json
import pickle
import re
import time
import zipfile
from pathlib import Path

import numpy as np

from . import significance
from .errors import ConfigError, UserError
from .io import append_jsonl, atomic_path, read_json, read_jsonl, write_json, write_text

TABLE_KS = (5, 10, 20)
HEADLINE = ("HR@20", "MRR@20")
SELECTION_METRIC = "MRR@20"

# How the reported test numbers were chosen (`--selection`); recorded in every run and shown with every table.
SELECTIONS = {
    "refit": "epochs chosen on validation MRR@20, then the model retrained from scratch on train + validation "
             "for that many epochs; test evaluated once",
    "valid": "epoch chosen on validation MRR@20, the validation split never trained on; test evaluated once",
    "literature": "TEST-SELECTED, OPTIMISTIC: trained on train + validation with the test split evaluated "
                  "after every epoch and each metric's best epoch reported, as the reference code does; "
                  "not comparable with validation-selected numbers",
}
DEFAULT_SELECTION = "refit"


def selection_of(config: dict) -> str:
    """The selection mode of a run config (runs recorded before `--selection` existed used `valid`)."""
    mode = config.get("selection", "valid")
    return mode if mode in SELECTIONS else "valid"


def selection_caption(mode: str) -> str:
    return f"Selection: {mode} ({SELECTIONS[mode]})."


def headline_header(mode: str) -> list[str]:
    """The metric column names: under `literature` they say, in the table itself, that they are test-selected."""
    return [f"{m} best-on-test" if mode == "literature" else m for m in HEADLINE]


def config_hash(config: dict) -> str:
    return hashlib.sha1(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest()[:8]


# A run id is one path component: no separators, never '.' or '..' (nor hidden), so it stays under --runs-dir.
RUN_ID_PATTERN = re.compile(r"[A-Za-z0-9_+=-][A-Za-z0-9._+=-]{0,199}")


def read_record(path, advice: str):
    """A JSON record of a run, or a RecordError naming the file when it is truncated or not JSON."""
    try:
        data = read_json(path)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise RecordError(f"{path}: not a readable record ({type(e).__name__}: {e}); {advice}") from None
    if not isinstance(data, dict):
        raise RecordError(f"{path}: not a record (a JSON object); {advice}")
    return data


def check_run_id(run_id: str) -> str:
    if not isinstance(run_id, str) or not RUN_ID_PATTERN.fullmatch(run_id):
        raise ConfigError("run_id", "a run id is one folder name of letters, digits and ._-+= (not starting "
                          "with '.', at most 200 characters)", run_id)
    return run_id


class RecordError(UserError):
    """A run record that cannot be used as it is (an unsafe or damaged checkpoint, a unit whose config or
    data changed): the run stops with this error instead of recording the unit as failed."""


def _checkpoint_globals() -> list:
    """What a checkpoint may hold besides tensors and plain containers: numpy arrays, dtypes and scalars
    (numpy's RNG state, the literature mode's best test ranks). Under both numpy 2 and numpy 1 names, so
    checkpoints written with either load."""
    try:
        from numpy._core import multiarray
    except ImportError:  # numpy 1
        from numpy.core import multiarray
    allowed = [np.ndarray, np.dtype]
    for fn in (multiarray._reconstruct, multiarray.scalar):
        allowed += [(fn, f"{mod}.multiarray.{fn.__name__}") for mod in ("numpy._core", "numpy.core")]
    for kind in (np.bool_, np.uint8, np.int8, np.int32, np.uint32, np.int64, np.uint64, np.float32, np.float64):
        allowed.append(type(np.dtype(kind)))  # numpy >= 1.25 pickles dtypes by their class
    return allowed


def new_run_id(config: dict) -> str:
    return time.strftime("%Y%m%d-%H%M%S", time.gmtime()) + "-" + config_hash(config)


def dataset_fingerprint(dataset) -> str:
    """A hash of every split's arrays: a resumed run must see exactly the same data."""
    h = hashlib.sha1(f"{dataset.n_items}".encode())
    for name in ("train", "valid", "test"):
        split = getattr(dataset, name)
        for arr in (split.sessions.items, split.sessions.offsets, split.ex_seq, split.ex_len):
            h.update(np.ascontiguousarray(arr, dtype=np.int64).tobytes())
    return h.hexdigest()[:16]


def timing_summary(rows: list[dict]) -> dict:
    """Median and IQR of per-epoch training time, excluding the first (warm-up) epoch when there are more."""
    if not rows:
        return {}
    kept = rows[1:] if len(rows) > 1 else rows
    train = np.array([r["time"]["train"] for r in kept])
    out = {
        "epochs_timed": len(kept),
        "warmup_excluded": len(rows) > 1,
        "epoch_median_s": float(np.median(train)),
        "epoch_iqr_s": float(np.percentile(train, 75) - np.percentile(train, 25)),
        "examples_per_s_median": float(np.median([r["examples_per_s"] for r in kept])),
        "total_train_s": float(sum(r["time"]["train"] for r in rows)),
        "total_eval_s": float(sum(r["time"]["eval"] for r in rows)),
    }
    for phase in ("data", "forward", "backward", "eval"):
        out[f"{phase}_median_s"] = float(np.median([r["time"][phase] for r in kept]))
    for key in ("peak_gpu_mb", "host_peak_rss_mb"):
        values = [r[key] for r in rows if r.get(key) is not None]
        out[key] = float(max(values)) if values else None
    return out


class Run:
    """The record of one model trained with one seed: `<run>/<model>/seed<k>/`."""

    def __init__(self, path, model: str = "", seed: int = 0):
        self.path = Path(path)
        self.model, self.seed = model, seed

    epochs_path = property(lambda self: self.path / "epochs.jsonl")
    checkpoint_path = property(lambda self: self.path / "checkpoint.pt")
    summary_path = property(lambda self: self.path / "summary.json")
    ranks_path = property(lambda self: self.path / "ranks.npz")

    @property
    def refit(self) -> "Run":
        """The record of this unit's refit phase (`refit` selection): `<unit>/refit/`."""
        return Run(self.path / "refit", self.model, self.seed)

    def is_finished(self) -> bool:
        """Finished means finished well: `--resume` retries a failed unit (e.g. after an out-of-memory
        failure, on another device)."""
        summary = self.read_summary()
        return summary is not None and summary.get("status") == "ok"

    def read_summary(self) -> dict | None:
        return read_record(self.summary_path, "delete it to train this unit again") \
            if self.summary_path.exists() else None

    def write_summary(self, summary: dict) -> None:
        write_json(self.summary_path, dict(summary, model=self.model, seed=self.seed))

    def fail(self, reason: str, **extra) -> dict:
        summary = dict(extra, status="failed", reason=reason)
        self.write_summary(summary)
        return summary

    def append_epoch(self, row: dict) -> None:
        append_jsonl(self.epochs_path, row)

    def read_epochs(self) -> list[dict]:
        return read_jsonl(self.epochs_path)

    def rewrite_epochs(self, rows: list[dict]) -> None:
        """On resume: the epoch log becomes exactly the history stored in the checkpoint (an epoch that
        was logged but not checkpointed before a crash is redone, and must not appear twice)."""
        write_text(self.epochs_path, "".join(json.dumps(r, sort_keys=True, default=str) + "\n" for r in rows))

    def discard_unreadable_checkpoint(self) -> Path | None:
        """Move an unreadable checkpoint.pt aside (checkpoint.pt.discarded-<time>) so the unit trains from
        scratch; return where it went, or None when there was nothing to discard."""
        try:
            self.load_checkpoint()
            return None
        except RecordError:
            aside = self.path / f"{self.checkpoint_path.name}.discarded-{time.strftime('%Y%m%d-%H%M%S')}"
            self.checkpoint_path.rename(aside)
            return aside

    def save_checkpoint(self, state: dict) -> None:
        import torch

        with atomic_path(self.checkpoint_path) as tmp:
            torch.save(state, tmp)

    def load_checkpoint(self) -> dict | None:
        import torch

        if not self.checkpoint_path.exists():
            return None
        # weights_only: a crafted checkpoint.pt must not run code on --resume; only tensors, plain python
        # values and the numpy types that checkpoints hold are unpickled.
        try:
            with torch.serialization.safe_globals(_checkpoint_globals()):
                return torch.load(self.checkpoint_path, map_location="cpu", weights_only=True)
        except (pickle.UnpicklingError, zipfile.BadZipFile, EOFError, RuntimeError, ValueError, KeyError,
                AttributeError, TypeError, IndexError, OSError) as e:
            text = str(e).strip()
            unsafe = re.search(r"GLOBAL ([\w.]+)", text)  # what weights_only refused to unpickle
            reason = (f"it would unpickle {unsafe.group(1)}, which no checkpoint holds" if unsafe else
                      text.splitlines()[0][:160] if text else type(e).__name__)
            raise RecordError(f"{self.checkpoint_path}: not a checkpoint that can be loaded safely ({reason}); "
                              "resume with discard_checkpoint (--discard-checkpoint) to move it aside and train "
                              "this unit from scratch") from None

    def write_ranks(self, result, lengths) -> None:
        with atomic_path(self.ranks_path) as tmp:
            with open(tmp, "wb") as f:
                np.savez(f, expected=np.asarray(result.ranks, dtype=np.float64),
                         pessimistic=np.asarray(result.ranks_pessimistic, dtype=np.float64),
                         optimistic=np.asarray(result.ranks_optimistic, dtype=np.float64),
                         length=np.asarray(lengths, dtype=np.int64))

    def read_ranks(self) -> dict | None:
        if not self.ranks_path.exists():
            return None
        try:
            with np.load(self.ranks_path, allow_pickle=False) as z:
                return {k: z[k] for k in z.files}
        except (OSError, ValueError, EOFError, zipfile.BadZipFile, KeyError) as e:
            raise RecordError(f"{self.ranks_path}: not a readable ranks file ({type(e).__name__}: {e}); delete it "
                              "and the unit's summary.json to evaluate this unit again") from None


class RunDir:
    """`runs/<run-id>/`: config, environment, units and the results index."""

    def __init__(self, path):
        self.path = Path(path)

    @property
    def run_id(self) -> str:
        return self.path.name

    RECORD, TOML = "config.json", "experiment.toml"  # the folder's settings, and the experiment file that made it
    config_path = property(lambda self: self.path / self.RECORD)
    env_path = property(lambda self: self.path / "env.json")
    results_path = property(lambda self: self.path / "results.json")
    results_md_path = property(lambda self: self.path / "results.md")

    _lock = None

    @classmethod
    def create(cls, runs_dir, run_id: str, config: dict, env: dict, lock: bool = False) -> "RunDir":
        """A new run folder. `lock`: hold its lock from before the checks on (see `lock`), so two runs
        started with one id cannot both pass them."""
        run = cls(Path(runs_dir) / check_run_id(run_id))
        if run.path.exists() and not run.path.is_dir():
            raise ConfigError("run_id", f"{run.path} exists and is not a folder", run_id)
        if lock:
            run.lock(f"run {run_id}")
        try:
            if run.config_path.exists():
                raise ConfigError("run_id", f"{run.path} already exists; resume that run or choose another id",
                                  run_id)
            leftovers = [p.name for p in run.path.iterdir() if p.name != ".lock"] if run.path.is_dir() else []
            if leftovers:  # a fresh run must not adopt (and resume) whatever units lie there
                raise ConfigError("run_id", f"{run.path} already holds files but no {cls.RECORD} "
                                  f"({', '.join(sorted(leftovers)[:3])}{', ...' if len(leftovers) > 3 else ''}); "
                                  "remove it or choose another id", run_id)
            write_json(run.config_path, config)
            write_json(run.env_path, env)
        except BaseException:
            run.unlock()
            raise
        return run

    @classmethod
    def open(cls, ref: str, runs_dir) -> "RunDir":
        """A run to resume: an existing run folder given as a path, else a run id under `runs_dir`."""
        if (Path(ref) / "config.json").exists():
            return cls(Path(ref))
        if not RUN_ID_PATTERN.fullmatch(ref):  # not a folder, and as an id it would leave runs_dir
            raise ConfigError("resume", f"no run folder {Path(ref) / 'config.json'}, and not a run id (one "
                              "folder name of letters, digits and ._-+=) to look for in the runs folder", ref)
        candidate = Path(runs_dir) / ref
        if (candidate / "config.json").exists():
            return cls(candidate)
        raise ConfigError("resume", f"no run found (looked for {Path(ref) / 'config.json'} and "
                          f"{candidate / 'config.json'})", ref)

    def lock(self, what: str) -> "RunDir":
        """Hold `<run>/.lock` until `unlock` or the end of the process (UserError naming the holder when
        another process holds it)."""
        from .lock import FolderLock

        if self._lock is None:
            self._lock = FolderLock(self.path)
        self._lock.acquire(what)
        return self

    def unlock(self) -> None:
        if self._lock is not None:
            self._lock.release()

    def config(self) -> dict:
        return read_record(self.config_path, "the run's settings are lost; start a new run (its experiment.toml, "
                           "if intact, holds them)")

    def unit(self, model: str, seed: int) -> Run:
        return Run(self.path / model / f"seed{seed}", model, seed)

    def write_results(self) -> dict:
        results = collect_results(self)
        write_json(self.results_path, results)
        write_text(self.results_md_path, results_markdown(results))
        return results


def collect_results(run: RunDir) -> dict:
    """Aggregate every unit's summary.json and ranks.npz into per-model statistics."""
    config = run.config()
    models, per_example = {}, {"MRR@20": {}, "HR@20": {}}
    for name in config["models"]:
        ok, failed, ranks = [], {}, []
        for seed in config["seeds"]:
            summary = run.unit(name, seed).read_summary()
            if summary is None:
                failed[str(seed)] = "not finished"
            elif summary["status"] != "ok":
                failed[str(seed)] = summary.get("reason", "failed")
            else:
                ok.append(summary)
                unit_ranks = run.unit(name, seed).read_ranks()
                if unit_ranks is not None:
                    ranks.append(unit_ranks)
        entry = {
            "status": "ok" if ok and not failed else ("partial" if ok else "failed"),
            "seeds_ok": [s["seed"] for s in ok],
            "failed": failed,
            "test": significance.mean_std([s["test"] for s in ok]),
            "valid": significance.mean_std([s["valid"] for s in ok]),
            "best_epoch": [s.get("best_epoch") for s in ok],
            "per_seed_test": {str(s["seed"]): s["test"] for s in ok},
            "timing": _timing_over_seeds([s.get("timing", {}) for s in ok]),
            "tie_rate": significance.mean_std([{"tie_rate": s["test_tie_rate"]} for s in ok
                                               if s.get("test_tie_rate") is not None]).get("tie_rate"),
        }
        models[name] = entry
        # The oracle is the ceiling, not a competitor: significance marks compare the models among themselves.
        if len(ranks) == len(ok) and ok and name != ORACLE:
            for metric in per_example:
                per_example[metric][name] = significance.per_example(metric, ranks)
    tests = {metric: significance.compare_to_best(values) for metric, values in per_example.items()}
    for metric, result in tests.items():
        for name, row in result["models"].items():
            models[name].setdefault("significance", {})[metric] = row
    return {
        "run_id": run.run_id,
        "dataset": config.get("dataset", {}).get("name"),
        "selection": selection_of(config),
        "settings_notes": config.get("settings_notes", []),
        "seeds": config["seeds"],
        "models": models,
        "best": {metric: {"model": r["best"], "significant": r["best_significant"]} for metric, r in tests.items()},
        "significance_note": significance.__doc__.strip().splitlines()[-4:],
    }


def _timing_over_seeds(timings: list[dict]) -> dict:
    keys = ("epoch_median_s", "epoch_iqr_s", "data_median_s", "forward_median_s", "backward_median_s",
            "eval_median_s", "examples_per_s_median", "fit_s", "peak_gpu_mb", "host_peak_rss_mb")
    out = {}
    for key in keys:
        values = [t[key] for t in timings if t.get(key) is not None]
        if values:
            out[key] = float(np.median(values))
    return out


def format_cell(mean, std, seeds, mark="", bold=False, style="markdown") -> str:
    """'mean ± std' (± only with several seeds) plus a significance mark, as text, Markdown or LaTeX."""
    text = f"{mean:.2f}" + (f" ± {std:.2f}" if seeds and seeds > 1 else "")
    if style == "latex":
        text = text.replace("±", r"$\pm$")
        return (rf"\textbf{{{text}}}" if bold else text) + (f"$^{{{mark}}}$" if mark else "")
    if style == "markdown":
        return (f"**{text}**" if bold else text) + mark.replace("*", r"\*")
    return text + mark


def _cell(stat: dict | None, mark: str = "", bold: bool = False, markdown: bool = True) -> str:
    if not stat:
        return "–"
    return format_cell(stat["mean"], stat["std"], stat["n"], mark, bold, "markdown" if markdown else "text")


def _time_cell(timing: dict) -> str:
    if "epoch_median_s" not in timing:
        return f"fit {timing['fit_s']:.1f}" if "fit_s" in timing else "–"
    return f"{timing['epoch_median_s']:.2f}"


def oracle_scores(results: dict) -> dict | None:
    """The oracle's mean test HR@20 and MRR@20 when the run has a finished `oracle` (synthetic data)."""
    m = results["models"].get(ORACLE)
    if not m or m["status"] == "failed":
        return None
    means = {metric: m["test"].get(metric, {}).get("mean") for metric in HEADLINE}
    return means if all(v for v in means.values()) else None


def table_rows(results: dict, markdown: bool = True) -> list[list[str]]:
    """The headline table: model, HR@20, MRR@20 (mean ± std, marks), with an oracle their fractions of
    the oracle's, time per epoch and its phases."""
    rows, ceiling = [], oracle_scores(results)
    width = len(table_header(results))
    for name, m in results["models"].items():
        if m["status"] == "failed":
            reason = next(iter(m["failed"].values()), "failed")
            rows.append([name, "failed", reason[:60]] + [""] * (width - 3))
            continue
        cells = [name]
        for metric in HEADLINE:
            sig = m.get("significance", {}).get(metric, {})
            best = results["best"].get(metric, {})
            bold = best.get("model") == name and best.get("significant", False)
            cells.append(_cell(m["test"].get(metric), sig.get("mark", ""), bold, markdown))
        if ceiling:
            for metric in HEADLINE:
                stat = m["test"].get(metric)
                cells.append(f"{100 * stat['mean'] / ceiling[metric]:.0f}%" if stat else "–")
        t = m["timing"]
        cells.append(_time_cell(t))
        for key in ("data_median_s", "forward_median_s", "backward_median_s", "eval_median_s"):
            cells.append(f"{t[key]:.2f}" if key in t else "–")
        cells.append(f"{t['examples_per_s_median']:.0f}" if "examples_per_s_median" in t else "–")
        cells.append(f"{len(m['seeds_ok'])}/{len(results['seeds'])}")
        rows.append(cells)
    return rows


TABLE_HEADER = ["model", "HR@20", "MRR@20", "s/epoch", "data", "forward", "backward", "eval", "ex/s", "seeds"]


ORACLE = "oracle"  # sbr_bench.models.oracle: the synthetic data's attainable ceiling


def table_header(results: dict) -> list[str]:
    fractions = [f"{m} of oracle" for m in HEADLINE] if oracle_scores(results) else []
    return TABLE_HEADER[:1] + headline_header(results["selection"]) + fractions + TABLE_HEADER[3:]


def format_table(header, rows, markdown: bool) -> str:
    if markdown:
        lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
        lines += ["| " + " | ".join(r) + " |" for r in rows]
        return "\n".join(lines)
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows)]
    fmt = lambda r: "  ".join(str(x).ljust(w) for x, w in zip(r, widths)).rstrip()  # noqa: E731
    return "\n".join([fmt(header), fmt(["-" * w for w in widths])] + [fmt(r) for r in rows])


def settings_caption(results: dict) -> str:
    """The settings a dataset's size made the run apply (`experiment.SYNTHETIC_SETTINGS`, epoch caps)."""
    notes = results.get("settings_notes") or []
    return f"Settings for this dataset: {'; '.join(notes)}." if notes else ""


def results_text(results: dict) -> str:
    """The headline table for the terminal, under its selection caption."""
    return (" ".join(filter(None, [selection_caption(results["selection"]), settings_caption(results)])) + "\n"
            + format_table(table_header(results), table_rows(results, markdown=False), markdown=False))


def results_markdown(results: dict) -> str:
    metrics = [f"{m}@{k}" for m in ("HR", "MRR", "NDCG") for k in TABLE_KS]
    full_rows = [[name] + [_cell(m["test"].get(metric)) for metric in metrics]
                 for name, m in results["models"].items() if m["status"] != "failed"]
    failed = [f"- {name} seed {seed}: {reason}" for name, m in results["models"].items()
              for seed, reason in m["failed"].items()]
    parts = [
        f"# Results of run {results['run_id']} on {results['dataset']}",
        "",
        f"Test split, ×100, mean ± std over seeds {results['seeds']}. {selection_caption(results['selection'])} "
        + (f"{settings_caption(results)} " if results.get("settings_notes") else "") +
        "Time per epoch: median seconds of training (data + forward + backward) over epochs after the "
        "first; phases are medians; eval is the pass over the watched split (validation; the test under literature). Marks: \\*\\* p < 0.01, \\* p < 0.05 "
        "(Holm-corrected paired t-test on per-example values, averaged over seeds, against the best model); "
        "the best is bold only when significantly better (p < 0.01) than every other model."
        + (" 'of oracle': the model's mean divided by the oracle's, the Bayes-optimal ranking under the synthetic "
           "generator (the attainable ceiling; not part of the significance tests)." if oracle_scores(results) else ""),
        "",
        format_table(table_header(results), table_rows(results, markdown=True), markdown=True),
        "",
        "## All metrics (test)",
        "",
        format_table(["model"] + ([f"{m} best-on-test" for m in metrics] if results["selection"] == "literature"
                                  else metrics), full_rows, markdown=True),
    ]
    if failed:
        parts += ["", "## Failed or unfinished", ""] + failed
    return "\n".join(parts) + "\n"
