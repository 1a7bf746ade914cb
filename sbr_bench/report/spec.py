"""A report spec: which recorded runs a report reads, and which tables and figures put several runs together.

    runs = ["digi-refit", "digi-extra"]   # optional: only these runs (default: every run of the folder)

    [[table]]                            # one table with rows from several runs, each row naming its run
    kind = "table2"                      # table2 | table3 | table4
    runs = ["digi-refit", "digi-extra"]
    caption = "Table 2 with the extra anchors"   # optional
    label = "overall-extra"              # optional: file stem and LaTeX \\label

    [[figure]]                           # a figure over the runs named (each dataset and model from one run)
    kind = "figure7"                     # figure7 | timing
    runs = ["digi-refit"]

Without a spec, every run gets its own tables and figures. The file is TOML, read as data (`tomllib`).
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from pathlib import Path

from ..errors import UserError

TABLE_KINDS = ("table2", "table3", "table4")
FIGURE_KINDS = ("figure7", "timing")


@dataclass(frozen=True)
class Part:
    """A table or figure of a spec: its kind, the runs it draws from, an optional caption and label."""

    kind: str
    runs: tuple[str, ...]
    caption: str = ""
    label: str = ""


@dataclass(frozen=True)
class ReportSpec:
    runs: tuple[str, ...] | None = None
    tables: tuple[Part, ...] = ()
    figures: tuple[Part, ...] = ()

    @classmethod
    def from_toml(cls, path) -> "ReportSpec":
        path = Path(path)
        try:
            data = tomllib.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError) as e:
            raise UserError(f"{path}: cannot read the report spec ({e})") from None
        except tomllib.TOMLDecodeError as e:
            raise UserError(f"{path}: not TOML ({e})") from None
        return cls.from_dict(data, str(path))

    @classmethod
    def from_dict(cls, data: dict, where: str = "report spec") -> "ReportSpec":
        unknown = sorted(set(data) - {"runs", "table", "figure"})
        if unknown:
            raise UserError(f"{where}: unknown key '{unknown[0]}'; a report spec has runs, [[table]] and [[figure]]")
        runs = _names(data["runs"], f"{where}: runs") if "runs" in data else None
        tables = tuple(_part(entry, f"{where}: [[table]] {i + 1}", TABLE_KINDS)
                       for i, entry in enumerate(_entries(data.get("table", []), f"{where}: table")))
        figures = tuple(_part(entry, f"{where}: [[figure]] {i + 1}", FIGURE_KINDS)
                        for i, entry in enumerate(_entries(data.get("figure", []), f"{where}: figure")))
        labels = [p.label for p in tables + figures if p.label]
        if len(labels) != len(set(labels)):
            raise UserError(f"{where}: label '{next(x for x in labels if labels.count(x) > 1)}' is used twice "
                            "(labels name files)")
        for part in tables + figures:
            outside = [r for r in part.runs if runs is not None and r not in runs]
            if outside:
                raise UserError(f"{where}: {part.kind} names run '{outside[0]}', which is not in `runs`")
        return cls(runs, tables, figures)


def _entries(value, where: str) -> list:
    if not isinstance(value, list) or not all(isinstance(v, dict) for v in value):
        raise UserError(f"{where}: expected [[...]] tables of keys")
    return value


def _names(value, where: str) -> tuple[str, ...]:
    if not isinstance(value, list) or not value or not all(isinstance(v, str) and v for v in value):
        raise UserError(f"{where}: expected a non-empty list of run ids, e.g. [\"run-a\", \"run-b\"]")
    return tuple(value)


def _part(entry: dict, where: str, kinds: tuple[str, ...]) -> Part:
    unknown = sorted(set(entry) - {"kind", "runs", "caption", "label"})
    if unknown:
        raise UserError(f"{where}: unknown key '{unknown[0]}'; expected kind, runs, caption, label")
    if entry.get("kind") not in kinds:
        raise UserError(f"{where}: kind must be one of {', '.join(kinds)}, not {entry.get('kind')!r}")
    for key in ("caption", "label"):
        if not isinstance(entry.get(key, ""), str):
            raise UserError(f"{where}: {key} must be a string")
    label = entry.get("label", "")
    if label and not all(c.isalnum() or c in "-_" for c in label):
        raise UserError(f"{where}: label {label!r}: use letters, digits, '-' and '_' (it names files)")
    return Part(entry["kind"], _names(entry.get("runs"), f"{where}: runs"), entry.get("caption", ""), label)
