"""Our GRU4Rec against the official PyTorch port (hidasib/GRU4Rec_PyTorch_Official), same data, settings
and evaluator.

The official code is not a dependency: give the path of a checkout with --official. Both train for the
same epochs with the same settings (the official class's defaults unless --set says otherwise) on the
training sessions of a prepared dataset (train + validation, `training_sequences`) in stored order, with
no model selection; both are evaluated by our evaluator on its test split (tie-aware ranks against every
item; items the official model never saw score -inf there). They differ in random draws (negative
samples, dropout; the official's initial weights are the same for every seed), in the session order (the
official's by first click, ours as stored) and in the loss over the last, short steps (see
`sbr_bench/models/gru4rec.py`), so they agree up to seed noise: --seeds gives its size.

    python benchmarks/gru4rec_check.py --official PATH/GRU4Rec_PyTorch_Official [--dataset rsc15-100k]
        [--epochs 10] [--seeds 3] [--set loss=bpr-max] [--commit SHA --json OUT]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sbr_bench import load_dataset  # noqa: E402
from sbr_bench.data.sessions import Split  # noqa: E402
from sbr_bench.evaluate import evaluate  # noqa: E402
from sbr_bench.models.gru4rec import training_sequences  # noqa: E402
from sbr_bench.models.registry import build_model  # noqa: E402
from sbr_bench.training import make_optimizer, seed_everything  # noqa: E402

# our parameter -> the official GRU4Rec's
OFFICIAL_NAMES = {"loss": "loss", "batch_size": "batch_size", "lr": "learning_rate", "n_sample": "n_sample",
                  "sample_alpha": "sample_alpha", "logq": "logq", "bpreg": "bpreg", "elu_param": "elu_param",
                  "dropout_embed": "dropout_p_embed", "dropout_hidden": "dropout_p_hidden"}


def load_official(path: Path):
    spec = importlib.util.spec_from_file_location("gru4rec_pytorch", path / "gru4rec_pytorch.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    # Its default initialisation ("compatibility mode", which ours follows) draws float64 weights under
    # NumPy 2 and then fails to copy them into float32 tensors: cast them as it meant to.
    draw = module.GRU4RecModel._init_numpy_weights
    module.GRU4RecModel._init_numpy_weights = lambda self, shape: draw(self, shape).astype(np.float32)
    return module


class OfficialScores(torch.nn.Module):
    """The official model as something our evaluator scores: its GRU over each prefix from a zero state
    (as its evaluation steps through a test session), scores for our items 1..n."""

    trainable = False

    def __init__(self, gru, n_items: int):
        super().__init__()
        self.net = gru.model
        idmap = gru.data_iterator.itemidmap  # our item id -> the official's column
        self.column = torch.full((n_items + 1,), -1, dtype=torch.long)
        self.column[torch.tensor(np.array(idmap.index.values, dtype=np.int64))] = torch.tensor(
            np.array(idmap.values, dtype=np.int64))

    @torch.no_grad()
    def forward(self, batch):
        clicks = self.column[batch.x[batch.alias]]
        length, start = batch.length, batch.last - batch.length + 1
        hidden = [torch.zeros(len(length), n) for n in self.net.layers]
        for t in range(int(length.max())):
            items = clicks[torch.where(t < length, start + t, start)]
            running = (t < length) & (items >= 0)  # its evaluation skips clicks on items it never saw
            items = items.clamp_min(0)
            before = [h.clone() for h in hidden]
            step = [h.clone() for h in hidden]
            self.net.forward(items, step, None, training=False)  # updates `step` in place, layer by layer
            hidden = [torch.where(running[:, None], s, b) for s, b in zip(step, before)]
        scores = hidden[-1] @ self.net.Wy.weight.T + self.net.By.weight.T  # [B, official items]
        out = torch.full((len(length), len(self.column) - 1), -torch.inf)
        seen = self.column[1:] >= 0
        out[:, seen] = scores[:, self.column[1:][seen]]
        return out


def official_run(module, sessions, settings: dict, epochs: int, seed: int):
    rows = [(s, int(item), s * 1000 + t) for s, clicks in enumerate(sessions) for t, item in enumerate(clicks)]
    data = pd.DataFrame(rows, columns=["SessionId", "ItemId", "Time"])
    np.random.seed(seed)
    torch.manual_seed(seed)
    gru = module.GRU4Rec(device=torch.device("cpu"), n_epochs=epochs,
                         **{OFFICIAL_NAMES[k]: v for k, v in settings.items() if k in OFFICIAL_NAMES},
                         layers=[settings["dim"]] * settings["layers"])
    gru.fit(data)
    return gru


def our_run(dataset, train: Split, settings: dict, epochs: int, seed: int):
    """The plain loop (no selection, no early stopping): what the official `fit` does."""
    seed_everything(seed)
    model, cfg = build_model("gru4rec", dataset.n_items, settings)
    model.prepare(train)
    optimizer, _ = make_optimizer(model, cfg)
    loader = model.train_loader(train, cfg["batch_size"], seed)
    model.train()
    for epoch in range(epochs):
        for batch in loader.batches(epoch):
            loss, _ = model.loss(batch)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
    return model


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--official", type=Path, required=True, help="a checkout of GRU4Rec_PyTorch_Official")
    parser.add_argument("--dataset", default="rsc15-100k")
    parser.add_argument("--data-dir", default="datasets")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="a GRU4Rec parameter for both sides (our names, e.g. loss=bpr-max, dim=100)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--commit", help="the official checkout's commit, recorded in --json")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    module = load_official(args.official)
    dataset = load_dataset(args.dataset, data_dir=args.data_dir)
    train = Split.concat(dataset.train, dataset.valid)
    _, cfg = build_model("gru4rec", dataset.n_items, {k: v for k, v in (s.split("=", 1) for s in args.set)})
    settings = {k: cfg[k] for k in ("dim", "layers", *OFFICIAL_NAMES)}
    sessions = training_sequences(train)
    print(f"{args.dataset}: {len(sessions)} training sessions, {len(dataset.test)} test examples; settings {settings}")
    results = {"ours": [], "official": []}
    for seed in range(args.seeds):
        for side in ("official", "ours"):
            start = time.perf_counter()
            if side == "official":
                scorer = OfficialScores(official_run(module, sessions, settings, args.epochs, seed), dataset.n_items)
            else:
                scorer = our_run(dataset, train, settings, args.epochs, seed)
            metrics = evaluate(scorer, dataset.test, dataset.n_items).metrics
            results[side].append({"HR@20": metrics["HR@20"], "MRR@20": metrics["MRR@20"],
                                  "seconds": time.perf_counter() - start})
            print(f"  seed {seed} {side:9s} HR@20 {metrics['HR@20']:.2f}  MRR@20 {metrics['MRR@20']:.2f}  "
                  f"({results[side][-1]['seconds']:.0f} s)")
    summary = {side: {m: (float(np.mean([r[m] for r in rows])), float(np.std([r[m] for r in rows])))
                      for m in ("HR@20", "MRR@20")} for side, rows in results.items()}
    for side, values in summary.items():
        print(f"{side:9s} " + "  ".join(f"{m} {mean:.2f} ± {std:.2f}" for m, (mean, std) in values.items()))
    print("difference (ours - official): " + "  ".join(
        f"{m} {summary['ours'][m][0] - summary['official'][m][0]:+.2f}" for m in ("HR@20", "MRR@20")))
    if args.json:
        args.json.write_text(json.dumps({"official_commit": args.commit, "dataset": args.dataset,
                                         "epochs": args.epochs, "settings": settings,
                                         "runs": results, "summary": summary}, indent=1) + "\n")


if __name__ == "__main__":
    main()
