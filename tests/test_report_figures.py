"""Publication-quality figures: both widths in every format at exact sizes, text of at least 8 pt inside the
figure, legends of display names clear of the data, the right axes, and numbers that equal the records."""

import contextlib
import dataclasses
import re
import struct
import warnings

import matplotlib.pyplot as plt
import pytest
from matplotlib.container import BarContainer
from matplotlib.text import Text
from matplotlib.ticker import MaxNLocator

from sbr_bench.cli import main
from sbr_bench.report import figures, style
from sbr_bench.report.records import latest_with, load_runs

COMMON = ["--dataset", "synthetic:micro", "--epochs", "1", "--no-progress"]
STEMS = {"density": "figure3_density", "levels": "figure5_levels", "heads": "figure6_heads",
         "lengths": "figure7_session_length", "timing": "timing_phases", "intent": "intent_recovery"}
INTERNAL = ("pop", "srgnn", "attenmixer", "srgnn+attenmixer", "levels", "heads")


@pytest.fixture(scope="module")
def records(tmp_path_factory):
    """tests/test_report.py's recipe, with larger batches and `valid` selection (one training per unit)."""
    runs = str(tmp_path_factory.mktemp("rec") / "runs")
    small = ["--set", "dim=8", "--set", "batch_size=256", "--runs-dir", runs] + COMMON
    fast = small + ["--selection", "valid"]
    assert main(["run", "--models", "pop,srgnn,attenmixer,srgnn+attenmixer", "--seeds", "2",
                 "--run-id", "main"] + fast) == 0
    assert main(["sweep", "--model", "attenmixer", "--param", "levels", "--values", "1..2"] + fast) == 0
    assert main(["sweep", "--model", "attenmixer", "--param", "heads", "--values", "1,2"] + fast) == 0
    assert main(["dissect", "--model", "srgnn", "--log-every", "2", "--run-id", "dis"] + small) == 0
    recs, problems = load_runs(runs)
    assert not problems
    return recs


@pytest.fixture(scope="module")
def made(records, tmp_path_factory):
    """Every figure written once; `draws` keeps each figure's draw(width), as `style.save` got it."""
    out = tmp_path_factory.mktemp("figures")
    draws, real = {}, style.save

    def spy(draw, out_dir, stem):
        draws[stem] = draw
        return real(draw, out_dir, stem)

    patch = pytest.MonkeyPatch()
    patch.setattr(style, "save", spy)
    try:
        results = {"density": figures.figure3_density(records, out),
                   "levels": figures.figure_sweep(records, out, "levels", 5),
                   "heads": figures.figure_sweep(records, out, "heads", 6),
                   "lengths": figures.figure7_lengths(records, out),
                   "timing": figures.figure_timing(records, out),
                   "intent": figures.figure_intent_recovery(records, out)}
    finally:
        patch.undo()
    return out, results, draws


@contextlib.contextmanager
def drawn(draw, width):
    """The figure of `draw` at `width`, laid out as when saved (a layout that fails warns: an error here)."""
    with style.paper(width), warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        fig = draw(width)
        try:
            fig.canvas.draw()
            yield fig
        finally:
            plt.close(fig)


@pytest.fixture(scope="module")
def shown(made):
    """Every figure drawn again at both widths, as it was saved: (key, width) -> Figure."""
    _, _, draws = made
    with contextlib.ExitStack() as stack:
        yield {(key, width): stack.enter_context(drawn(draws[stem], width))
               for key, stem in STEMS.items() for width in (style.DOUBLE, style.COLUMN)}


def both_widths(shown, key):
    return [(width, shown[(key, width)]) for width in (style.DOUBLE, style.COLUMN)]


def legend_labels(fig) -> list[str]:
    assert len(fig.legends) == 1 and all(ax.get_legend() is None for ax in fig.axes)
    return [t.get_text() for t in fig.legends[0].get_texts()]


def png_size(path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    return struct.unpack(">II", data[16:24])


def test_every_figure_at_both_widths_in_every_format(made):
    out, results, _ = made
    for key, stem in STEMS.items():
        assert results[key] is not None and results[key][1] == stem, key
        caption = results[key][0]
        assert f"`{stem}_column.png/.pdf/.svg`" in caption and "hardware" in caption and "runs " in caption
        for suffix, width in style.WIDTHS:
            assert png_size(out / f"{stem}{suffix}.png")[0] == round(width * style.DPI), (stem, suffix)
            pdf = (out / f"{stem}{suffix}.pdf").read_bytes()
            box = re.search(rb"/MediaBox \[\s*0 0 ([\d.]+) ([\d.]+)", pdf)
            assert float(box.group(1)) == pytest.approx(width * 72), (stem, suffix)
            svg = (out / f"{stem}{suffix}.svg").read_text()
            assert float(re.search(r'<svg[^>]* width="([\d.]+)pt"', svg).group(1)) == pytest.approx(width * 72)
    assert "seeds [0, 1]" in results["timing"][0]


def test_text_is_at_least_7pt_and_inside_the_figure(shown):
    for key in STEMS:
        for width, fig in both_widths(shown, key):
            texts = [t for t in fig.findobj(Text) if t.get_text()]
            assert texts and min(t.get_fontsize() for t in texts) >= 8, (key, width)
            assert all(ax.xaxis.label.get_fontsize() == 8 for ax in fig.axes)
            inside = fig.get_tightbbox(fig.canvas.get_renderer())  # inches; nothing may be cut off
            assert inside.x0 >= -0.01 and inside.y0 >= -0.01, (key, width)
            assert inside.x1 <= width + 0.01 and inside.y1 <= fig.get_figheight() + 0.01, (key, width)


def test_legends_name_models_as_shown_and_cover_no_data(shown):
    for key in STEMS:
        for width, fig in both_widths(shown, key):
            labels = legend_labels(fig)
            assert labels and not set(labels) & set(INTERNAL), (key, labels)
            renderer = fig.canvas.get_renderer()
            box = fig.legends[0].get_window_extent(renderer)
            assert not any(box.overlaps(ax.get_window_extent(renderer)) for ax in fig.axes), (key, width)
    for _, fig in both_widths(shown, "levels"):
        assert legend_labels(fig) == ["Atten-Mixer"]


def test_sweep_axes_log2_for_heads_and_integer_for_levels(shown):
    for _, fig in both_widths(shown, "heads"):
        for ax in fig.axes:
            assert ax.get_xscale() == "log" and ax.xaxis.get_transform().base == 2
            assert [t.get_text() for t in ax.get_xticklabels()] == ["1", "2"]
            assert ax.get_xlabel() == "heads H" and ax.get_title() == "Synthetic:micro"
            assert any(type(c).__name__ == "ErrorbarContainer" for c in ax.containers)  # mean ± std
    for _, fig in both_widths(shown, "levels"):
        for ax in fig.axes:
            assert isinstance(ax.xaxis.get_major_locator(), MaxNLocator) and ax.get_xlabel() == "levels L"
            lo, hi = ax.get_xlim()
            assert all(float(x).is_integer() for x in ax.get_xticks() if lo <= x <= hi)
    for _, fig in both_widths(shown, "density"):
        (ax,) = fig.axes
        assert ax.get_title() == "SR-GNN on Synthetic:micro" and isinstance(ax.xaxis.get_major_locator(), MaxNLocator)
        assert "gnn.propagation" in legend_labels(fig)


def bars(fig, label=None) -> list[BarContainer]:
    return [c for ax in fig.axes for c in ax.containers
            if isinstance(c, BarContainer) and label in (None, c.get_label())]


def test_figure7_draws_each_model_under_its_own_name_with_bucket_sizes(made, shown, records):
    _, results, _ = made
    rows = results["lengths"][2]
    assert {r["model"] for r in rows} == {"srgnn", "srgnn+attenmixer", "attenmixer"}
    examples = len(latest_with(records, "synthetic:micro", "srgnn").ranks("srgnn")[0]["length"])
    for _, fig in both_widths(shown, "lengths"):
        assert legend_labels(fig) == ["SR-GNN", "SR-GNN w/ Atten-Mixer", "Atten-Mixer"]
        for ax in fig.axes:  # every bucket says how many examples it holds: all of them, once
            counts = [int(m) for t in ax.get_xticklabels() for m in re.findall(r"\(n=(\d+)\)", t.get_text())]
            assert sum(counts) == examples
        assert all(c.errorbar is not None for c in bars(fig))

    drop = {"srgnn+attenmixer"}
    only = [dataclasses.replace(r, results=dict(r.results, models={m: e for m, e in r.results["models"].items()
                                                                   if m not in drop})) for r in records]
    rows, _ = figures.length_rows(only)
    assert {r["model"] for r in rows} == {"srgnn", "attenmixer"}
    with drawn(lambda w: figures.draw_lengths(rows, w), style.DOUBLE) as fig:
        assert legend_labels(fig) == ["SR-GNN", "Atten-Mixer"]
        mine = [r["mean"] for kind in ("short/long", "fine") for metric in ("HR@20", "MRR@20") for r in rows
                if (r["model"], r["kind"], r["metric"]) == ("attenmixer", kind, metric)]  # its own numbers, by panel
        assert [p.get_height() for c in bars(fig, "Atten-Mixer") for p in c.patches] == pytest.approx(mine)


def test_timing_bars_are_table2_seconds_per_epoch(shown, records):
    for _, fig in both_widths(shown, "timing"):
        (ax,) = fig.axes
        names = [t.get_text() for t in ax.get_xticklabels()]
        assert names == ["SR-GNN", "Atten-Mixer", "SR-GNN w/ Atten-Mixer"]  # Table 2's order; POP has no epochs
        stack = [c for c in bars(fig) if c.get_label() != "validation pass (eval)"]
        assert [c.get_label() for c in stack] == ["data loading", "forward", "backward", "other (training)"]
        (evals,) = bars(fig, "validation pass (eval)")
        for i, model in enumerate(("srgnn", "attenmixer", "srgnn+attenmixer")):
            timing = latest_with(records, "synthetic:micro", model).results["models"][model]["timing"]
            top = stack[-1].patches[i]
            assert top.get_y() + top.get_height() == pytest.approx(timing["epoch_median_s"])
            assert sum(c.patches[i].get_height() for c in stack) == pytest.approx(timing["epoch_median_s"])
            assert evals.patches[i].get_height() == pytest.approx(timing["eval_median_s"])


def test_training_stack_adds_up_to_the_epoch():
    short = figures.training_stack(dict(epoch_median_s=2.0, data_median_s=0.5, forward_median_s=0.5,
                                        backward_median_s=0.5))
    assert short == {"data": 0.5, "forward": 0.5, "backward": 0.5, "other": 0.5}
    over = figures.training_stack(dict(epoch_median_s=1.0, data_median_s=1.0, forward_median_s=1.0,
                                       backward_median_s=2.0))
    assert sum(over.values()) == pytest.approx(1.0) and over["backward"] == pytest.approx(0.5)


def test_intent_recovery_bars_have_errorbars(made, shown):
    _, results, _ = made
    assert {r["seeds"] for r in results["intent"][2]} == {2}
    for _, fig in both_widths(shown, "intent"):
        assert legend_labels(fig) == ["model attention", "uniform attention"]
        assert all(c.errorbar is not None for c in bars(fig, "model attention"))


def test_sweeps_with_other_settings_stay_separate_lines():
    from types import SimpleNamespace

    def point(sweep_id, value, hr):
        test = {"HR@20": {"mean": hr, "std": 0.0}, "MRR@20": {"mean": hr / 2, "std": 0.0}}
        return SimpleNamespace(sweep={"param": "levels", "model": "attenmixer", "id": sweep_id, "value": value},
                               dataset="d", results={"models": {"attenmixer": {"status": "ok", "test": test}}})

    records = [point("a", 1, 10.0), point("a", 2, 11.0), point("b", 1, 50.0), point("b", 2, 51.0)]
    points = figures.sweep_points(records, "levels")
    assert {k: sorted(v) for k, v in points.items()} == {("d", "attenmixer", "a"): [1, 2],
                                                         ("d", "attenmixer", "b"): [1, 2]}
    assert points[("d", "attenmixer", "b")][1][0]["HR@20"]["mean"] == 50.0  # not overwritten by sweep a
    assert set(figures._sweep_labels(points).values()) == {"Atten-Mixer (a)", "Atten-Mixer (b)"}
    assert figures._sweep_labels({k: v for k, v in points.items() if k[2] == "a"}) == \
        {("d", "attenmixer", "a"): "Atten-Mixer"}
