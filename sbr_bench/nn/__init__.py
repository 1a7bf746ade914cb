"""PyG-native building blocks: sbr-bench's readouts as `torch_geometric.nn.aggr.Aggregation`s."""

from .readout_aggregation import ReadoutAggregation

__all__ = ["ReadoutAggregation"]
