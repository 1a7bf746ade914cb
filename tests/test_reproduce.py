"""Published reference numbers and `sbr-bench reproduce` (end to end on a small shared split)."""

import pytest

from sbr_bench import cli
from sbr_bench.errors import DataFormatError, UserError
from sbr_bench.io import read_json
from sbr_bench.references import METRIC, load_reference, papers
from sbr_bench.runs import RunDir

from conftest import shared_path


def test_every_reference_file_loads_and_every_number_names_its_source():
    assert {"attenmixer", "srgnn"} <= set(papers())
    for key in papers():
        ref = load_reference(key)
        assert ref.paper["source"] and ref.paper["title"] and ref.results
        for row in ref.results:
            assert row["table"] and row["dataset"] and row["protocol"] and row["model"]
            assert any(METRIC.match(k) for k in row)


def test_reference_numbers_are_the_papers():
    attenmixer = load_reference("attenmixer")
    assert attenmixer.numbers("gowalla")["attenmixer"]["HR@20"] == 55.12
    assert attenmixer.numbers("gowalla")["attenmixer"]["MRR@20"] == 27.01
    assert attenmixer.numbers("diginetica", "Table 3")["srgnn+attenmixer"]["HR@20"] == 55.73
    assert attenmixer.numbers("lastfm", "Table 4")["attenmixer-M"]["MRR@20"] == 8.30
    srgnn = load_reference("srgnn")
    assert (srgnn.numbers("diginetica")["srgnn"]["HR@20"], srgnn.numbers("diginetica")["srgnn"]["MRR@20"]) == (50.73, 17.59)
    assert srgnn.numbers("yoochoose1_64")["srgnn"]["HR@20"] == 70.57
    assert srgnn.numbers("yoochoose1_4")["srgnn"]["MRR@20"] == 31.89


def test_unknown_paper_and_malformed_files_are_one_line_errors(tmp_path, monkeypatch):
    with pytest.raises(UserError, match="paper = 'nope'"):
        load_reference("nope")
    import sbr_bench.references as refs

    (tmp_path / "bad.toml").write_text('[paper]\nkey = "bad"\ntitle = "t"\nvenue = "v"\nsource = "s"\n'
                                       'selection = "test"\n[[result]]\ntable = "T"\ndataset = "d"\n'
                                       'protocol = "p"\nmodel = "m"\n')
    monkeypatch.setattr(refs.resources, "files", lambda _: tmp_path)
    with pytest.raises(DataFormatError, match="result 1 lacks a metric"):
        load_reference("bad")


def test_reproduce_runs_end_to_end_and_its_refit_equals_a_real_refit(tmp_path, capsys):
    data = str(shared_path("diginetica/srgnn_protocol_on_raw_sample"))
    runs = str(tmp_path / "runs")
    code = cli.main(["reproduce", "--paper", "srgnn", "--dataset", "diginetica", "--data", data,
                     "--models", "pop,srgnn", "--epochs", "2", "--runs-dir", runs, "--no-progress"])
    assert code == 0
    printed = capsys.readouterr().out
    assert "| srgnn | HR@20 | 50.73 |" in printed and "best-on-test, optimistic" in printed
    table = read_json(tmp_path / "runs" / "reproduce-srgnn-diginetica.json")
    row = next(r for r in table["rows"] if r["model"] == "srgnn" and r["metric"] == "MRR@20")
    assert row["published"] == 17.59 and row["literature_diff"] == pytest.approx(row["literature"]["mean"] - 17.59)
    assert read_json(tmp_path / "runs" / "reproduce-srgnn-diginetica-literature" / "config.json")["selection"] == "literature"

    # the refit column is what `run --selection refit` gives with the same settings
    assert cli.main(["run", "--models", "pop,srgnn", "--dataset", data, "--epochs", "2", "--runs-dir", runs,
                     "--selection", "refit", "--run-id", "real-refit", "--valid-fraction", "0.1",
                     "--no-progress"]) == 0
    real = RunDir(tmp_path / "runs" / "real-refit")
    for r in table["rows"]:
        assert r["refit"]["mean"] == pytest.approx(real.unit(r["model"], 0).read_summary()["test"][r["metric"]], abs=1e-9)

    # a second call resumes the two runs instead of training again
    assert cli.main(["reproduce", "--paper", "srgnn", "--dataset", "diginetica", "--data", data,
                     "--models", "pop,srgnn", "--epochs", "2", "--runs-dir", runs, "--no-progress"]) == 0
    assert "already finished" in capsys.readouterr().out


def test_reproduce_refuses_a_dataset_the_paper_has_no_numbers_for(tmp_path):
    assert cli.main(["reproduce", "--paper", "srgnn", "--dataset", "lastfm", "--runs-dir", str(tmp_path)]) == 2
