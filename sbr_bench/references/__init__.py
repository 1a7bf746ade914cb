"""Published numbers, kept as data: one TOML file per paper in this folder.

Each file has a `[paper]` table (title, venue, `source`: where the numbers were read, `selection`: how
the paper chose its epochs) and one `[[result]]` per table row: `table`, `dataset`, `protocol`, `model`
and metric keys ("HR@20", "MRR@20", ...) in percent. An optional `[setting]` gives the configuration the
paper ran every model with, and `[datasets.NAME]` the protocol (and, under `shared`, the folder of
`../shared/datasets/` holding that split) that `sbr-bench reproduce` uses.
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass, field
from importlib import resources

from ..errors import ConfigError, DataFormatError

METRIC = re.compile(r"^(HR|MRR|NDCG)@\d+$")
REQUIRED_PAPER = ("key", "title", "venue", "source", "selection")
REQUIRED_RESULT = ("table", "dataset", "protocol", "model")


@dataclass
class Reference:
    """The published numbers of one paper."""

    paper: dict
    results: list[dict]
    setting: dict = field(default_factory=dict)
    datasets: dict = field(default_factory=dict)

    @property
    def key(self) -> str:
        return self.paper["key"]

    def numbers(self, dataset: str, table: str | None = None) -> dict[str, dict]:
        """{model: {metric: value, "table": ...}} for one dataset (first table listed wins per model)."""
        out = {}
        for row in self.results:
            if row["dataset"] == dataset and (table is None or row["table"] == table) and row["model"] not in out:
                out[row["model"]] = {k: v for k, v in row.items() if METRIC.match(k) or k == "table"}
        return out

    def cite(self) -> str:
        return f"{self.paper['title']} ({self.paper['venue']}); numbers from {self.paper['source']}"


def papers() -> list[str]:
    """The keys of every reference file shipped with the package."""
    return sorted(p.name[:-5] for p in resources.files(__name__).iterdir() if p.name.endswith(".toml"))


def load_reference(key: str) -> Reference:
    """The reference file `<key>.toml`, validated: every number names its table, dataset and protocol.

    Raises:
        UserError: no such paper. DataFormatError: a malformed file (named, with the bad row).
    """
    if key not in papers():
        raise ConfigError("paper", f"no published numbers for it; known: {', '.join(papers())}", key)
    path = resources.files(__name__) / f"{key}.toml"
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as e:
        raise DataFormatError(path, str(e)) from None
    paper = data.get("paper", {})
    missing = [k for k in REQUIRED_PAPER if not paper.get(k)]
    if missing:
        raise DataFormatError(path, f"[paper] lacks {', '.join(missing)}")
    if paper["key"] != key:
        raise DataFormatError(path, f"[paper] key is '{paper['key']}', expected '{key}'")
    results = data.get("result", [])
    for i, row in enumerate(results):
        lacking = [k for k in REQUIRED_RESULT if not row.get(k)]
        metrics = [k for k in row if METRIC.match(k)]
        if lacking or not metrics:
            raise DataFormatError(path, f"result {i + 1} lacks {', '.join(lacking) or 'a metric (HR@K, MRR@K)'}")
        if any(not isinstance(row[k], (int, float)) or not 0 <= row[k] <= 100 for k in metrics):
            raise DataFormatError(path, f"result {i + 1}: metrics must be numbers in [0, 100] (percent)")
    return Reference(paper, results, data.get("setting", {}), data.get("datasets", {}))
