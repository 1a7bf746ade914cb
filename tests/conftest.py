import os
from pathlib import Path

import pytest
import torch

torch.set_num_threads(1)  # the CI machine has 2 cores; keep tests predictable

SHARED = Path(os.environ.get("SBR_BENCH_SHARED", Path(__file__).resolve().parents[1].parent / "shared"))
SHARED_DATA = SHARED / "datasets"


def shared_path(rel: str) -> Path:
    """A file or folder under ../shared/datasets, or skip the test with the reason."""
    p = SHARED_DATA / rel
    if not p.exists():
        pytest.skip(f"needs the shared real datasets ({p} is absent; a user's clone has no ../shared)")
    return p


@pytest.fixture(scope="session")
def tiny():
    from sbr_bench.data.synthetic import synthetic_dataset

    return synthetic_dataset("tiny", seed=0)


try:  # Hypothesis profiles (tests/test_fuzz_readers.py): few examples by default, many with SBR_FUZZ=1
    from hypothesis import settings

    settings.register_profile("default", max_examples=25, deadline=None)
    settings.register_profile("fuzz", max_examples=1000, deadline=None)
    settings.load_profile("fuzz" if os.environ.get("SBR_FUZZ") == "1" else "default")
except ImportError:
    pass
