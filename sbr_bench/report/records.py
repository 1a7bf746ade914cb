"""Read recorded runs (never retrain): one `RunRecord` per `runs/<run-id>/` folder."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..io import read_json, read_jsonl
from ..models.registry import TABLE2_ORDER
from ..runs import RunDir, collect_results


@dataclass
class RunRecord:
    run: RunDir
    config: dict
    env: dict
    results: dict  # runs.collect_results(...) of this run

    @property
    def run_id(self) -> str:
        return self.run.run_id

    @property
    def dataset(self) -> str:
        return self.config.get("dataset", {}).get("name", "?")

    @property
    def kind(self) -> str:
        return self.config.get("kind", "run")

    @property
    def sweep(self) -> dict | None:
        return self.config.get("sweep")

    def hardware(self) -> str:
        gpu = self.env.get("gpu") or {}
        name = gpu.get("name") if isinstance(gpu, dict) else gpu
        cpu = self.env.get("cpu_model") or self.env.get("cpu") or "?"
        cores = self.env.get("cpu_count") or self.env.get("cores")
        return f"{name} (GPU)" if name else f"{cpu}" + (f", {cores} cores" if cores else "")

    def ok_models(self) -> list[str]:
        return [m for m, r in self.results["models"].items() if r["status"] != "failed"]

    def ranks(self, model: str) -> list[dict]:
        """Per-seed rank records (optimistic, pessimistic, length) of a model."""
        out = []
        for seed in self.config.get("seeds", []):
            r = self.run.unit(model, seed).read_ranks()
            if r is not None:
                out.append(r)
        return out

    def density_rows(self, model: str) -> list[dict]:
        rows = []
        for seed in self.config.get("seeds", []):
            for row in read_jsonl(self.run.unit(model, seed).path / "density.jsonl"):
                rows.append(dict(row, seed=seed))
        return rows


def load_runs(runs_dir) -> tuple[list[RunRecord], list[str]]:
    """All readable runs under `runs_dir` (oldest first, by run id) and a list of problems found."""
    records, problems = [], []
    root = Path(runs_dir)
    if not root.exists():
        return [], [f"no runs folder {root}"]
    for path in sorted(p for p in root.iterdir() if (p / "config.json").exists()):
        run = RunDir(path)
        try:
            config = read_json(run.config_path)
            env = read_json(run.env_path) if run.env_path.exists() else {}
            results = collect_results(run)
        except Exception as e:  # a broken record is named in the report, never crashes it
            problems.append(f"{path.name}: unreadable ({type(e).__name__}: {e})")
            continue
        records.append(RunRecord(run, config, env, results))
    return records, problems


def _plain(records, dataset: str) -> list:
    """The runs on `dataset` that are neither sweep points nor dissect/tune records, oldest first."""
    return [r for r in records if r.kind == "run" and not r.sweep and r.dataset == dataset]


def runs_with(records, dataset: str, model: str) -> list:
    """Every plain run on `dataset` in which `model` finished (ok or partial), oldest first."""
    return [r for r in _plain(records, dataset) if model in r.ok_models()]


def latest_with(records, dataset: str, model: str) -> RunRecord | None:
    """The newest of `runs_with`."""
    found = runs_with(records, dataset, model)
    return found[-1] if found else None


def finished_models(records, dataset: str) -> set[str]:
    """The models that finished (ok or partial) in some plain run on `dataset`."""
    return {m for r in _plain(records, dataset) for m in r.ok_models()}


def table2_order(names) -> list[str]:
    """Table 2's row order: its listed models first, then the rest sorted."""
    names = set(names)
    return [m for m in TABLE2_ORDER if m in names] + sorted(names - set(TABLE2_ORDER))
