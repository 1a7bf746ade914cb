"""sbr-bench: a benchmark suite for session-based recommendation on PyTorch Geometric."""

__version__ = "0.1.0"
