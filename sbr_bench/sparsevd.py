"""Sparse variational dropout (Molchanov et al., 2017) to measure how much of each module a model needs
(paper Section 3, Eq. 1-3, Figure 3).

`LinearSVDO` replaces an `nn.Linear`: weight θ and log σ² per weight, log α = log σ² − log θ²,
local reparameterisation in training (Eq. 1: output ~ N(xθᵀ + b, x²σ²ᵀ)), weights with log α ≥ threshold
masked at evaluation, and the standard approximation of the KL term (Eq. 2). `SparseVD(model)` converts
the model's `nn.Linear` modules in place — chosen by module path or by the model's declared Figure-2
weight groups — without touching the model's code, and reports the density ratio of each group (Eq. 3)
as kept/total over the whole group (count-weighted, not an average of per-layer ratios).
"""

from __future__ import annotations

import json
import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .errors import ConfigError, UserError

K1, K2, K3 = 0.63576, 1.87320, 1.48695  # Molchanov et al. (2017), Eq. 14

PRESETS = {
    # Textbook SparseVD: log σ² starts at −10 (dense), threshold 3 (dropout rate α/(1+α) ≈ 0.95),
    # KL weight 0.02 rising by 0.02 per epoch to 1, ELBO = CE_mean + w·KL/N_train.
    "textbook": dict(threshold=3.0, log_sigma2_init=-10.0, kl_scale="per_example", anneal_start=0.02,
                     anneal_step=0.02, anneal_every="epoch", weight_decay=None, decay_variational=False),
    # What the Atten-Mixer authors ran for Fig. 3 (reference doc §9.2): log σ ~ U(±1/√d) (σ ≈ 1, so
    # log α starts around 5.5-10 and the threshold is raised to 8), NLL × number of batches, KL weight
    # +0.02 per *batch*, weight decay 1e-4, batch 512. On small data, lower the batch size: with
    # StepLR(3, 0.1) the curves freeze after ~3 epochs, and the authors' effect took ~100+ steps.
    # In both presets the variational parameters (θ and log σ² of every converted layer) get no weight
    # decay: the KL term alone regularises them. An l2 on log σ² pulls it to 0 (σ = 1) and, at the
    # model's l2, outweighs the KL per weight, so it would decide which weights survive.
    # `decay_variational=True` (dissect --decay-variational-compat) decays them as the authors' code did.
    "atten_mixer_fig3": dict(threshold=8.0, log_sigma2_init="uniform", kl_scale="per_batch",
                             anneal_start=0.02, anneal_step=0.02, anneal_every="step", weight_decay=1e-4,
                             batch_size=512, decay_variational=False),
}


class LinearSVDO(nn.Module):
    def __init__(self, in_features, out_features, bias=True, threshold=3.0, log_sigma2_init=-10.0):
        super().__init__()
        self.in_features, self.out_features, self.threshold = in_features, out_features, threshold
        self.weight = nn.Parameter(torch.empty(out_features, in_features))
        self.log_sigma2 = nn.Parameter(torch.empty(out_features, in_features))
        self.bias = nn.Parameter(torch.zeros(out_features)) if bias else None
        nn.init.normal_(self.weight, 0.0, 0.02)
        self.reset_log_sigma2(log_sigma2_init)
        self.mask_at_eval = True

    def reset_log_sigma2(self, init) -> None:
        with torch.no_grad():
            if init == "uniform":  # the authors' quirk: log σ ~ U(±1/√d_in), so log σ² = 2 log σ
                bound = 1.0 / math.sqrt(self.in_features)
                self.log_sigma2.uniform_(-bound, bound).mul_(2.0)
            else:
                self.log_sigma2.fill_(float(init))

    @classmethod
    def from_linear(cls, linear: nn.Linear, **kwargs) -> "LinearSVDO":
        layer = cls(linear.in_features, linear.out_features, linear.bias is not None, **kwargs)
        layer = layer.to(linear.weight.device, linear.weight.dtype)
        with torch.no_grad():
            layer.weight.copy_(linear.weight)
            if linear.bias is not None:
                layer.bias.copy_(linear.bias)
        layer.weight.requires_grad_(linear.weight.requires_grad)
        return layer

    @property
    def log_alpha(self) -> Tensor:
        return torch.clamp(self.log_sigma2 - torch.log(self.weight**2 + 1e-16), -10.0, 10.0)

    def kept(self) -> Tensor:
        return self.log_alpha < self.threshold

    def forward(self, x: Tensor) -> Tensor:
        if self.training:
            mu = F.linear(x, self.weight, self.bias)
            var = F.linear(x * x, torch.exp(self.log_sigma2))
            return mu + torch.sqrt(var + 1e-8) * torch.randn_like(mu)
        weight = self.weight * self.kept() if self.mask_at_eval else self.weight
        return F.linear(x, weight, self.bias)

    def kl(self) -> Tensor:
        """KL(q || log-uniform prior), summed over weights (the constant −k1 dropped, as is usual)."""
        la = self.log_alpha
        neg_kl = K1 * torch.sigmoid(K2 + K3 * la) - 0.5 * F.softplus(-la)
        return -neg_kl.sum()

    def extra_repr(self) -> str:
        return f"{self.in_features}, {self.out_features}, bias={self.bias is not None}, threshold={self.threshold}"


def _replace(model: nn.Module, path: str, new: nn.Module) -> None:
    parent_path, _, attr = path.rpartition(".")
    parent = model.get_submodule(parent_path) if parent_path else model
    if isinstance(parent, (nn.ModuleList, nn.Sequential)):
        parent[int(attr)] = new
    else:
        setattr(parent, attr, new)


class SparseVD:
    """Convert `nn.Linear` modules of `model` in place and measure density per group.

    `groups`: {group: [module paths]}; default: the model's `weight_groups()` (paper Figure 2 split).
    `paths`: extra individual module paths, each its own group."""

    def __init__(self, model: nn.Module, groups: dict | None = None, paths=(), threshold=3.0,
                 log_sigma2_init=-10.0):
        self.model, self.threshold = model, threshold
        if groups is None:
            groups = model.weight_groups() if hasattr(model, "weight_groups") else {}
        groups = {g: list(p) for g, p in groups.items() if p}
        for p in paths:
            groups.setdefault(p, []).append(p)
        if not groups:
            raise ConfigError("paths", "SparseVD: nothing to convert (the model declares no weight groups and no "
                              "paths were given)")
        self.groups: dict[str, list[str]] = {}
        self.layers: dict[str, LinearSVDO] = {}
        for group, module_paths in groups.items():
            for path in module_paths:
                try:
                    module = model.get_submodule(path)
                except AttributeError:
                    raise UserError(f"SparseVD: the model has no module '{path}' (group {group})") from None
                if not isinstance(module, (nn.Linear, LinearSVDO)):
                    raise UserError(f"SparseVD: '{path}' is a {type(module).__name__}, not nn.Linear")
                if path not in self.layers:
                    layer = module if isinstance(module, LinearSVDO) else LinearSVDO.from_linear(
                        module, threshold=threshold, log_sigma2_init=log_sigma2_init)
                    _replace(model, path, layer)
                    self.layers[path] = layer
                self.groups.setdefault(group, []).append(path)

    def kl(self) -> Tensor:
        return sum(layer.kl() for layer in self.layers.values())

    @torch.no_grad()
    def counts(self) -> dict:
        """{group: (kept, total)} over all weights of the group's layers."""
        out = {}
        for group, paths in self.groups.items():
            kept = sum(int(self.layers[p].kept().sum()) for p in paths)
            total = sum(self.layers[p].weight.numel() for p in paths)
            out[group] = (kept, total)
        return out

    def density(self) -> dict:
        """Eq. 3 per group: kept / total weights (log α below the threshold)."""
        return {g: kept / total for g, (kept, total) in self.counts().items()}


def kl_weight(preset: dict, epoch: int, step: int) -> float:
    """Linear KL annealing, per epoch (textbook) or per step (the authors' Fig. 3 runs), capped at 1."""
    t = epoch if preset["anneal_every"] == "epoch" else step
    return min(1.0, preset["anneal_start"] + preset["anneal_step"] * t)


class SparseVDModel(nn.Module):
    """A model converted by `SparseVD`, trained with the variational objective and logging densities.

    It is a drop-in for the trainer (same `loss`, `session_repr`, `scorer`, `extra_graphs`, `prepare`,
    `train_loader`):
    `loss` = CE + w(t)·KL/N_train (textbook) or CE·n_batches + w(t)·KL (the authors' Fig. 3 scaling).
    The density of each group is appended to `density_path` (JSON lines) every `log_every` steps and
    whenever training switches to evaluation (end of each epoch), so the last trained state is recorded.
    The step counter is a buffer, so it is checkpointed and a resumed run continues the schedule. The record
    only grows with the step: before its first row or first weight load, a process drops the rows past
    the current step (an interrupted run wrote them after its checkpoint), and rows for steps already
    recorded are skipped (the trainer's final reload of the best weights also reloads their earlier step)."""

    def __init__(self, model, sparse: SparseVD, preset: dict, n_train: int, batches_per_epoch: int,
                 log_every: int = 50, density_path=None):
        super().__init__()
        self.model, self.sparse, self.preset = model, sparse, preset
        self.n_train, self.batches_per_epoch = n_train, max(1, batches_per_epoch)
        self.log_every, self.density_path = max(1, log_every), density_path
        self.register_buffer("step", torch.zeros((), dtype=torch.long))
        self.logged_step = None  # last step in density_path; None until the record is synced with the step

    trainable = True
    extra_graphs = property(lambda self: self.model.extra_graphs)
    scorer = property(lambda self: self.model.scorer)

    def prepare(self, train) -> None:
        self.model.prepare(train)

    def train_loader(self, train, batch_size: int, seed: int):
        """The wrapped model's own training batches (GRU4Rec's session-parallel steps), if it has them; the
        KL schedule then counts its steps per epoch."""
        own = getattr(self.model, "train_loader", None)
        loader = own(train, batch_size, seed) if own is not None else None
        if loader is not None:
            self.batches_per_epoch = max(1, len(loader))
        return loader

    def session_repr(self, batch):
        return self.model.session_repr(batch)

    def forward(self, batch):
        return self.model(batch)

    def weight_groups(self):
        return self.model.weight_groups()

    def no_weight_decay(self) -> set[str]:
        """Names of the variational parameters (θ, log σ²), which the KL term alone regularises."""
        if self.preset.get("decay_variational", False):
            return set()
        return {f"{path}.{name}" for path, module in self.named_modules() if isinstance(module, LinearSVDO)
                for name in ("weight", "log_sigma2")}

    def train(self, mode: bool = True):
        if self.training and not mode:  # the trainer evaluates after every epoch: record where training got to
            step = int(self.step)
            self.log_density(step, step // self.batches_per_epoch)
        return super().train(mode)

    def loss(self, batch):
        step = int(self.step)
        epoch = step // self.batches_per_epoch
        if step % self.log_every == 0:
            self.log_density(step, epoch)
        ce, parts = self.model.loss(batch)
        w = kl_weight(self.preset, epoch, step)
        kl = self.sparse.kl()
        if self.preset["kl_scale"] == "per_batch":
            total = ce * self.batches_per_epoch + w * kl
        else:
            total = ce + w * kl / self.n_train
        self.step += 1
        return total, dict(parts, kl=kl.detach(), kl_weight=torch.tensor(w))

    def load_state_dict(self, state_dict, *args, **kwargs):
        result = super().load_state_dict(state_dict, *args, **kwargs)
        self.sync_record()
        return result

    def sync_record(self) -> None:
        """Once per process: drop recorded rows past the current step, then remember the last step kept."""
        if self.logged_step is not None or self.density_path is None:
            return
        from .io import read_jsonl, write_text

        step, rows = int(self.step), read_jsonl(self.density_path)
        kept = [r for r in rows if r["step"] <= step]
        if len(kept) < len(rows):
            write_text(self.density_path, "".join(json.dumps(r, sort_keys=True) + "\n" for r in kept))
        self.logged_step = kept[-1]["step"] if kept else -1

    def log_density(self, step: int, epoch: int) -> dict:
        counts = self.sparse.counts()
        row = {"step": step, "epoch": epoch, "density": {g: k / t for g, (k, t) in counts.items()},
               "counts": {g: list(c) for g, c in counts.items()}}
        if self.density_path is not None:
            self.sync_record()
            if step > self.logged_step:
                from .io import append_jsonl

                append_jsonl(self.density_path, row)
                self.logged_step = step
        return row
