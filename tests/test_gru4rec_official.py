"""GRU4Rec against the official PyTorch port on session-rec's rsc15 100k split (slow: trains 3 x 10 epochs).

The official numbers were made by benchmarks/gru4rec_check.py (the checkout's commit and the settings are
in the data file): the official code trained on the same whole sessions and scored by our evaluator. Ours
are trained here with the same plain loop. The two differ in random draws, so the means over the recorded
seeds are compared with a tolerance."""

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

from conftest import shared_path

RECORD_PATH = Path(__file__).parent / "data" / "gru4rec_official_rsc15_100k.json"
# Points x100. Recorded: ours 0.48 / 0.29 below the official (docs/guide.md says what was ruled out), seed
# std ~0.1 on each side: the tolerance holds that gap with room for the seed noise, not more.
TOLERANCE = {"HR@20": 0.75, "MRR@20": 0.5}


@pytest.mark.slow
def test_agrees_with_the_official_code(tmp_path):
    from sbr_bench import load_dataset
    from sbr_bench.data.sessions import Split
    from sbr_bench.evaluate import evaluate

    record = json.loads(RECORD_PATH.read_text())
    spec = importlib.util.spec_from_file_location("gru4rec_check", Path(__file__).parents[1] / "benchmarks" /
                                                  "gru4rec_check.py")
    check = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(check)
    data = load_dataset(str(shared_path("yoochoose/sessionrec_rsc15_100k")), data_dir=str(tmp_path))
    train = Split.concat(data.train, data.valid)
    ours = [evaluate(check.our_run(data, train, record["settings"], record["epochs"], seed), data.test,
                     data.n_items).metrics for seed in range(len(record["runs"]["official"]))]
    for metric, tolerance in TOLERANCE.items():
        mean, official = float(np.mean([m[metric] for m in ours])), record["summary"]["official"][metric][0]
        print(f"gru4rec {metric}: ours {mean:.2f}, official {official:.2f}")
        assert abs(mean - official) < tolerance, (metric, mean, official)
