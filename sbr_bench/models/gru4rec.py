"""GRU4Rec (Hidasi et al., ICLR 2016; Hidasi & Karatzoglou, CIKM 2018): a GRU over the session's clicks,
trained with session-parallel mini-batches and sampled cross-entropy or BPR-max.

Scores: h_t = GRU(e_{x_t}, h_{t-1}) (one or more layers), score(v) = h_tᵀ e_v + b_v, with the input and
output item embeddings shared (the official code's default `constrained_embedding=True`).

Session-parallel mini-batches (`SessionParallelLoader`): `batch_size` lanes each run through one training
session at a time, in time order; every step feeds each lane's current click and predicts its next one, the
hidden states carry over from step to step (detached: back-propagation through one step), a lane whose
session ends takes the next unused session with a zero state, and lanes without a session left drop out.
Each step's candidates are the lanes' targets plus `n_sample` items shared by the step, drawn with
probability ∝ popularity^`sample_alpha`; the other lanes' targets are the in-batch negatives.
- cross-entropy: softmax over the candidates, scores shifted by −`logq`·log(popularity) when logq > 0
  (targets' columns by popularity, samples' by popularity^sample_alpha, as the official code);
- BPR-max: with o = ELU(scores, `elu_param`) and s the softmax of o over the negatives,
  −log Σ_j s_j σ(o_target − o_j) + `bpreg` Σ_j s_j o_j².

Defaults are the official PyTorch port's (hidasib/GRU4Rec_PyTorch_Official, `GRU4Rec` class): one layer of
100 units, cross-entropy, batch 64, no dropout, Adagrad lr 0.05, 2048 samples with alpha 0.5, 10 epochs, no
weight decay; its per-dataset best settings are in its `paramfiles/`. Where ours differs:
- the loss is the mean over the step's lanes (the official divides the sum by the full batch size, so its
  last steps, with fewer lanes, weigh less);
- Adagrad (`optimizer = "adagrad"`: lr·g / sqrt(1e-6 + Σg²), the official's step) without its optional
  momentum; on dense gradients Adagrad updates only the rows that have a gradient, as the official's
  sparse version does;
- sessions run in stored order, by their last click's time (the official's: by their first click's);
- evaluation runs the GRU over each test prefix from a zero state, which gives the official's scores (it
  steps through the test sessions without dropout).
`session_parallel = False` trains GRU4Rec like the suite's other models instead (prefix mini-batches, full
softmax: the sampling and loss parameters are then unused), to measure what the session-parallel scheme
is worth.

Figure-2 weight groups: gnn.gate_ih = each layer's input projection, gnn.gate_hh = its hidden projection
(as for NARM's and SR-GNN's cells); no readout weights.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import ConfigError
from . import space
from .base import DotScorer, Encoded, Encoder, SBRModel, gru_over_prefixes, gru_update
from .config import TrainConfig
from .nextitnet import LastStateReadout
from .registry import ModelSpec

LOSSES = ("cross-entropy", "bpr-max")


# --- data: whole sessions and the session-parallel schedule ----------------------------------------------

def training_sequences(split) -> list[np.ndarray]:
    """The click sequences whose transitions are `split`'s examples: each session with two or more clicks
    up to its last example's target, in stored order (every prefix of a session is an example in the
    suite's training splits, so these are the whole sessions)."""
    sessions = split.sessions
    end = np.zeros(len(sessions), dtype=np.int64)
    np.maximum.at(end, split.ex_seq, split.ex_len + 1)
    return [sessions[i][: end[i]] for i in np.flatnonzero(end > 1)]


def session_parallel_schedule(lengths, lanes: int, min_lanes: int = 1):
    """Which session each lane works on at each step: (session [steps, lanes], position [steps, lanes]),
    -1 where a lane is idle. Sessions go, in order, to the lane that frees first (the lowest lane among
    those freeing together), as in the official iterator; a session of n clicks occupies n - 1 steps. The
    schedule ends when fewer than `min_lanes` lanes are busy."""
    lengths = np.asarray(lengths, dtype=np.int64)
    free = [(0, lane) for lane in range(lanes)]
    start = np.empty(len(lengths), dtype=np.int64)
    lane_of = np.empty(len(lengths), dtype=np.int64)
    for s, n in enumerate(lengths):
        t, lane = heapq.heappop(free)
        start[s], lane_of[s] = t, lane
        heapq.heappush(free, (t + int(n) - 1, lane))
    steps = int((start + lengths - 1).max()) if len(lengths) else 0
    session = np.full((steps, lanes), -1, dtype=np.int64)
    position = np.zeros((steps, lanes), dtype=np.int64)
    n_steps = lengths - 1
    owner = np.repeat(np.arange(len(lengths)), n_steps)
    pos = np.arange(int(n_steps.sum())) - np.repeat(np.cumsum(n_steps) - n_steps, n_steps)
    session[start[owner] + pos, lane_of[owner]] = owner
    position[start[owner] + pos, lane_of[owner]] = pos
    busy = (session >= 0).sum(1)
    short = np.flatnonzero(busy < min_lanes)
    end = int(short[0]) if len(short) else steps
    return session[:end], position[:end]


@dataclass
class SessionParallelBatch:
    """One step of the session-parallel scheme, over all lanes."""

    items: Tensor  # [lanes] the click fed at this step (0 on idle lanes)
    targets: Tensor  # [lanes] the next click (0 on idle lanes)
    reset: Tensor  # [lanes] bool: the lane starts a session (its state restarts from zero)
    active: Tensor  # [lanes] bool: the lane has a session
    samples: Tensor  # [n_sample] shared negative items

    @property
    def num_graphs(self) -> int:  # the examples of this step, as a `Batch` counts them
        return int(self.active.sum())

    def to(self, device) -> "SessionParallelBatch":
        return SessionParallelBatch(*(t.to(device) for t in (self.items, self.targets, self.reset, self.active,
                                                             self.samples)))


class SessionParallelLoader:
    """The session-parallel steps of one epoch (same order every epoch, as the official code; negative
    samples drawn per step from (seed, epoch, step), so a mid-epoch resume sees the same ones)."""

    def __init__(self, train, lanes: int, item_counts: np.ndarray, n_sample: int, sample_alpha: float, seed: int):
        seqs = training_sequences(train)
        if not seqs:
            raise ConfigError("dataset", "gru4rec: the training split has no session of two or more clicks")
        counts = np.asarray(item_counts, dtype=np.float64)[1:]
        if counts.sum() <= 0:
            raise ValueError("item_counts are all zero: call the model's prepare(train) first")
        self.lanes = min(int(lanes), len(seqs))
        lengths = np.fromiter((len(s) for s in seqs), dtype=np.int64, count=len(seqs))
        offsets = np.concatenate([[0], np.cumsum(lengths)])
        clicks = np.concatenate(seqs)
        # Without samples a step needs two lanes (each lane's negatives are the others' targets).
        session, position = session_parallel_schedule(lengths, self.lanes, 1 if n_sample > 0 else 2)
        busy = session >= 0
        at = offsets[np.where(busy, session, 0)] + position
        self.items = np.where(busy, clicks[at], 0)
        self.targets = np.where(busy, clicks[np.minimum(at + 1, len(clicks) - 1)], 0)
        self.reset = busy & (position == 0)
        self.active = busy
        if len(self.items) == 0:
            raise ConfigError("overrides.n_sample", "gru4rec: without samples (n_sample = 0) each step needs two "
                              "lanes (the other lanes' targets are the negatives): raise batch_size", n_sample)
        self.n_sample, self.seed = int(n_sample), seed
        weights = np.where(counts > 0, counts ** sample_alpha, 0.0)  # items never clicked in training: never
        self.cdf = np.cumsum(weights) / weights.sum()

    def __len__(self) -> int:
        return len(self.items)

    def samples(self, epoch: int, step: int) -> np.ndarray:
        if self.n_sample == 0:
            return np.zeros(0, dtype=np.int64)
        u = np.random.default_rng([self.seed, epoch, step]).random(self.n_sample)
        return np.minimum(np.searchsorted(self.cdf, u, side="right"), len(self.cdf) - 1) + 1

    def batches(self, epoch: int = 0, start_batch: int = 0):
        for t in range(start_batch, len(self)):
            yield SessionParallelBatch(torch.from_numpy(self.items[t]), torch.from_numpy(self.targets[t]),
                                       torch.from_numpy(self.reset[t]), torch.from_numpy(self.active[t]),
                                       torch.from_numpy(self.samples(epoch, t)))


# --- model ---------------------------------------------------------------------------------------------

class GRU4RecEncoder(Encoder):
    """Stacked GRU layers over the clicks, dropout on the input embeddings and after every layer. Each layer
    keeps its input and hidden projections as Linears (gates r, z, n as nn.GRUCell's) so that SparseVD
    can measure them."""

    def __init__(self, dim: int, layers: int = 1, dropout_embed: float = 0.0, dropout_hidden: float = 0.0):
        super().__init__()
        if layers < 1:
            raise ConfigError("overrides.layers", "must be at least 1", layers)
        self.x2h = nn.ModuleList(nn.Linear(dim, 3 * dim) for _ in range(layers))
        self.h2h = nn.ModuleList(nn.Linear(dim, 3 * dim) for _ in range(layers))
        self.dropout_embed, self.dropout_hidden = nn.Dropout(dropout_embed), nn.Dropout(dropout_hidden)

    def weight_groups(self):
        return {"gnn.gate_ih": [f"x2h.{i}" for i in range(len(self.x2h))],
                "gnn.gate_hh": [f"h2h.{i}" for i in range(len(self.h2h))]}

    def forward(self, batch, embedding) -> Encoded:
        x = self.dropout_embed(embedding(batch.x[batch.alias]))  # [P, d], click order
        for x2h, h2h in zip(self.x2h, self.h2h):
            x = self.dropout_hidden(gru_over_prefixes(x2h(x), h2h, batch))
        return Encoded(x, batch.alias_batch, batch.last, batch.length)

    def step(self, x: Tensor, hidden: Tensor) -> tuple[Tensor, Tensor]:
        """One click per lane: x [lanes, d], hidden [layers, lanes, d] -> (output, new hidden). As in the
        official code, the state carried to the next step is the dropped-out one."""
        x, states = self.dropout_embed(x), []
        for x2h, h2h, h in zip(self.x2h, self.h2h, hidden):
            x = self.dropout_hidden(gru_update(x2h(x), h2h(h), h))
            states.append(x)
        return x, torch.stack(states)


class GRU4Rec(SBRModel):
    """GRU4Rec: the encoder above, the last state as the session, dot products plus an item bias.

    Trains on `SessionParallelLoader` steps (`train_loader`); the lanes' hidden states are part of the
    model's state (`get_extra_state`), so that a mid-epoch checkpoint resumes exactly."""

    def __init__(self, n_items, dim, encoder, readout, scorer, *, session_parallel: bool = True,
                 loss: str = "cross-entropy", n_sample: int = 2048, sample_alpha: float = 0.5, logq: float = 0.0,
                 bpreg: float = 1.0, elu_param: float = 0.5):
        super().__init__(n_items, dim, encoder, readout, scorer)
        if loss not in LOSSES:
            raise ConfigError("overrides.loss", f"choose one of {', '.join(LOSSES)}", loss)
        if n_sample < 0:
            raise ConfigError("overrides.n_sample", "must be 0 (in-batch negatives only) or more", n_sample)
        if loss != "cross-entropy" and not session_parallel:
            raise ConfigError("overrides.loss", "trained on prefix mini-batches (session_parallel = false), "
                              "GRU4Rec uses the full softmax: cross-entropy only", loss)
        if session_parallel and scorer.precision != "fp32":
            raise ConfigError("overrides.precision", "session-parallel GRU4Rec scores sampled items, not the "
                              "catalogue, so only its evaluation would change: use fp32, or session_parallel = "
                              "false", scorer.precision)
        self.item_bias = nn.Embedding(n_items + 1, 1)
        self.session_parallel, self.loss_name = session_parallel, loss
        self.n_sample, self.sample_alpha, self.logq = n_sample, sample_alpha, logq
        self.bpreg, self.elu_param = bpreg, elu_param
        self.register_buffer("item_counts", torch.zeros(n_items + 1), persistent=False)
        self.lane_hidden: Tensor | None = None

    def reset_parameters(self, std: float | None = None) -> None:
        """The official code's initialisation (its default "compatibility mode"): uniform ±sqrt(6 / (fan_in +
        fan_out)) per gate block and for the item table, zero biases (`std` is not used)."""
        with torch.no_grad():
            for linear in [*self.encoder.x2h, *self.encoder.h2h]:
                linear.bias.zero_()
                for gate in linear.weight.chunk(3, 0):
                    bound = (6.0 / sum(gate.shape)) ** 0.5
                    gate.uniform_(-bound, bound)
            bound = (6.0 / (self.n_items + self.embedding.embedding_dim)) ** 0.5
            self.embedding.weight.uniform_(-bound, bound)
            self.item_bias.weight.zero_()

    def prepare(self, train) -> None:
        """Training click counts: the negative-sampling distribution and logQ's correction."""
        counts = np.bincount(np.asarray(train.sessions.items, dtype=np.int64), minlength=self.n_items + 1)
        self.item_counts = torch.as_tensor(counts[: self.n_items + 1], dtype=torch.float32,
                                           device=self.item_counts.device)

    def train_loader(self, train, batch_size: int, seed: int):
        """The trainer's batches: session-parallel steps (None: the suite's prefix mini-batches)."""
        if not self.session_parallel:
            return None
        return SessionParallelLoader(train, batch_size, self.item_counts.cpu().numpy(), self.n_sample,
                                     self.sample_alpha, seed)

    def session_repr(self, batch):
        # The item bias as one more embedding column, scored against a constant 1: s'·e'_v = sᵀe_v + b_v.
        s, items, enc = super().session_repr(batch)
        return (torch.cat([s, s.new_ones(len(s), 1)], 1), torch.cat([items, self.item_bias.weight[1:]], 1), enc)

    def get_extra_state(self):
        return self.lane_hidden if self.lane_hidden is not None else torch.zeros(0)

    def set_extra_state(self, state) -> None:
        self.lane_hidden = state.to(self.embedding.weight.device) if state.numel() else None

    def loss(self, batch) -> tuple[Tensor, dict]:
        if not isinstance(batch, SessionParallelBatch):
            return super().loss(batch)
        lanes, dim = batch.items.numel(), self.embedding.embedding_dim
        hidden = self.lane_hidden
        if hidden is None or hidden.shape[1] != lanes:
            hidden = self.embedding.weight.new_zeros(len(self.encoder.x2h), lanes, dim)
        hidden = hidden.to(self.embedding.weight.device).masked_fill(batch.reset[None, :, None], 0.0)
        out, hidden = self.encoder.step(self.embedding(batch.items), hidden)
        self.lane_hidden = hidden.detach()
        active = batch.active
        candidates = torch.cat([batch.targets[active], batch.samples])
        scores = out[active] @ self.embedding(candidates).t() + self.item_bias(candidates).t()  # [A, A + S]
        if self.loss_name == "cross-entropy":
            loss = self.sampled_cross_entropy(scores, candidates, int(active.sum()))
        else:
            loss = self.bpr_max(scores)
        return loss, {self.loss_name: loss.detach()}

    def sampled_cross_entropy(self, scores: Tensor, candidates: Tensor, n_targets: int) -> Tensor:
        if self.logq > 0:
            counts = self.item_counts[candidates].clamp_min(1.0)
            counts = torch.cat([counts[:n_targets], counts[n_targets:] ** self.sample_alpha])
            scores = scores - self.logq * counts.log()
        return F.cross_entropy(scores, torch.arange(len(scores), device=scores.device))

    def bpr_max(self, scores: Tensor) -> Tensor:
        if self.elu_param > 0:
            scores = F.elu(scores, self.elu_param)
        own = torch.eye(*scores.shape, dtype=torch.bool, device=scores.device)  # each lane's own target
        weights = torch.softmax(scores.masked_fill(own, -torch.inf), dim=1)
        target = scores.diagonal()[:, None]
        ranking = -torch.log((torch.sigmoid(target - scores) * weights).sum(1) + 1e-24)
        return (ranking + self.bpreg * (scores ** 2 * weights).sum(1)).mean()


@dataclass(frozen=True)
class GRU4RecConfig(TrainConfig):
    """GRU4Rec (the official PyTorch port's defaults): 1 layer of 100 units, cross-entropy with 2048 samples
    (alpha 0.5), batch 64, Adagrad lr 0.05, no dropout, 10 epochs."""

    dim: int = 100
    batch_size: int = 64
    lr: float = 0.05
    l2: float = 0.0
    lr_decay: float = 1.0
    epochs: int = 10
    optimizer: str = "adagrad"
    layers: int = 1
    session_parallel: bool = True
    loss: str = "cross-entropy"
    n_sample: int = 2048
    sample_alpha: float = 0.5
    logq: float = 0.0
    bpreg: float = 1.0
    elu_param: float = 0.5
    dropout_embed: float = 0.0
    dropout_hidden: float = 0.0


MODEL_PARAMS = ("session_parallel", "loss", "n_sample", "sample_alpha", "logq", "bpreg", "elu_param")

SPECS = {
    "gru4rec": ModelSpec(
        encoder=lambda n_items, cfg: GRU4RecEncoder(cfg["dim"], cfg["layers"], cfg["dropout_embed"],
                                                    cfg["dropout_hidden"]),
        readout=lambda cfg: LastStateReadout(),
        scorer=lambda cfg: DotScorer(),
        defaults=GRU4RecConfig(),
        model=lambda n_items, dim, encoder, readout, scorer, cfg: GRU4Rec(
            n_items, dim, encoder, readout, scorer, **{k: cfg[k] for k in MODEL_PARAMS}),
        # The official `paramspaces/gru4rec_{xe,bprmax}_standard_parspace.json` ranges (momentum aside), with
        # the loss and logQ (fixed per file there) searched too.
        space={"dim": space.Int(64, 512), "batch_size": space.Int(32, 256), "lr": space.Float(0.01, 0.25),
               "dropout_embed": space.Float(0.0, 0.5), "dropout_hidden": space.Float(0.0, 0.7),
               "sample_alpha": space.Float(0.0, 1.0), "loss": space.Choice(LOSSES), "logq": space.Choice((0.0, 1.0)),
               "bpreg": space.Float(0.0, 2.0), "elu_param": space.Choice((0.5, 1.0, 0.0))},
        doc="GRU4Rec (ICLR'16, CIKM'18): GRU over the clicks, session-parallel mini-batches, sampled "
            "cross-entropy or BPR-max",
    ),
}
