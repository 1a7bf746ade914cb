"""The fused scoring products (scoring.py) against the straightforward formulas: values and gradients,
with and without dropout (the same seed draws the same mask, applied here by hand), centring, rows at
the norm clamp, a tail slice of a table (the item embedding without its padding row) and the `out=`
evaluation path; the three scorers that use it; the dropout mask's rate and its independence of the
chunk size."""

import pytest
import torch
import torch.nn.functional as F

from sbr_bench.models.attenmixer import ItemNormScorer
from sbr_bench.models.base import CosineScorer, DotScorer
from sbr_bench.models.scoring import keep_mask, normalised_scores, table_scores
from sbr_bench.models.sgnnhn import LayerNormScorer


def dropout_by_hand(x, p, training=True):
    """nn.Dropout with the mask keep_mask draws (call under the same seed as the code under test)."""
    if not training or p == 0:
        return x
    if p >= 1:
        return x * 0
    return x * keep_mask(x.shape, p) / (1 - p)


def straightforward(s, items, sigma, centre, dropout, training):
    table = items - items.mean(-1, keepdim=True) if centre else items
    table = dropout_by_hand(F.normalize(table, dim=-1), dropout, training)
    return sigma * s @ table.t()


def inputs(seed, centre, n=30, d=8, b=5):
    g = torch.Generator().manual_seed(seed)
    s = torch.randn(b, d, generator=g)
    items = torch.randn(n, d, generator=g) * 3 + 1  # an offset, so that centring matters
    items[4] = 0.0 if not centre else 2.5  # a row whose (centred) norm is at the clamp
    return s.requires_grad_(), items.requires_grad_()


@pytest.mark.parametrize("batch", [5, 12])  # B <= d and B > d: the backward scales on either side
@pytest.mark.parametrize("centre", [False, True])
@pytest.mark.parametrize("dropout,training", [(0.0, True), (0.3, True), (0.3, False), (1.0, True)])
def test_fused_scores_and_gradients_match_the_formula(centre, dropout, training, batch):
    s, items = inputs(0, centre, b=batch)
    upstream = torch.randn(s.shape[0], items.shape[0], generator=torch.Generator().manual_seed(1))
    results = []
    for fn in (normalised_scores, straightforward):
        torch.manual_seed(7)  # the same dropout mask for both
        out = fn(s, items, 12.0, centre, dropout, training)
        gs, gi = torch.autograd.grad((out * upstream).sum(), (s, items))
        results.append((out, gs, gi))
    (got, gs, gi), (want, ws, wi) = results
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(gs, ws, rtol=1e-4, atol=1e-5)
    # row 4, at the norm clamp, has an enormous (1/eps) gradient in both: compare it relatively, apart
    rest = torch.arange(len(wi)) != 4
    torch.testing.assert_close(gi[rest], wi[rest], rtol=1e-4, atol=1e-5 * float(wi[rest].abs().max()))
    torch.testing.assert_close(gi[4], wi[4], rtol=1e-4, atol=1e-5 * float(wi[4].abs().max()))
    if dropout and training:  # the mask was applied (and dropout 1 zeroes every score, like nn.Dropout)
        assert not torch.allclose(got, normalised_scores(s, items, 12.0, centre))
        assert (dropout == 1.0) == bool((got == 0).all())


def test_out_buffer_gives_the_same_scores_without_grad():
    s, items = inputs(2, centre=False)
    with torch.no_grad():
        want = normalised_scores(s, items, 12.0)
        buf = torch.empty(s.shape[0], items.shape[0])
        got = normalised_scores(s, items, 12.0, out=buf)
    assert got.data_ptr() == buf.data_ptr()
    torch.testing.assert_close(got, want)
    with pytest.raises(RuntimeError, match="without gradients"):
        normalised_scores(s, items, 12.0, out=buf)


@pytest.mark.parametrize("scorer,reference", [
    (CosineScorer(12.0, item_dropout=0.2),
     lambda s, v: 12.0 * F.normalize(s, dim=-1) @ dropout_by_hand(F.normalize(v, dim=-1), 0.2).t()),
    (ItemNormScorer(12.0, item_dropout=0.2),
     lambda s, v: 12.0 * s @ dropout_by_hand(F.normalize(v, dim=-1), 0.2).t()),
    (LayerNormScorer(12.0),
     lambda s, v: 12.0 * LayerNormScorer.normalise(s) @ LayerNormScorer.normalise(v).t()),
])
def test_scorers_in_training_match_their_formulas(scorer, reference):
    s, items = inputs(3, centre=False)
    scorer.train()
    torch.manual_seed(11)
    got = scorer(s, items)
    g_got = torch.autograd.grad(got.logsumexp(-1).sum(), (s, items))
    torch.manual_seed(11)
    want = reference(s, items)
    g_want = torch.autograd.grad(want.logsumexp(-1).sum(), (s, items))
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    rest = torch.arange(len(items)) != 4  # row 4 is at the norm clamp (see inputs)
    for a, b in zip(g_got, g_want):
        a, b = (a[rest], b[rest]) if a.shape == items.shape else (a, b)
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5 * float(b.abs().max()))


def test_keep_mask_rate_and_chunking():
    torch.manual_seed(3)
    mask = keep_mask((1000, 1000), 0.1)
    assert mask.dtype == torch.float32 and mask.shape == (1000, 1000)
    assert set(mask.unique().tolist()) == {0.0, 1.0}
    dropped = 1 - mask
    assert abs(dropped.mean().item() - 0.1) < 5 * (0.1 * 0.9 / 1e6) ** 0.5  # 5 binomial sd
    assert abs(dropped.mean(0) - 0.1).max() < 0.06  # no column is special (1000 draws each)
    lanes = dropped.view(-1, 4).mean(0)  # each of a draw's four 16-bit lanes (incl. the sign's) is fair
    assert (lanes - 0.1).abs().max() < 5 * (0.1 * 0.9 / 2.5e5) ** 0.5
    for chunk in (1, 7, 1000, 1 << 22):  # words are drawn in order, so the chunking changes nothing
        torch.manual_seed(4)
        other = keep_mask((37, 29), 0.3, chunk=chunk)
        torch.manual_seed(4)
        assert torch.equal(other, keep_mask((37, 29), 0.3))


@pytest.mark.parametrize("scores", ["dot", "normalised", "centred+dropout"])
def test_a_tail_slice_of_the_table_gets_the_gradient_of_the_slice(scores):
    """Scoring rows 1.. of a table (the item embedding without its padding row) reads the table itself;
    its gradient equals autograd's through the slice, zero in row 0, also beside another use of the
    table (the encoder's lookups)."""
    g = torch.Generator().manual_seed(5)
    table = torch.randn(31, 8, generator=g).requires_grad_()
    s = torch.randn(4, 8, generator=g).requires_grad_()
    lookups = torch.tensor([3, 0, 3, 17])
    fn = {"dot": lambda s, v: table_scores(s, v),
          "normalised": lambda s, v: normalised_scores(s, v, 12.0),
          "centred+dropout": lambda s, v: normalised_scores(s, v, 12.0, centre=True, dropout=0.3, training=True)}[scores]
    results = []
    for items in (table[1:], table[1:].clone()):  # the slice, and a copy autograd pads back
        torch.manual_seed(9)
        out = fn(s + table[lookups], items)
        results.append((out, *torch.autograd.grad(out.logsumexp(-1).sum(), (s, table))))
    for got, want in zip(*results):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    assert float(results[0][2][0].abs().sum()) > 0  # row 0 was looked up, so it has a gradient


def test_only_tail_slices_of_contiguous_tables_count():
    from sbr_bench.models.scoring import tail_of

    table = torch.randn(10, 4, requires_grad=True)
    assert tail_of(table[1:])[0] is table and tail_of(table[1:])[1] == 1
    with torch.no_grad():
        detached = table[1:]  # a view autograd does not track: no gradient may reach the table through it
    constant = torch.randn(10, 4)
    leaf_view = constant[1:].requires_grad_()  # the gradient belongs to the view itself
    for items in (table, table[:-1], table[1:-1], table[:, 1:], table.t()[1:], table[1:].clone(), detached,
                  constant[1:], leaf_view):
        got, first = tail_of(items)
        assert got is items and first == 0


@pytest.mark.parametrize("item_major", [False, True])
def test_cross_entropy_matches_torch_and_refuses_a_second_backward(item_major):
    from sbr_bench.models.scoring import cross_entropy

    g = torch.Generator().manual_seed(6)
    scores = torch.randn(50, 7, generator=g, dtype=torch.float64)
    scores = ((scores.t() if item_major else scores.reshape(7, 50)) * 8).requires_grad_()
    target = torch.tensor([0, 49, 3, 3, 17, 0, 25])
    got = cross_entropy(scores, target)
    want = F.cross_entropy(scores, target)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    upstream = torch.tensor(1.7, dtype=torch.float64)  # a scaled loss (DDP, SparseVD) scales the gradient
    (g_got,) = torch.autograd.grad(got, scores, upstream, retain_graph=True)
    (g_want,) = torch.autograd.grad(want, scores, upstream)
    torch.testing.assert_close(g_got, g_want, rtol=1e-12, atol=1e-12)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        torch.autograd.grad(got, scores)
    with torch.no_grad():
        torch.testing.assert_close(cross_entropy(scores, target), want.detach())


@pytest.mark.parametrize("n", [1, 15, 16, 17, 50, 333])
def test_row_max_of_item_major_scores_is_amax(n):
    from sbr_bench.models.scoring import _row_max

    g = torch.Generator().manual_seed(n)
    s, items = torch.randn(9, 8, generator=g, requires_grad=True), torch.randn(n, 8, generator=g)
    scores = table_scores(s, items)  # in training: item-major, the layout whose row max is done in blocks
    assert scores.shape == (9, n) and scores.t().is_contiguous()
    for x in (scores.detach(), scores.detach().contiguous()):
        assert torch.equal(_row_max(x), x.amax(dim=1, keepdim=True))


@pytest.mark.parametrize("scorer", [DotScorer(), CosineScorer(12.0), ItemNormScorer(12.0), LayerNormScorer(12.0)])
def test_bf16_scoring_products_round_like_bfloat16_and_stay_float32(scorer):
    s, items = inputs(8, centre=False, n=200, d=64, b=6)
    table = torch.cat([torch.zeros(1, 64), items.detach()]).requires_grad_()  # row 0 = padding
    results = {}
    for precision in ("fp32", "bf16"):
        scorer.precision = precision
        out = scorer(s, table[1:])
        results[precision] = (out, *torch.autograd.grad(out.logsumexp(-1).sum(), (s, table)))
    scorer.precision = "fp32"
    for fp32, bf16 in zip(results["fp32"], results["bf16"]):
        assert bf16.dtype == torch.float32
        assert not torch.equal(fp32, bf16)  # the products did run in bfloat16 ...
        scale = float(fp32.detach().abs().max())  # ... whose 8-bit mantissa leaves about 2-3 significant digits
        torch.testing.assert_close(bf16, fp32, rtol=0, atol=0.05 * scale)
    scores = results["bf16"][0].detach()  # float32 results, not bfloat16 ones (which would tie in the ranking)
    assert (scores != scores.bfloat16().float()).float().mean() > 0.5
    with torch.no_grad():
        scorer.precision = "bf16"
        buf = torch.empty(6, 200)
        assert torch.equal(scorer(s, items, out=buf), scorer(s, items)) and scorer(s, items, out=buf).data_ptr() == buf.data_ptr()
        scorer.precision = "fp32"


def test_precision_is_a_checked_model_setting():
    from sbr_bench.errors import ConfigError
    from sbr_bench.models.registry import build_model

    model, cfg = build_model("srgnn", 30, {"precision": "bf16"})
    assert cfg["precision"] == "bf16" and model.scorer.precision == "bf16"
    assert build_model("srgnn", 30, {})[0].scorer.precision == "fp32"
    with pytest.raises(ConfigError, match="fp32, tf32, bf16"):
        build_model("attenmixer", 30, {"precision": "fp16"})


def test_tf32_switch_sets_and_restores_torchs_own_setting():
    """The CUDA products' TF32 switch goes through `fp32_precision` (where torch has it), so a user's own
    setting of it is restored and never mixed with the legacy flag (torch raises on the mix)."""
    from sbr_bench.models.scoring import _tf32

    matmul = torch.backends.cuda.matmul
    if not hasattr(matmul, "fp32_precision"):
        pytest.skip(f"torch {torch.__version__} has only the legacy allow_tf32 flag")
    before = matmul.fp32_precision
    try:
        for user in ("none", "tf32", "ieee"):
            matmul.fp32_precision = user
            for on, inside in ((True, "tf32"), (False, "ieee")):
                with _tf32(on):
                    assert matmul.fp32_precision == inside
                assert matmul.fp32_precision == user
    finally:
        matmul.fp32_precision = before
