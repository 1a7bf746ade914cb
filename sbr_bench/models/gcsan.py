"""GC-SAN (Xu et al., IJCAI 2019): SR-GNN's gated GNN, then k self-attention blocks over each session.

Encoder: `SRGNNEncoder` (see `srgnn.py`). Readout (`GCSANReadout`), on the session's positions
H = [h_1..h_n], k blocks of (paper Eq. 8-10; the Linears run on the packed positions, the attention on a
zero-padded [B, T] block with padding keys masked, and the last block only for the last click, whose
output is all that is read; `forward_dense` is the straightforward all-padded form, tests compare them):
    F = softmax(Q Kᵀ / √d_head) V,  Q = H W_Q, K = H W_K, V = H W_V   (separate q/k/v Linears; padding
                                                                       keys masked out)
    E = W_2 dropout(ReLU(W_1 F + b_1)) + b_2 + F                      (point-wise FFN with residual)
then S_f = ω F^(k)_n + (1 - ω) h_n (last position of the last block, mixed with the last GNN state), and
dot-product scores against the item table. Multi-head attention splits d into `heads` chunks (default 1
head, as the paper); there is no output projection (the paper has none).

Config keys (cfg) and compatibility flags:
- `blocks` (4): k, number of self-attention blocks — johnny12150/GC-SAN's default `k_blocks=4`
  (the paper varies k from 1 to 6);
- `heads` (1); `omega` (0.52, hard-coded in johnny12150/GC-SAN; RecBole-GNN uses 0.6);
- `ffn_dropout` (0.2): dropout inside the FFN, after the ReLU (johnny12150's `Residual` block);
- `share_blocks_compat` (False): one attention + FFN reused by all k blocks (johnny12150 shares them);
- `attn_unmasked_compat` (False): no padding mask, as johnny12150 (a comment there says the mask broke
  training). Padded positions are then zero vectors (the `to_dense_batch` fill) that every query attends
  to, so a session's scores depend on the longest session in its batch (not batch-invariant);
- plus the SR-GNN encoder keys `step`, `gate_flip_compat` (johnny12150 uses the flipped gate
  h' = h - z (h - n), so set it True to reproduce that code), `edge_count_weights`.
Defaults (johnny12150/GC-SAN pytorch_code/main.py): hidden 120, batch 50, lr 1e-3, decay 0.1 every 3
epochs, l2 1e-5, step 1, 30 epochs, patience 10.

Figure-2 weight groups: the SR-GNN encoder's groups; readout.query/key/value = each block's q/k/v
Linears; readout.transform = each block's FFN Linears. ω has no parameters.
"""

from __future__ import annotations

from dataclasses import dataclass
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch_geometric.utils import to_dense_batch

from .base import DotScorer, Encoded, Readout
from .config import TrainConfig
from .registry import ModelSpec
from . import space
from .srgnn import SRGNNEncoder


class SelfAttentionBlock(nn.Module):
    """Scaled dot-product self-attention (no residual around it, as the paper) + residual ReLU FFN."""

    def __init__(self, dim: int, heads: int = 1, ffn_dropout: float = 0.2):
        super().__init__()
        if dim % heads:
            raise ValueError(f"GC-SAN: dim={dim} is not divisible by heads={heads}")
        self.heads = heads
        self.q = nn.Linear(dim, dim)
        self.k = nn.Linear(dim, dim)
        self.v = nn.Linear(dim, dim)
        self.ffn_in = nn.Linear(dim, dim)
        self.ffn_out = nn.Linear(dim, dim)
        self.dropout = nn.Dropout(ffn_dropout)

    def attend(self, q: Tensor, k: Tensor, v: Tensor, key_mask: Tensor | None) -> Tensor:
        """softmax(Q Kᵀ/√d_head) V per head: q [B, Tq, d], k and v [B, T, d], key_mask [B, T] (True = real
        position) or None (attend to padding too) -> [B, Tq, d]. Fused (scaled_dot_product_attention)."""
        (B, Tq, d), T = q.shape, k.shape[1]

        def split(t, n):
            return t.view(B, n, self.heads, d // self.heads).transpose(1, 2)  # [B, H, n, dh]

        mask = None if key_mask is None else key_mask[:, None, None, :]
        f = F.scaled_dot_product_attention(split(q, Tq), split(k, T), split(v, T), attn_mask=mask)
        return f.transpose(1, 2).reshape(B, Tq, d)

    def ffn(self, f: Tensor) -> Tensor:
        return f + self.ffn_out(self.dropout(torch.relu(self.ffn_in(f))))

    def forward(self, x: Tensor, key_mask: Tensor | None) -> Tensor:
        """x [B, T, d] (dense); key_mask [B, T] (True = real position) or None (attend to padding too)."""
        return self.ffn(self.attend(self.q(x), self.k(x), self.v(x), key_mask))


class GCSANReadout(Readout):
    def __init__(self, dim: int, blocks: int = 4, heads: int = 1, omega: float = 0.52,
                 ffn_dropout: float = 0.2, share_blocks_compat: bool = False, attn_unmasked_compat: bool = False):
        super().__init__()
        n_modules = 1 if share_blocks_compat else blocks
        self.blocks = nn.ModuleList(SelfAttentionBlock(dim, heads, ffn_dropout) for _ in range(n_modules))
        self.n_blocks = int(blocks)
        self.omega = float(omega)
        self.attn_unmasked_compat = attn_unmasked_compat

    @classmethod
    def from_cfg(cls, cfg: dict) -> "GCSANReadout":
        return cls(cfg["dim"], cfg["blocks"], cfg["heads"], cfg["omega"], cfg["ffn_dropout"],
                   cfg["share_blocks_compat"], cfg["attn_unmasked_compat"])

    def forward(self, enc: Encoded, batch) -> Tensor:
        if self.attn_unmasked_compat:  # padding rows are attended to, so they must be computed too
            return self.forward_dense(enc)
        B, P = enc.num_sessions, enc.h.shape[0]
        # Masked attention only mixes a session's real positions, so every per-position layer runs on the
        # packed positions [P, d] and only the attention itself on a zero-padded [B, T] block.
        T = int(enc.length.max())
        slot = torch.arange(P, device=enc.h.device) - (enc.last - enc.length + 1)[enc.pos_batch]
        flat = enc.pos_batch * T + slot  # position -> row of the flattened [B, T] block
        key_mask = torch.zeros(B * T, dtype=torch.bool, device=enc.h.device).index_fill_(0, flat, True).view(B, T)

        def dense(t: Tensor) -> Tensor:
            return t.new_zeros(B * T, t.shape[-1]).index_copy(0, flat, t).view(B, T, -1)

        x = enc.h
        for i in range(self.n_blocks):
            block = self.blocks[i % len(self.blocks)]
            k, v = dense(block.k(x)), dense(block.v(x))
            if i < self.n_blocks - 1:
                x = block.ffn(block.attend(dense(block.q(x)), k, v, key_mask).reshape(B * T, -1)[flat])
            else:  # the last block's output is only read at the last click: one query per session
                x = block.ffn(block.attend(block.q(x[enc.last])[:, None], k, v, key_mask)[:, 0])
        f_last = x if self.n_blocks else enc.last_h
        return self.omega * f_last + (1 - self.omega) * enc.last_h

    def forward_dense(self, enc: Encoded) -> Tensor:
        """All blocks on the zero-padded [B, T, d] block (the straightforward form; the unmasked compat path)."""
        B = enc.num_sessions
        x, mask = to_dense_batch(enc.h, enc.pos_batch, batch_size=B)  # [B, T, d], [B, T]
        key_mask = None if self.attn_unmasked_compat else mask
        for i in range(self.n_blocks):
            x = self.blocks[i % len(self.blocks)](x, key_mask)
        f_last = x[torch.arange(B, device=x.device), enc.length - 1]
        return self.omega * f_last + (1 - self.omega) * enc.last_h

    def weight_groups(self):
        groups: dict[str, list[str]] = {}
        for i in range(len(self.blocks)):
            for group, name in (("readout.query", "q"), ("readout.key", "k"), ("readout.value", "v"),
                                ("readout.transform", "ffn_in"), ("readout.transform", "ffn_out")):
                groups.setdefault(group, []).append(f"blocks.{i}.{name}")
        return groups


@dataclass(frozen=True)
class GCSANConfig(TrainConfig):
    """GC-SAN (paper §5): d = 120, batch 50, k = 4 blocks, ω = 0.52; the rest as SR-GNN."""

    dim: int = 120
    batch_size: int = 50
    dropout: float = 0.0
    patience: int = 10
    step: int = 1
    gate_flip_compat: bool = False
    edge_count_weights: bool = False
    blocks: int = 4
    heads: int = 1
    omega: float = 0.52
    ffn_dropout: float = 0.2
    share_blocks_compat: bool = False
    attn_unmasked_compat: bool = False


SPECS = {
    "gcsan": ModelSpec(
        encoder=lambda n_items, cfg: SRGNNEncoder.from_cfg(cfg),
        readout=GCSANReadout.from_cfg,
        scorer=lambda cfg: DotScorer(),
        defaults=GCSANConfig(),
        readout_params=("blocks", "heads", "omega", "ffn_dropout", "share_blocks_compat", "attn_unmasked_compat"),
        # GC-SAN's sensitivity study varies the number of blocks and the weight ω (0-1).
        space={"dim": space.dims(120), "lr": space.LR, "l2": space.L2, "step": space.Int(1, 3),
               "blocks": space.Int(1, 6), "omega": space.Float(0.0, 1.0)},
        doc="GC-SAN: SR-GNN gated GNN, k self-attention blocks, S_f = ω F_n + (1-ω) h_n, dot scores",
    ),
}
