"""sbr-bench report: rebuild the paper's tables and figures from recorded runs."""

from pathlib import Path

from ..errors import UserError

HELP = "Build Tables 1-4 and Figures 3, 5, 6, 7 (Markdown, PNG/SVG/PDF, CSV, LaTeX) from recorded runs"


def add_arguments(p):
    p.add_argument("--runs-dir", "--runs", dest="runs", default="runs",
                   help="folder of recorded runs, as in `run --runs-dir` (default: runs/; --runs is the older spelling)")
    p.add_argument("--out", default="reports/latest", help="output folder (default: reports/latest)")


def main(args):
    from ..report import build_report

    if not Path(args.runs).is_dir():
        raise UserError(f"--runs-dir {args.runs}: no such folder (run `sbr-bench run` first)")
    path = build_report(args.runs, args.out)
    print(f"report written to {path}")
    return 0
