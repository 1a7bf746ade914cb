"""`sessionmean`: the session vector is the mean of its (dropped-out) item embeddings, scored by dot
products against the item table. A deliberately small model that shows the whole plugin contract:

- an encoder class taking `(n_items, cfg)` and returning `Encoded` (one state per position);
- a readout factory taking `cfg` and returning a `Readout` (`Encoded` -> one vector per session);
- `register_model(name, readout=..., defaults=..., doc=...)` as the encoder's decorator.

Training settings (lr, l2, epochs, batch_size, ...) come from sbr-bench's defaults unless `defaults` sets
them; every key here can be overridden with `--set KEY=VALUE` or in an experiment file.
"""

from torch import nn
from torch_geometric.utils import scatter

from sbr_bench import register_model
from sbr_bench.models.base import Encoded, Encoder, Readout


class MeanReadout(Readout):
    """s = mean of the session's position states (PyG scatter over the packed positions)."""

    def forward(self, enc: Encoded, batch):
        return scatter(enc.h, enc.pos_batch, dim=0, dim_size=enc.num_sessions, reduce="mean")


@register_model("sessionmean", readout=lambda cfg: MeanReadout(), defaults=dict(dim=64, dropout=0.1, epochs=5),
                doc="example plugin: mean of the session's item embeddings, dot-product scores")
class ItemEncoder(Encoder):
    def __init__(self, n_items: int, cfg: dict):
        super().__init__()
        self.dropout = nn.Dropout(cfg["dropout"])

    def forward(self, batch, embedding) -> Encoded:
        h = self.dropout(embedding(batch.x))[batch.alias]
        return Encoded(h, batch.alias_batch, batch.last, batch.length)
