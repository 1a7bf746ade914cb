"""An example sbr-bench plugin package (see model.py and the README next to pyproject.toml)."""
