import math

import pytest
import torch
from torch import nn

from sbr_bench.errors import UserError
from sbr_bench.sparsevd import K1, K2, K3, LinearSVDO, SparseVD, kl_weight, PRESETS


def test_log_alpha_and_density_on_known_values():
    layer = LinearSVDO(2, 2, threshold=3.0)
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([[1.0, 0.1], [0.01, 2.0]]))
        # log α = log σ² − log θ²: choose log σ² so that log α = [[0, 4], [5, -1]]
        target = torch.tensor([[0.0, 4.0], [5.0, -1.0]])
        layer.log_sigma2.copy_(target + torch.log(layer.weight**2))
    assert torch.allclose(layer.log_alpha, target, atol=1e-5)
    assert layer.kept().tolist() == [[True, False], [False, True]]
    layer.eval()
    x = torch.tensor([[1.0, 1.0]])
    assert torch.allclose(layer(x), torch.tensor([[1.0, 2.0]]) + layer.bias)


def test_kl_matches_molchanov_approximation():
    layer = LinearSVDO(1, 1)
    la = 1.5
    with torch.no_grad():
        layer.weight.fill_(0.5)
        layer.log_sigma2.fill_(la + math.log(0.25))
    expected = -(K1 / (1 + math.exp(-(K2 + K3 * la))) - 0.5 * math.log1p(math.exp(-la)))
    assert layer.kl().item() == pytest.approx(expected, rel=1e-5)


def test_local_reparameterisation_mean_and_variance():
    torch.manual_seed(0)
    layer = LinearSVDO(3, 1)
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([[1.0, -2.0, 0.5]]))
        layer.log_sigma2.fill_(math.log(0.04))
    x = torch.tensor([[1.0, 2.0, 3.0]]).expand(20000, 3)
    out = layer.train()(x)
    assert out.mean().item() == pytest.approx(-1.5, abs=0.01)
    assert out.var().item() == pytest.approx(0.04 * (1 + 4 + 9), rel=0.05)


class Toy(nn.Module):
    def __init__(self):
        super().__init__()
        self.enc = nn.Sequential(nn.Linear(4, 4), nn.ReLU())
        self.q = nn.Linear(4, 3, bias=False)
        self.k = nn.Linear(4, 3)

    def weight_groups(self):
        return {"gnn.propagation": ["enc.0"], "readout.query": ["q", "k"]}

    def forward(self, x):
        h = self.enc(x)
        return self.q(h) + self.k(h)


def test_wrapper_converts_in_place_and_keeps_function():
    torch.manual_seed(0)
    model = Toy()
    x = torch.randn(5, 4)
    before = model(x)
    svd = SparseVD(model)
    assert isinstance(model.enc[0], LinearSVDO) and isinstance(model.q, LinearSVDO)
    model.eval()  # log σ² = −10 keeps every weight, so the function is unchanged
    assert torch.allclose(model(x), before, atol=1e-6)
    assert svd.density() == {"gnn.propagation": 1.0, "readout.query": 1.0}
    with torch.no_grad():  # prune all of q: the group density is count-weighted over q and k
        model.q.log_sigma2.fill_(10.0)
    kept, total = svd.counts()["readout.query"]
    assert (kept, total) == (12, 24) and svd.density()["readout.query"] == 0.5
    assert svd.kl().requires_grad


def test_wrapper_errors_name_the_module():
    with pytest.raises(UserError, match="no module 'nope'"):
        SparseVD(Toy(), groups={"g": ["nope"]})
    with pytest.raises(UserError, match="not nn.Linear"):
        SparseVD(Toy(), groups={"g": ["enc.1"]})


def test_presets_and_annealing():
    assert kl_weight(PRESETS["textbook"], epoch=0, step=500) == pytest.approx(0.02)
    assert kl_weight(PRESETS["textbook"], epoch=10, step=0) == pytest.approx(0.22)
    assert kl_weight(PRESETS["atten_mixer_fig3"], epoch=0, step=100) == 1.0
    layer = LinearSVDO(256, 4, log_sigma2_init="uniform")
    assert layer.log_sigma2.abs().max() <= 2 / 16 + 1e-6
