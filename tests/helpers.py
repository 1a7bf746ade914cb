"""Shared test helpers: short training through the suite's own trainer and evaluator."""

import tempfile

import torch

from sbr_bench.evaluate import evaluate
from sbr_bench.models.registry import build_model
from sbr_bench.runs import Run
from sbr_bench.training import train_model


def test_hr20(model, dataset) -> float:
    """Pessimistic test HR@20 (ties rank ahead of the target), in [0, 1]."""
    return evaluate(model, dataset.test, dataset.n_items).metrics_pessimistic["HR@20"] / 100.0


test_hr20.__test__ = False  # a helper, not a test


def trained_hr20(name, dataset, epochs, seed=0, **overrides) -> float:
    """Train `name` for `epochs` (selection on validation, as in real runs) and return its test HR@20."""
    torch.manual_seed(seed)
    model, cfg = build_model(name, dataset.n_items, dict(overrides, epochs=epochs, patience=epochs))
    with tempfile.TemporaryDirectory() as tmp:
        train_model(model, dataset, cfg, Run(tmp, name, seed), seed=seed, progress=False)
    return test_hr20(model, dataset)


def popularity_hr20(dataset) -> float:
    pop, _ = build_model("pop", dataset.n_items)
    pop.fit(dataset.train)
    return test_hr20(pop, dataset)


def assert_batching_invariant(model, split, n_items, every: int = 11) -> None:
    """Eval-mode scores of examples scored together equal those scored one at a time."""
    import numpy as np

    from sbr_bench.data.graphs import collate_examples

    model.eval()
    index = np.arange(0, len(split), every)
    with torch.no_grad():
        together = model(collate_examples(split, index, n_items))
        alone = torch.cat([model(collate_examples(split, [i], n_items)) for i in index[:20]])
    torch.testing.assert_close(together[:20], alone, atol=1e-5, rtol=1e-5)


def assert_gradients_reach_every_parameter(model, split, n_items) -> None:
    import numpy as np

    from sbr_bench.data.graphs import collate_examples

    model.train()
    loss, _ = model.loss(collate_examples(split, np.arange(200), n_items))
    loss.backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, name


def assert_weight_groups_cover_every_linear(model) -> dict:
    """The model's Figure-2 weight groups list exactly its nn.Linear layers; returns the groups."""
    groups = model.weight_groups()
    listed = {p for paths in groups.values() for p in paths}
    assert listed == {n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)}
    return groups
