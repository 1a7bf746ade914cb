"""PyG-native building blocks: the encoders' propagation as `torch_geometric.nn.MessagePassing` layers and
the readouts as `torch_geometric.nn.aggr.Aggregation`s, usable in any PyG model."""

from .eopa_conv import EOPAConv
from .gated_session_conv import GatedSessionConv
from .readout_aggregation import ReadoutAggregation
from .sgat_conv import SGATConv

__all__ = ["EOPAConv", "GatedSessionConv", "ReadoutAggregation", "SGATConv"]
