"""NextItNet (Yuan et al., WSDM 2019): a stack of residual blocks of dilated causal 1-D convolutions over the
item embeddings of a session; the state at the last click scores every item by dot product.

Residual block (the authors' TensorFlow code, `nextitnet_residual_block`): dilated causal convolution
(dilation r) -> LayerNorm -> ReLU -> dilated causal convolution (dilation 2r) -> LayerNorm -> ReLU, added
to the block's input. Causal: each position sees only itself and earlier clicks of its session (zeros
before the start), so a prefix's states do not depend on what follows it; sessions stay packed.

Defaults from RecBole's NextItNet configuration: d = 64, kernel width 3, 5 repetitions of the dilations
(1, 4) (10 blocks), L2 1e-5. The original trains every position of a session at once (sequence to
sequence); here, as for every model of the suite, each prefix is one example with its next click as the
target, which gives the same training pairs.

Figure-2 weight groups (no graph, the convolutions take the GNN's slot): gnn.propagation = every
convolution (a `Linear` over the k shifted copies of its input).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ..errors import ConfigError
from . import space
from .base import DotScorer, Encoded, Encoder, Readout
from .config import TrainConfig
from .registry import ModelSpec


class CausalConv(nn.Module):
    """A dilated causal 1-D convolution over packed sessions [P, d]: y_t = b + Σ_j W_j x_{t - (k-1-j) r},
    positions before the session's start being zero. One matrix product over the k shifted copies of x (a
    `Linear` of k·d inputs, which SparseVD can wrap). The shifted copies are gathers from packed positions
    (`causal_taps`), so the work is proportional to the clicks of the batch, not to batch x longest session
    as on a padded [B, L, d] tensor (several times more on Diginetica, whose sessions are mostly short)."""

    def __init__(self, dim: int, kernel_size: int, dilation: int):
        super().__init__()
        self.shifts = [(kernel_size - 1 - j) * dilation for j in range(kernel_size)]
        self.linear = nn.Linear(kernel_size * dim, dim)

    def forward(self, x: Tensor, taps: dict[int, Tensor]) -> Tensor:
        padded = torch.cat([x, x.new_zeros(1, x.shape[1])])  # row P: the zero before every session's start
        return self.linear(torch.cat([x if s == 0 else padded.index_select(0, taps[s]) for s in self.shifts], -1))


def causal_taps(offset: Tensor, shifts) -> dict[int, Tensor]:
    """For each shift s, the packed index of position t - s of the same session, or P (a zero row) where
    that falls before the session's start; `offset` [P] is each position's place in its session."""
    index = torch.arange(offset.numel(), device=offset.device)
    return {s: torch.where(offset >= s, index - s, offset.numel()) for s in shifts if s}


class ResidualBlock(nn.Module):
    def __init__(self, dim: int, kernel_size: int, dilation: int):
        super().__init__()
        self.conv1, self.conv2 = CausalConv(dim, kernel_size, dilation), CausalConv(dim, kernel_size, 2 * dilation)
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)

    def forward(self, x: Tensor, taps: dict[int, Tensor]) -> Tensor:  # [P, d] packed sessions
        h = torch.relu(self.norm1(self.conv1(x, taps)))
        return x + torch.relu(self.norm2(self.conv2(h, taps)))


def parse_dilations(text: str) -> list[int]:
    try:
        rates = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        rates = []
    if not rates or min(rates) < 1:
        raise ConfigError("overrides.dilations", "expected comma-separated whole numbers >= 1, e.g. 1,4", text)
    return rates


class NextItNetEncoder(Encoder):
    def __init__(self, dim: int, kernel_size: int = 3, blocks: int = 5, dilations: str = "1,4"):
        super().__init__()
        if kernel_size < 1 or blocks < 1:
            raise ConfigError("overrides.blocks" if blocks < 1 else "overrides.kernel_size", "must be at least 1",
                              blocks if blocks < 1 else kernel_size)
        self.blocks = nn.ModuleList(ResidualBlock(dim, kernel_size, r) for _ in range(blocks)
                                    for r in parse_dilations(dilations))

    def weight_groups(self):
        return {"gnn.propagation": [f"blocks.{i}.conv{c}.linear" for i in range(len(self.blocks)) for c in (1, 2)]}

    def forward(self, batch, embedding) -> Encoded:
        x = embedding(batch.x)[batch.alias]  # [P, d], sessions one after another in click order
        start = batch.last - batch.length + 1
        offset = torch.arange(x.shape[0], device=x.device) - start[batch.alias_batch]
        taps = causal_taps(offset, {s for block in self.blocks for conv in (block.conv1, block.conv2)
                                    for s in conv.shifts})
        for block in self.blocks:
            x = block(x, taps)
        return Encoded(x, batch.alias_batch, batch.last, batch.length)


class LastStateReadout(Readout):
    """The session is its last click's state."""

    def forward(self, enc: Encoded, batch) -> Tensor:
        return enc.last_h


@dataclass(frozen=True)
class NextItNetConfig(TrainConfig):
    """NextItNet (RecBole's configuration): d = 64, kernel 3, 5 x dilations (1, 4), L2 1e-5, no learning-rate
    decay."""

    dim: int = 64
    lr_decay: float = 1.0
    kernel_size: int = 3
    blocks: int = 5
    dilations: str = "1,4"


SPECS = {
    "nextitnet": ModelSpec(
        encoder=lambda n_items, cfg: NextItNetEncoder(cfg["dim"], cfg["kernel_size"], cfg["blocks"], cfg["dilations"]),
        readout=lambda cfg: LastStateReadout(),
        scorer=lambda cfg: DotScorer(),
        defaults=NextItNetConfig(),
        space={"dim": space.dims(64), "lr": space.LR, "l2": space.L2, "blocks": space.Int(1, 8),
               "dilations": space.Choice(("1,2", "1,4", "1,2,4,8"))},
        doc="NextItNet (WSDM'19): residual blocks of dilated causal convolutions over the session, last state",
    ),
}
