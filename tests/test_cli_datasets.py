"""`sbr-bench datasets list|prepare|stats`, in process and once through the console script; Table 1 of
the paper for the imported Gowalla split."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import shared_path
from sbr_bench.cli import main


def write_lessr(folder):
    folder.mkdir(parents=True)
    (folder / "train.txt").write_text("0,1,2\n3,4\n1,2,3,4\n0,2\n")
    (folder / "test.txt").write_text("0,1,2,3\n4,0\n")
    (folder / "num_items.txt").write_text("5")
    return folder


def test_list_shows_synthetic_and_sources(tmp_path, capsys):
    assert main(["datasets", "list", "--data-dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "synthetic:tiny" in out and "gowalla" in out


def test_prepare_from_folder_then_stats_by_name(tmp_path, capsys):
    folder = write_lessr(tmp_path / "src")
    data = str(tmp_path / "data")
    assert main(["datasets", "prepare", "mine", "--from", str(folder), "--data-dir", data,
                 "--valid-fraction", "0.25"]) == 0
    assert "prepared mine" in capsys.readouterr().out
    assert main(["datasets", "stats", "mine", "--data-dir", data, "--valid-fraction", "0.25", "--json"]) == 0
    stats = json.loads(capsys.readouterr().out)
    assert stats["clicks"] == 11 + 6
    assert stats["sessions"] == (11 - 4) + (6 - 2)  # prefix examples of train (+valid) and test
    assert stats["valid_examples"] == 1  # the latest of 4 train sessions, [0, 2] -> one example
    assert stats["n_items"] == 5
    assert main(["datasets", "list", "--data-dir", data]) == 0
    assert "imported (lessr)" in capsys.readouterr().out


def test_prepare_click_log(tmp_path, capsys):
    pytest.importorskip("sbr_bench.data.protocols")
    log = tmp_path / "log.tsv"
    rows = ["s\ti\tt"]
    for s in range(40):  # 40 sessions of 3 clicks over 4 items: every item is frequent
        rows += [f"{s}\t{(s + k) % 4}\t{1000 * s + k}" for k in range(3)]
    log.write_text("\n".join(rows) + "\n")
    args = ["datasets", "prepare", "shop", "--from", str(log), "--data-dir", str(tmp_path / "d"),
            "--session-col", "s", "--item-col", "i", "--time-col", "t", "--delimiter", "tab"]
    assert main(args) == 0
    out = capsys.readouterr().out
    counts = {line.rsplit(None, 1)[0].strip(): line.rsplit(None, 1)[1] for line in out.splitlines()[2:]}
    assert counts["No. of clicks"] == "120"
    assert counts["Test examples"] == "16"  # the latest 20% = 8 sessions of 3 clicks
    assert main(args) == 0
    assert capsys.readouterr().out.startswith("cached shop")


@pytest.mark.parametrize("argv, message", [
    (["datasets", "stats", "nosuchdata"], "unknown dataset 'nosuchdata'"),
    (["datasets", "prepare", "gowalla", "--raw", "missing.txt"], "raw file missing.txt does not exist"),
    (["datasets", "prepare", "synthetic:tiny", "--param", "oops"], "--param expects KEY=VALUE"),
    (["datasets", "prepare", "x", "--from", "no/such/folder"], "no/such/folder does not exist"),
])
def test_user_errors_are_one_line_and_exit_2(tmp_path, capsys, argv, message):
    assert main(argv + ["--data-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1


def test_console_script(tmp_path):
    script = Path(sys.executable).with_name("sbr-bench")
    if not script.exists():
        pytest.skip("the sbr-bench console script is not installed in this environment")
    done = subprocess.run([str(script), "datasets", "stats", "synthetic:tiny", "--json"], capture_output=True,
                          text=True, cwd=tmp_path, timeout=120, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr
    stats = json.loads(done.stdout)
    assert stats["n_items"] == 200 and stats["clicks"] > 0


def test_gowalla_table1_from_the_imported_split(tmp_path, capsys):
    folder = shared_path("gowalla/lessr_protocol_pickle")
    assert main(["datasets", "prepare", "gowalla", "--from", str(folder), "--data-dir", str(tmp_path)]) == 0
    capsys.readouterr()
    assert main(["datasets", "stats", "gowalla", "--data-dir", str(tmp_path), "--json"]) == 0
    stats = json.loads(capsys.readouterr().out)
    assert stats["clicks"] == 1_122_788
    assert stats["items"] == stats["n_items"] == 29_510
    assert stats["sessions"] == 830_893
    assert stats["train_examples"] + stats["valid_examples"] == 675_561
    assert stats["test_examples"] == 155_332
    assert round(stats["avg_length"], 2) == 3.85
