"""NISER+ (Gupta et al., 2019: normalised item and session representations, against popularity bias): SR-GNN
with L2-normalised item embeddings (dropped out, 0.1) as the GNN's input, learned position embeddings added
to the per-click states before SR-GNN's attention readout, and scores σ·cos(s, e_v) against the normalised
item table (σ = 16, the best value on RecBole-GNN's Diginetica leaderboard).

Sources: the paper; RecBole-GNN `niser.py` (positions counted from the session start, as here). RecBole
drops out the embeddings before normalising them; we normalise first and then drop out (the suite's
`input_norm`/`input_dropout`, as in the "w/ Atten-Mixer" compositions). SR-GNN's training defaults
(d 100, Adam lr 1e-3, l2 1e-5, decay 0.1 every 3 epochs).

Figure-2 weight groups: SR-GNN's (gated GNN, attention readout); the position table is an embedding.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from . import space
from .base import CosineScorer, Encoded
from .registry import ModelSpec
from .srgnn import SRGNNConfig, SRGNNEncoder, SRGNNReadout


class NISERReadout(SRGNNReadout):
    """SR-GNN's readout over the per-click states plus a learned embedding of each click's position."""

    def __init__(self, dim: int, max_positions: int = 200, nonhybrid: bool = False):
        super().__init__(dim, nonhybrid)
        self.positions = nn.Embedding(max_positions, dim)

    def forward(self, enc: Encoded, batch) -> Tensor:
        start = torch.zeros(enc.num_sessions + 1, dtype=torch.long, device=enc.h.device)
        start[1:] = torch.cumsum(enc.length, 0)
        position = torch.arange(enc.h.size(0), device=enc.h.device) - start[enc.pos_batch]
        position = position.clamp(max=self.positions.num_embeddings - 1)  # longer sessions share the last one
        return super().forward(dataclasses.replace(enc, h=enc.h + self.positions(position)), batch)


@dataclass(frozen=True)
class NISERConfig(SRGNNConfig):
    """NISER+: SR-GNN's settings with normalised, dropped-out inputs, position embeddings and σ = 16."""

    input_norm: str = "l2"
    input_dropout: float = 0.1
    max_positions: int = 200
    sigma: float = 16.0


SPECS = {
    "niser": ModelSpec(
        encoder=lambda n_items, cfg: SRGNNEncoder.from_cfg(cfg),
        readout=lambda cfg: NISERReadout(cfg["dim"], cfg["max_positions"], cfg["nonhybrid"]),
        scorer=lambda cfg: CosineScorer(sigma=float(cfg["sigma"])),
        defaults=NISERConfig(),
        readout_params=("max_positions", "nonhybrid", "sigma"),
        space={"dim": space.dims(100), "lr": space.LR, "l2": space.L2, "step": space.Int(1, 3),
               "sigma": space.Float(4.0, 24.0), "input_dropout": space.Float(0.0, 0.5)},
        doc="NISER+: SR-GNN on normalised item embeddings, position embeddings, σ·cosine scores",
    ),
}
