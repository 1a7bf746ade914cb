"""sbr-bench report: rebuild the paper's tables and figures from recorded runs."""

from pathlib import Path

from ..errors import UserError

HELP = ("build Tables 1-4 and Figures 3, 5, 6, 7 (Markdown, self-contained HTML, PNG/SVG/PDF, CSV, LaTeX) from "
        "recorded runs, each run in its own tables unless a report spec puts several in one")


def add_arguments(p):
    p.add_argument("--runs-dir", default=None, help="folder of recorded runs, as in `run --runs-dir` (default: runs)")
    p.add_argument("--runs", nargs="+", metavar="RUN", help="report only these runs: run ids under --runs-dir, or "
                   "run folders (a single folder of runs is read as --runs-dir, the older spelling)")
    p.add_argument("--spec", metavar="FILE", help="a report spec (TOML): which runs, and which tables and figures "
                   "hold several runs (docs/guide.md, 'Reports')")
    p.add_argument("--out", default="reports/latest", help="output folder (default: reports/latest)")


def resolve_runs(runs_dir, items) -> tuple[str, list[str] | None]:
    """(the runs folder, the run ids asked for or None for all) from --runs-dir and --runs."""
    if not items:
        return runs_dir or "runs", None
    if len(items) == 1 and runs_dir is None and _holds_runs(Path(items[0])):
        return items[0], None  # `--runs FOLDER`, the older spelling of --runs-dir
    root, ids = runs_dir, []
    for item in items:
        path = Path(item)
        if len(path.parts) > 1 and (path / "config.json").is_file():  # a run folder; a bare name is an id
            if root is not None and Path(root).resolve() != path.resolve().parent:
                raise UserError(f"--runs {item}: every run folder must lie in one runs folder ({root})")
            root = str(path.parent)
            item = path.name
        ids.append(item)
    return root or "runs", ids


def _holds_runs(path: Path) -> bool:
    return path.is_dir() and not (path / "config.json").exists()


def main(args):
    from ..report import build_report

    runs_dir, ids = resolve_runs(args.runs_dir, args.runs)
    if not Path(runs_dir).is_dir():
        raise UserError(f"--runs-dir {runs_dir}: no such folder (run `sbr-bench run` first)")
    if args.spec is not None and not Path(args.spec).is_file():
        raise UserError(f"--spec {args.spec}: no such file")
    path = build_report(runs_dir, args.out, runs=ids, spec=args.spec)
    print(f"report written to {path} and {path.with_suffix('.html')}")
    return 0
