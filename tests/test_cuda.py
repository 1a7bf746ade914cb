"""CUDA: training, exact resume (CUDA RNG state included), device-synchronised phase timers, peak GPU memory,
NCCL under torchrun and CPU/CUDA agreement of the evaluator.

Every test is marked `cuda` and skips with its reason where `torch.cuda.is_available()` is false, so the CPU
CI collects and skips them. On a CUDA machine: `python -m pytest -q -m cuda tests/test_cuda.py` (what
`benchmarks/gpu_check.sh` runs; `-m cuda` on the command line replaces setup.cfg's `-m "not slow"`).
"""

import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import torch

import sbr_bench
from sbr_bench.io import read_json, read_jsonl
from sbr_bench.models.base import DotScorer, EmbeddingEncoder, Readout, SBRModel
from sbr_bench.runs import Run
from sbr_bench.training import seed_everything, train_model
from test_runs_resume import Crash, build, comparable

# cuBLAS reads this when it starts (the first CUDA matrix product of the process): set it before any test
# does, so that the deterministic resume test below gets deterministic cuBLAS whatever ran first.
os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(),
                       reason=f"needs a CUDA GPU (torch {torch.__version__} sees none: "
                              f"{'a CPU-only build' if torch.version.cuda is None else 'no device visible'})"),
]
ROOT = Path(__file__).resolve().parents[1]
LAUNCH_TIMEOUT_S = 300


# --- (a) short training of real models on CUDA ------------------------------------------------------------

# The overrides of the CPU tests that show each model beats popularity on synthetic:tiny in a few epochs.
SHORT_RUNS = {"srgnn": {"dim": 32, "lr": 1e-2}, "attenmixer": {"dim": 32}, "dhcn": {"dim": 32},
              "narm": {"dim": 32, "batch_size": 64}}


@pytest.fixture(scope="module")
def short_run(tmp_path_factory):
    """srgnn, attenmixer, dhcn and narm trained 5 epochs on synthetic:tiny on cuda, one run folder."""
    experiment = sbr_bench.Experiment(models=list(SHORT_RUNS), dataset="synthetic:tiny", epochs=5, selection="valid",
                                      device="cuda", model_overrides=SHORT_RUNS, checkpoint_every=0,
                                      runs_dir=str(tmp_path_factory.mktemp("runs")), run_id="cuda")
    return experiment.run()


def popularity(data) -> dict:
    pop = sbr_bench.build_model("pop", data.n_items)
    pop.fit(data.train)
    return sbr_bench.Evaluator(data.n_items).eval_split(pop, data.test).metrics


def test_short_cuda_training_is_finite_and_beats_popularity(short_run, tiny):
    pop = popularity(tiny)
    env = read_json(short_run.path / "env.json")
    assert env["gpu"] and env["gpu"]["count"] >= 1, env.get("gpu")  # the run recorded the GPU it used
    metrics = short_run.metrics.set_index("model")
    for name in SHORT_RUNS:
        row = metrics.loc[name]
        assert row["status"] == "ok", (name, row.to_dict())
        epochs = read_jsonl(short_run.path / name / "seed0" / "epochs.jsonl")
        assert len(epochs) == 5 and all(np.isfinite(r["loss"]) for r in epochs), name
        assert epochs[-1]["loss"] < epochs[0]["loss"], name
        assert row["HR@20"] > pop["HR@20"] + 3 and row["MRR@20"] > pop["MRR@20"] + 3, (name, row["HR@20"], pop)


# --- (d) peak GPU memory ------------------------------------------------------------------------------------

def test_peak_gpu_memory_is_recorded_every_epoch(short_run):
    for name in SHORT_RUNS:
        for row in read_jsonl(short_run.path / name / "seed0" / "epochs.jsonl"):
            assert row["peak_gpu_mb"] > 0 and row["peak_gpu_reserved_mb"] >= row["peak_gpu_mb"], (name, row)


def test_profile_reports_the_cuda_peak_above_the_training_state(tiny):
    from sbr_bench.models.registry import model_config
    from sbr_bench.profiling import profile_model

    cfg = dict(model_config("attenmixer"), dim=256, batch_size=100)
    row = profile_model("attenmixer", cfg, tiny, "cuda", bound_repeats=2)
    assert row["status"] == "trained" and row["peak_kind"] == "cuda", row
    model = sbr_bench.build_model("attenmixer", tiny.n_items, dim=256)
    param_mb = sum(p.numel() * p.element_size() for p in model.parameters()) / 2**20
    assert row["peak_mb"] >= 4 * param_mb  # weights, gradients and Adam's two moments at least
    assert row["bound_s"] > 0 and row["ratio"] > 0


# --- (b) exact resume on CUDA, CUDA RNG state included --------------------------------------------------------

RESUME_CFG = dict(dim=16, batch_size=50, lr=0.01, l2=1e-5, lr_step=1, lr_decay=0.5, epochs=3, patience=3,
                  optimizer="adam", dropout=0.0)


class LastReadout(Readout):
    """The last click's state: a gather with distinct indices, deterministic on CUDA (a scatter mean is not)."""

    def forward(self, enc, batch):
        return enc.last_h


def train_deterministic(model, data, run, **kw):
    flags = torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark
    try:
        return train_model(model, data, RESUME_CFG, run, device="cuda", seed=3, progress=False, checkpoint_every=5,
                           deterministic=True, **kw)
    finally:  # process-wide settings: leave the other tests as they were
        torch.use_deterministic_algorithms(False)
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = flags


@pytest.fixture(scope="module")
def resume_reference(tiny, tmp_path_factory):
    run = Run(tmp_path_factory.mktemp("ref") / "unit", "crashy", 3)
    train_deterministic(build(tiny.n_items, readout=LastReadout()), tiny, run)
    return comparable(run)


def crash_in_epoch_1(tiny, run):
    batches_per_epoch = -(-len(tiny.train) // RESUME_CFG["batch_size"])
    with pytest.raises(Crash):  # epoch 1, three steps after the mid-epoch checkpoint at batch 10
        train_deterministic(build(tiny.n_items, crash_at=batches_per_epoch + 13, readout=LastReadout()), tiny, run)
    ckpt = run.load_checkpoint()
    assert (ckpt["state"]["epoch"], ckpt["state"]["batch"]) == (1, 10)
    assert "cuda" in ckpt["rng"] and len(ckpt["rng"]["cuda"]) == torch.cuda.device_count()


def test_cuda_crash_mid_epoch_resumes_exactly(tiny, tmp_path, resume_reference):
    run = Run(tmp_path / "unit", "crashy", 3)
    crash_in_epoch_1(tiny, run)
    train_deterministic(build(tiny.n_items, readout=LastReadout()), tiny, run)
    assert comparable(run) == resume_reference
    assert [r["resumed_mid_epoch"] for r in run.read_epochs()] == [False, True, False]


def test_cuda_resume_depends_on_the_restored_cuda_rng_state(tiny, tmp_path, resume_reference, monkeypatch):
    """The same resume with the CUDA generator left where the crashed run had it: other dropout masks, other
    numbers. So the exact resume above does rest on the CUDA RNG state in the checkpoint."""
    run = Run(tmp_path / "unit", "crashy", 3)
    crash_in_epoch_1(tiny, run)
    monkeypatch.setattr(torch.cuda, "set_rng_state_all", lambda states: None)
    train_deterministic(build(tiny.n_items, readout=LastReadout()), tiny, run)
    assert comparable(run)[1][1] != resume_reference[1][1]  # epoch 1, the resumed one, differs


# --- (c) the phase timers synchronise the device --------------------------------------------------------------

class _HeavyBackward(torch.autograd.Function):
    """Identity forward; a backward that queues ~tens of ms of GPU matrix products and returns at once (no
    host sync), so only a device synchronisation at the end of the step puts them into the backward phase."""

    @staticmethod
    def forward(ctx, x):
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        a = torch.ones(4096, 4096, device=grad.device) / 4096  # a @ a = a: stays finite
        for _ in range(20):
            a = a @ a
        return grad + 0.0 * a[0, 0]


class HeavyReadout(Readout):
    def forward(self, enc, batch):
        return _HeavyBackward.apply(enc.last_h)


def test_phase_timers_synchronise_the_device(tiny, tmp_path, monkeypatch):
    calls, real = [], torch.cuda.synchronize

    def counting(device=None):
        calls.append(device)
        real(device)

    monkeypatch.setattr(torch.cuda, "synchronize", counting)
    seed_everything(0)
    model = SBRModel(tiny.n_items, 16, EmbeddingEncoder(16), HeavyReadout(), DotScorer())
    cfg = dict(RESUME_CFG, batch_size=500, epochs=1)
    out = train_model(model, tiny, cfg, Run(tmp_path / "unit", "heavy", 0), device="cuda", progress=False,
                      max_epochs=1, evaluate_test=False)
    row = out["history"][0]
    t = row["time"]
    assert len(calls) >= 2 * row["batches"]  # after the copy to the device and after each optimizer step
    assert all(torch.device(d).type == "cuda" for d in calls if d is not None)
    assert t["train"] == pytest.approx(t["data"] + t["forward"] + t["backward"])
    # Without the sync after the step, the queued products would be waited for in the next batch's data phase.
    assert t["backward"] > 2 * (t["data"] + t["forward"]), t


# --- (e) NCCL under torchrun ----------------------------------------------------------------------------------

NCCL_ONE_RANK = '''
import torch, torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
import numpy as np
from sbr_bench import distributed, load_dataset, build_model
from sbr_bench.data.graphs import collate_examples
from sbr_bench.training import _LossOf

torch.cuda.set_device(0)
dist.init_process_group("nccl")
assert distributed.active() and distributed.backend() == "nccl" and distributed.world() == 1
device = torch.device("cuda", 0)
assert distributed.all_reduce_sum([1.5, -2.0], device) == [1.5, -2.0]
assert distributed.all_gather_object({"rank": 0}) == [{"rank": 0}]
assert distributed.broadcast_object("run-id") == "run-id"
data = load_dataset("synthetic:micro")
torch.manual_seed(0)
# LESSR: BatchNorm buffers (what sync_buffers broadcasts); feat_drop 0 so both models draw no masks
plain = build_model("lessr", data.n_items, dim=16, feat_drop=0.0).to(device)
wrapped = build_model("lessr", data.n_items, dim=16, feat_drop=0.0).to(device)
wrapped.load_state_dict(plain.state_dict())
distributed.sync_buffers(wrapped)
ddp = DistributedDataParallel(_LossOf(wrapped), device_ids=[0], static_graph=True, gradient_as_bucket_view=True)
batch = collate_examples(data.train, np.arange(45), data.n_items, tuple(plain.extra_graphs)).to(device)
for _ in range(2):  # static_graph: the first step records the graph, the second uses it
    for m in (plain, wrapped):
        m.zero_grad(set_to_none=True)
    plain.loss(batch)[0].backward()
    ddp(batch)[0].backward()
    for (name, a), b in zip(plain.named_parameters(), wrapped.parameters()):
        torch.testing.assert_close(b.grad, a.grad, rtol=1e-4, atol=1e-6, msg=name)
dist.destroy_process_group()
print("NCCL OK")
'''


def torchrun(tmp_path, nproc, *args, env=None):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc), *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=LAUNCH_TIMEOUT_S, cwd=tmp_path,
                          env=dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT), **(env or {})))


def test_nccl_collectives_and_ddp_step_under_torchrun(tmp_path):
    """One rank per GPU is NCCL's rule, so on one GPU: NCCL with world size 1 through the library's collectives
    and a DDP-wrapped step (as the trainer wraps it) against the plain step."""
    script = tmp_path / "nccl_one_rank.py"
    script.write_text(textwrap.dedent(NCCL_ONE_RANK))
    out = torchrun(tmp_path, 1, str(script))
    assert out.returncode == 0 and "NCCL OK" in out.stdout, out.stdout[-3000:] + out.stderr[-3000:]


DDP_ARGS = ["--models", "srgnn,attenmixer", "--set", "attenmixer.attention_dropout=0", "--set",
            "attenmixer.item_dropout=0", "--set", "attenmixer.embedding_dropout=0", "--dataset", "synthetic:micro",
            "--epochs", "2", "--batch-size", "45", "--threads", "1", "--no-progress", "--device", "cuda"]


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs 2 or more GPUs (NCCL takes one GPU per rank)")
def test_torchrun_on_every_gpu_matches_single_process_cuda_training(tmp_path):
    """tests/test_distributed.py's check with NCCL on all visible GPUs (float tolerances of GPU reductions)."""
    from sbr_bench import cli

    common = ["--runs-dir", str(tmp_path / "runs"), "--data-dir", str(tmp_path / "data")]
    assert cli.main(["run", *common, "--run-id", "one", *DDP_ARGS]) == 0
    world = torch.cuda.device_count()
    out = torchrun(tmp_path, world, "-m", "sbr_bench.cli", "run", *common, "--run-id", "ddp", *DDP_ARGS)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    root = tmp_path / "runs"
    assert read_json(root / "ddp" / "config.json")["distributed"] == {"world_size": world, "backend": "nccl"}
    for model in ("srgnn", "attenmixer"):
        a, b = root / "one" / model / "seed0", root / "ddp" / model / "seed0"
        for ra, rb in zip(read_jsonl(a / "epochs.jsonl"), read_jsonl(b / "epochs.jsonl")):
            assert (ra["examples"], ra["batches"]) == (rb["examples"], rb["batches"])
            assert rb["loss"] == pytest.approx(ra["loss"], rel=1e-3)
        sa, sb = read_json(a / "summary.json"), read_json(b / "summary.json")
        assert sb["status"] == "ok" and sb["timing"]["backend"] == "nccl"
        assert sb["test"] == pytest.approx(sa["test"], abs=1.0)


# --- (f) evaluation on CUDA ranks as on CPU -------------------------------------------------------------------

@pytest.mark.parametrize("name", ["srgnn", "attenmixer"])  # a dot scorer and a normalised (cosine) scorer
def test_cuda_evaluation_ranks_as_cpu_evaluation(tiny, name):
    torch.manual_seed(0)
    model = sbr_bench.build_model(name, tiny.n_items, dim=32, epochs=2)
    sbr_bench.train(model, tiny, selection="valid", device="cpu")
    evaluator = sbr_bench.Evaluator(tiny.n_items)
    on_cpu = evaluator.eval_split(model.to("cpu"), tiny.test, device="cpu")
    start = time.perf_counter()
    on_cuda = evaluator.eval_split(model.to("cuda"), tiny.test, device="cuda")
    assert time.perf_counter() - start < 60
    same = np.mean(on_cpu.ranks_optimistic == on_cuda.ranks_optimistic)
    assert same > 0.98, same  # float summation order may reorder a few near-ties, no more
    for metric, value in on_cpu.metrics.items():
        assert on_cuda.metrics[metric] == pytest.approx(value, abs=0.5), metric
