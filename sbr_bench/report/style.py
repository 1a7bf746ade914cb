"""One look for every report figure: sizes, fonts, colours, markers, axes and how figures are written.

A figure is a `draw(width) -> Figure` function; `save` draws it at double-column width (`<stem>.*`) and at
single-column width (`<stem>_column.*`) inside `paper(width)`, so both come out at their printed size with
8 pt text, ticks and legends and exact pixel sizes (no bbox tightening: the layout is constrained)."""

from __future__ import annotations

import contextlib
import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib import ticker  # noqa: E402
from matplotlib.font_manager import FontProperties  # noqa: E402
from matplotlib.textpath import TextToPath  # noqa: E402

from ..io import atomic_path  # noqa: E402

COLUMN = 3.3  # inches: one column of a two-column paper
DOUBLE = 7.0  # inches: the full text width
WIDTHS = (("", DOUBLE), ("_column", COLUMN))  # stem suffix -> width
DPI = 300
FORMATS = ("png", "pdf", "svg")
FONT_PT = 8
SMALL_PT = 8  # ticks and legends: the 8-9 pt a paper column needs
# Okabe & Ito's colour-blind-safe palette, yellow last (it is faint on white).
PALETTE = ("#0072B2", "#D55E00", "#009E73", "#E69F00", "#CC79A7", "#56B4E9", "#000000", "#F0E442")
MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*")
LOG2_PARAMETERS = ("heads",)  # swept over powers of two
MIN_PANEL_IN = 1.65  # narrowest panel that keeps 8 pt tick labels apart
_TEXT = TextToPath()  # measures text without a figure

RC = {
    "font.size": FONT_PT, "axes.titlesize": FONT_PT, "axes.labelsize": FONT_PT, "figure.titlesize": FONT_PT,
    "xtick.labelsize": SMALL_PT, "ytick.labelsize": SMALL_PT, "legend.fontsize": SMALL_PT,
    "legend.title_fontsize": SMALL_PT, "legend.frameon": False,
    "axes.linewidth": 0.6, "axes.spines.top": False, "axes.spines.right": False,
    "axes.grid": True, "grid.linewidth": 0.4, "grid.alpha": 0.4, "axes.axisbelow": True,
    "xtick.major.width": 0.6, "ytick.major.width": 0.6, "xtick.major.size": 2.5, "ytick.major.size": 2.5,
    "lines.linewidth": 1.2, "lines.markersize": 4, "errorbar.capsize": 2, "patch.linewidth": 0.4,
    "hatch.linewidth": 0.6, "axes.prop_cycle": matplotlib.cycler(color=PALETTE),
    "figure.dpi": 100, "savefig.dpi": DPI, "savefig.bbox": None, "savefig.pad_inches": 0,
    "pdf.fonttype": 42, "ps.fonttype": 42,  # TrueType: text stays text in PDF, as journals want
    "svg.fonttype": "path",  # the same glyphs in every viewer, installed fonts or not
}


@contextlib.contextmanager
def paper(width: float = DOUBLE):
    """The report's rcParams while drawing and saving (ticks are made lazily, so saving needs them too)."""
    with matplotlib.rc_context(dict(RC, **{"figure.figsize": (width, width * 0.62)})):
        yield


def series_style(i: int) -> dict:
    """Colour and marker of the i-th series: colours repeat after 8, the pair only after 64."""
    return dict(color=PALETTE[i % len(PALETTE)], marker=MARKERS[(i + i // len(PALETTE)) % len(MARKERS)])


def max_columns(width: float) -> int:
    return max(1, int(width // MIN_PANEL_IN))


def legend_layout(labels, width: float) -> tuple[int, int]:
    """(columns, rows) of a legend below the panels: as many entries per row as the width holds."""
    if not labels:
        return 1, 0
    entry_in = 0.45 + text_width_in(labels)  # handle + text
    ncol = max(1, min(len(labels), int(width // entry_in)))
    return ncol, math.ceil(len(labels) / ncol)


def figure(width: float, rows: int, row_in: float, legend_rows: int = 0, extra_in: float = 0.0):
    """A constrained-layout figure `width` wide, tall enough for `rows` rows of panels, a legend below
    them and `extra_in` inches of rotated tick labels."""
    height = rows * row_in + extra_in + (0.12 + 0.15 * legend_rows if legend_rows else 0.0)
    return plt.figure(figsize=(width, height), layout="constrained")


def row_height(width: float, ncols: int) -> float:
    """Inches per row of panels: 0.62 of a panel's width, within what keeps panels readable."""
    return min(2.6, max(1.6, 0.62 * width / ncols))


def text_width_in(labels, pt: float = SMALL_PT) -> float:
    """Width in inches of the longest line of `labels` at `pt` points, in the current font."""
    font = FontProperties(size=pt)
    lines = [line for label in labels for line in str(label).split("\n")]
    return max((_TEXT.get_text_width_height_descent(line, font, ismath=False)[0] for line in lines), default=0) / 72


def panels(width: float, n: int, labels=(), max_cols: int | None = None, row_extra_in: float = 0.0, titles=(),
           **kw):
    """`n` panels on a grid as wide as `width` allows, no narrower than their `titles`, with room for a
    legend of `labels` below and `row_extra_in` inches per row (rotated tick labels). Returns (figure,
    list of n axes)."""
    fit = int(width // (text_width_in(titles, FONT_PT) + 0.3)) if titles else n
    ncols = max(1, min(n, max_cols or max_columns(width), fit))
    nrows = math.ceil(n / ncols)
    fig = figure(width, nrows, row_height(width, ncols), legend_layout(labels, width)[1], nrows * row_extra_in)
    axes = fig.subplots(nrows, ncols, squeeze=False, **kw).ravel()
    for ax in axes[n:]:
        ax.remove()
    return fig, list(axes[:n])


def legend_below(fig, handles, labels, width: float):
    """The figure's legend under every panel, where it cannot cover data."""
    if not handles:
        return None
    ncol, _ = legend_layout(labels, width)
    return fig.legend(handles, labels, loc="outside lower center", ncol=ncol)


def unique_legend(axes, order=()) -> tuple[list, list[str]]:
    """The handles and labels of all panels, each label once: those in `order` first, in that order, then
    the rest in order of first appearance."""
    seen = {}
    for ax in axes:
        for h, label in zip(*ax.get_legend_handles_labels()):
            seen.setdefault(label, h)
    labels = [label for label in order if label in seen] + [label for label in seen if label not in order]
    return [seen[label] for label in labels], labels


def integer_axis(axis):
    axis.set_major_locator(ticker.MaxNLocator(integer=True))


def log2_axis(ax, values):
    """A base-2 log x axis with ticks at `values`, labelled as plain numbers (1, 2, 4, not 2^1)."""
    ax.set_xscale("log", base=2)
    ax.xaxis.set_major_locator(ticker.FixedLocator(sorted(values)))
    ax.xaxis.set_major_formatter(ticker.FuncFormatter(lambda v, _: f"{v:g}"))
    ax.xaxis.set_minor_locator(ticker.NullLocator())


def parameter_axis(ax, param: str, values):
    """The x axis of a sweep: log2 for heads H, integer ticks for levels L and other integer parameters."""
    if param in LOG2_PARAMETERS and all(v > 0 for v in values):
        log2_axis(ax, values)
    elif all(float(v).is_integer() for v in values):
        integer_axis(ax.xaxis)


def save(draw, out_dir, stem: str) -> str:
    """Write `<stem>.png/.pdf/.svg` (double column) and `<stem>_column.*` (single column); return `stem`."""
    for suffix, width in WIDTHS:
        with paper(width):
            fig = draw(width)
            try:
                for fmt in FORMATS:
                    with atomic_path(Path(out_dir) / f"{stem}{suffix}.{fmt}") as tmp:
                        fig.savefig(tmp, format=fmt, dpi=DPI)
            finally:
                plt.close(fig)
    return stem


def caption_files(stem: str) -> str:
    return f"A single-column version, `{stem}_column.png/.pdf/.svg`, lies beside it."
