"""Multi-process training: `torchrun --nproc_per_node 2 -m sbr_bench.cli run` (gloo on CPU) must give the
numbers of single-process training up to float noise, with one run folder written by rank 0; plus the
batch sharding and loss weighting it rests on."""

import os
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from sbr_bench import cli, distributed
from sbr_bench.data.dataset import load_dataset
from sbr_bench.data.graphs import ExampleLoader
from sbr_bench.io import read_json, read_jsonl

# Models without dropout (Atten-Mixer's three dropouts set to 0): masks differ between ranks by design.
# Batch 45 over 968 micro training examples: uneven shares (23/22) and an uneven last batch (23 -> 12/11).
COMMON_ARGS = ["--dataset", "synthetic:micro", "--epochs", "2", "--batch-size", "45", "--threads", "1", "--no-progress"]
RUN_ARGS = ["--models", "srgnn,attenmixer", "--set", "attenmixer.attention_dropout=0", "--set",
            "attenmixer.item_dropout=0", "--set", "attenmixer.embedding_dropout=0", *COMMON_ARGS]
MODELS = ("srgnn", "attenmixer")
LAUNCH_TIMEOUT_S = 600


# --- sharding and loss weighting (no processes) -------------------------------------------------------

@pytest.mark.parametrize("world", [1, 2, 3, 4])
def test_shards_cover_a_global_batch_exactly_once(world):
    for n in range(0, 23):
        index = np.arange(100, 100 + n)
        shares = [distributed.shard(index, r, world) for r in range(world)]
        np.testing.assert_array_equal(np.concatenate(shares), index)  # in order, nothing twice or missing
        sizes = [len(s) for s in shares]
        assert max(sizes) - min(sizes) <= 1


def test_weighted_share_gradients_average_to_the_global_mean_gradient():
    torch.manual_seed(0)
    x, y = torch.randn(7, 5), torch.randint(0, 3, (7,))
    w = torch.randn(5, 3, requires_grad=True)
    F.cross_entropy(x @ w, y).backward()
    full = w.grad.clone()
    world, grads = 3, []
    for r in range(world):  # shares of 3, 2, 2 examples: plain averaging of share means would be wrong
        idx = distributed.shard(np.arange(7), r, world)
        w.grad = None
        weight = distributed.loss_weight(len(idx), 7, world)
        (F.cross_entropy(x[idx] @ w, y[idx]) * weight).backward()
        grads.append(w.grad.clone())
    torch.testing.assert_close(torch.stack(grads).mean(0), full)  # what DDP's gradient average gives
    unweighted = []
    for r in range(world):
        idx = distributed.shard(np.arange(7), r, world)
        w.grad = None
        F.cross_entropy(x[idx] @ w, y[idx]).backward()
        unweighted.append(w.grad.clone())
    assert not torch.allclose(torch.stack(unweighted).mean(0), full)  # the weighting matters here


@pytest.mark.parametrize("world", [2, 3])
def test_loader_shares_rebuild_the_single_process_batches(world):
    split = load_dataset("synthetic:micro").train
    single = ExampleLoader(split, 45, 60, shuffle=True, seed=4)
    ranks = [ExampleLoader(split, 45, 60, shuffle=True, seed=4, rank=r, world=world) for r in range(world)]
    assert all(len(loader) == len(single) for loader in ranks)
    for epoch in (0, 1):
        per_rank = [list(loader.batches(epoch)) for loader in ranks]
        for b, batch in enumerate(single.batches(epoch)):
            shares = [per_rank[r][b] for r in range(world)]
            joined = torch.cat([s.example_index for s in shares])
            assert torch.equal(joined, batch.example_index)
            assert all(s.global_size == batch.num_graphs for s in shares)
            assert torch.equal(torch.cat([s.y for s in shares]), batch.y)


def test_loader_keeps_two_examples_per_share():
    split = load_dataset("synthetic:micro").train
    n = len(split)  # 968: batch 965 leaves a last batch of 3, too few for two shares of two
    loader = ExampleLoader(split, n - 3, 60, shuffle=True, world=2, rank=1)
    assert len(loader) == 1
    assert [b.global_size for b in loader.batches(0)] == [n]
    with pytest.raises(ValueError, match="raise the batch size"):
        ExampleLoader(split, 3, 60, shuffle=True, world=2)


# --- torchrun end to end ------------------------------------------------------------------------------

def launch(tmp_path, *args, entry=("-m", "sbr_bench.cli"), env=None):
    """`python -m torch.distributed.run --standalone --nproc_per_node 2 ENTRY run ARGS` in a subprocess."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", *entry, "run",
           "--runs-dir", str(tmp_path / "runs"), "--data-dir", str(tmp_path / "data"), *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=LAUNCH_TIMEOUT_S, cwd=tmp_path,
                          env=dict(os.environ, OMP_NUM_THREADS="1", **(env or {})))


@pytest.fixture(scope="module")
def single(tmp_path_factory):
    """The same run, single-process, in this process."""
    root = tmp_path_factory.mktemp("single")
    code = cli.main(["run", "--runs-dir", str(root / "runs"), "--data-dir", str(root / "data"), "--run-id", "one",
                     *RUN_ARGS])
    assert code == 0
    return root / "runs" / "one"


def assert_same_training(a_unit, b_unit):
    a, b = read_jsonl(a_unit / "epochs.jsonl"), read_jsonl(b_unit / "epochs.jsonl")
    assert len(a) == len(b) == 2
    for ra, rb in zip(a, b):
        assert (ra["examples"], ra["batches"], ra["lr"]) == (rb["examples"], rb["batches"], rb["lr"])
        assert rb["loss"] == pytest.approx(ra["loss"], rel=1e-5)
        assert rb["valid"] == pytest.approx(ra["valid"], abs=1e-6)
    sa, sb = read_json(a_unit / "summary.json"), read_json(b_unit / "summary.json")
    assert sb["status"] == "ok" and sb["best_epoch"] == sa["best_epoch"]
    assert sb["valid"] == pytest.approx(sa["valid"], abs=1e-6)
    assert sb["test"] == pytest.approx(sa["test"], abs=1e-6)
    assert sb["audit"]["examples"] == sa["audit"]["examples"]
    ranks_a, ranks_b = np.load(a_unit / "ranks.npz"), np.load(b_unit / "ranks.npz")
    np.testing.assert_array_equal(ranks_a["length"], ranks_b["length"])
    np.testing.assert_allclose(ranks_b["expected"], ranks_a["expected"])
    return sb


def test_torchrun_two_processes_match_single_process_training(tmp_path, single):
    out = launch(tmp_path, "--run-id", "ddp", *RUN_ARGS)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert [p.name for p in (tmp_path / "runs").iterdir()] == ["ddp"]  # one run folder, one id
    root = tmp_path / "runs" / "ddp"
    for name in ("config.json", "env.json", "results.json", "results.md"):
        assert (root / name).is_file()
    assert read_json(root / "config.json")["distributed"] == {"world_size": 2, "backend": "gloo"}
    assert read_json(root / "env.json")["distributed"] == {"world_size": 2, "backend": "gloo"}
    for model in MODELS:
        unit = root / model / "seed0"
        assert sorted(p.name for p in unit.iterdir()) == ["checkpoint.pt", "epochs.jsonl", "ranks.npz", "refit",
                                                          "summary.json"]
        summary = assert_same_training(single / model / "seed0", unit)
        assert summary["timing"]["world_size"] == 2 and summary["timing"]["backend"] == "gloo"
    assert out.stdout.count("test HR@20") == len(MODELS)  # rank 0 prints, the other rank is quiet
    results = read_json(root / "results.json")
    assert all(results["models"][m]["seeds_ok"] == [0] for m in MODELS)


CRASHING_ENTRY = '''
import os, sys
from sbr_bench import cli, distributed
from sbr_bench.models.base import SBRModel

rank, step = map(int, os.environ["CRASH_AT"].split(":")) if os.environ.get("CRASH_AT") else (-1, -1)
calls, loss = [0], SBRModel.loss


def crashing_loss(self, batch):  # one rank dies at one training step; the whole job must stop
    calls[0] += 1
    if distributed.rank() == rank and calls[0] == step:
        raise RuntimeError("injected crash")
    return loss(self, batch)


SBRModel.loss = crashing_loss
sys.exit(cli.main())
'''


@pytest.mark.slow
def test_torchrun_resume_after_one_rank_crashed(tmp_path, single):
    entry = tmp_path / "entry.py"
    entry.write_text(CRASHING_ENTRY)
    args = ["--models", "srgnn", *COMMON_ARGS]
    # 22 batches per epoch, checkpoints every 5: rank 1 dies in epoch 1 after the checkpoint at batch 5.
    crashed = launch(tmp_path, "--run-id", "ddp", "--checkpoint-every", "5", *args, entry=(str(entry),),
                     env={"CRASH_AT": "1:31"})
    assert crashed.returncode != 0 and "injected crash" in crashed.stderr
    unit = tmp_path / "runs" / "ddp" / "srgnn" / "seed0"
    assert not (unit / "summary.json").exists() and len(read_jsonl(unit / "epochs.jsonl")) == 1
    resumed = launch(tmp_path, "--resume", "ddp", "--threads", "1", "--no-progress", entry=(str(entry),))
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    rows = read_jsonl(unit / "epochs.jsonl")
    assert [r["resumed_mid_epoch"] for r in rows] == [False, True]
    assert_same_training(single / "srgnn" / "seed0", unit)
