"""Model names -> how to build them, with every model's defaults in one place (its module's SPECS).

- `build_model("srgnn", n_items)` builds a named model with its paper/reference defaults;
- `build_model("srgnn+attenmixer", n_items)` composes SR-GNN's encoder with Atten-Mixer's readout and
  scorer (paper Table 3): training defaults come from the encoder's model, readout parameters from
  the readout's model;
- `resolve_names("all")` lists every named model; `"table3"` lists the compositions of paper Table 3.

Each model module defines `SPECS = {name: ModelSpec(...) or BaselineSpec(...)}`.
"""

from __future__ import annotations

import importlib
import math
from dataclasses import dataclass, field
from typing import Callable

from ..errors import UserError

# Training defaults shared by the reference code bases (SR-GNN lineage); each spec overrides its own.
TRAIN_DEFAULTS = dict(
    dim=100, batch_size=100, lr=1e-3, l2=1e-5, lr_step=3, lr_decay=0.1, epochs=30, patience=3,
    optimizer="adam", scheduler_at_start_compat=False,
)

AT_LEAST_ONE = ("epochs", "batch_size", "dim")
INTEGER = AT_LEAST_ONE + ("patience", "lr_step")  # counts: 1.7 epochs is a typo, not a setting

MODEL_MODULES = [
    "sbr_bench.models.attenmixer",
    "sbr_bench.models.srgnn",
    "sbr_bench.models.gcsan",
    "sbr_bench.models.sgnnhn",
    "sbr_bench.models.lessr",
    "sbr_bench.models.dhcn",
    "sbr_bench.models.narm",
    "sbr_bench.models.baselines",
    "sbr_bench.models.oracle",
]

TABLE2_ORDER = ["pop", "spop", "sknn", "narm", "srgnn", "gcsan", "sgnnhn", "lessr", "dhcn", "attenmixer"]
SYNTHETIC_ONLY = ("oracle",)  # need the generator's truth: in "all" only on the built-in synthetic data
TABLE3 = ["srgnn", "srgnn+attenmixer", "sgnnhn", "sgnnhn+attenmixer"]  # the paper's Table 3
TABLE3_DIM = 256  # the paper runs both sides of Table 3 (every model, in fact) at d = 256


@dataclass
class ModelSpec:
    """A neural model: factories taking (n_items, cfg) for the encoder and (cfg) for readout/scorer."""

    encoder: Callable
    readout: Callable
    scorer: Callable
    defaults: dict = field(default_factory=dict)
    readout_params: tuple = ()  # cfg keys owned by the readout/scorer (carried over in compositions)
    init: Callable | None = None  # init(model, cfg); default: SBRModel.reset_parameters()
    doc: str = ""
    # How a composition ENCODER+READOUT prepares item embeddings before the encoder (`input_norm`,
    # `input_dropout`, see base.NormalisedInput): the readout's spec sets it, the encoder's may refine it.
    composed_input: dict = field(default_factory=dict)


@dataclass
class BaselineSpec:
    """A model fitted by counting (pop, s-pop, sknn): build(n_items, cfg) -> object with fit/score."""

    build: Callable
    defaults: dict = field(default_factory=dict)
    doc: str = ""


_SPECS: dict | None = None


def specs() -> dict:
    global _SPECS
    if _SPECS is None:
        found = {}
        for mod_name in MODEL_MODULES:
            found.update(importlib.import_module(mod_name).SPECS)
        _SPECS = found
    return _SPECS


def resolve_names(text: str, synthetic: bool = False) -> list[str]:
    """'all' | 'table3' | comma-separated names and encoder+readout compositions. `synthetic`: the data
    are the built-in synthetic data, where 'all' also includes the oracle (`SYNTHETIC_ONLY`), last."""
    names = []
    for part in [p.strip() for p in text.split(",") if p.strip()]:
        if part == "all":
            known = specs()
            names += [n for n in TABLE2_ORDER if n in known]
            names += [n for n in known if n not in TABLE2_ORDER and "-" not in n and n not in SYNTHETIC_ONLY]
            names += [n for n in SYNTHETIC_ONLY if synthetic and n in known]
        elif part == "table3":
            names += TABLE3
        else:
            names.append(part)
    for n in names:
        spec_for(n)  # validate early, with a clear message
    return list(dict.fromkeys(names))


def spec_for(name: str):
    known = specs()
    if "+" in name:
        enc_name, _, ro_name = name.partition("+")
        for part in (enc_name, ro_name):
            if part not in known or not isinstance(known[part], ModelSpec):
                raise UserError(f"--models: '{part}' in '{name}' is not a neural model; "
                                f"known: {', '.join(sorted(n for n, s in known.items() if isinstance(s, ModelSpec)))}")
        enc, ro = known[enc_name], known[ro_name]
        defaults = dict(enc.defaults)
        defaults.update({k: ro.defaults[k] for k in ro.readout_params if k in ro.defaults})
        if ro.composed_input:
            defaults.update(ro.composed_input, **enc.composed_input)
        return ModelSpec(enc.encoder, ro.readout, ro.scorer, defaults, ro.readout_params, enc.init,
                         doc=f"{enc_name} encoder with the {ro_name} readout")
    if name not in known:
        raise UserError(f"--models: unknown model '{name}'; known: {', '.join(sorted(known))}, "
                        "or ENCODER+READOUT (e.g. srgnn+attenmixer)")
    return known[name]


def model_config(name: str, overrides: dict | None = None) -> dict:
    spec = spec_for(name)
    # Counting baselines have no training loop: only their own parameters.
    cfg = {} if isinstance(spec, BaselineSpec) else dict(TRAIN_DEFAULTS)
    cfg.update(spec.defaults)
    for key, value in (overrides or {}).items():
        if key not in cfg:
            raise UserError(f"--set {key}=...: '{name}' has no parameter '{key}'; it has: {', '.join(sorted(cfg))}")
        default = cfg[key]
        number = lambda x: isinstance(x, (int, float)) and not isinstance(x, bool)  # noqa: E731
        if number(default) and not number(value):
            raise UserError(f"--set {key}={value}: '{key}' is a number (default {default})")
        if number(value) and not math.isfinite(value):  # JSON parsing accepts NaN and Infinity
            raise UserError(f"--set {key}={value}: '{key}' must be a finite number")
        if key in INTEGER and number(value):
            if value != int(value):
                raise UserError(f"--set {key}={value}: '{key}' must be a whole number")
            value = int(value)
        if key in AT_LEAST_ONE and value < 1:
            raise UserError(f"--set {key}={value}: must be at least 1")
        cfg[key] = value
    return cfg


def build_model(name: str, n_items: int, overrides: dict | None = None):
    """Return (model, cfg). Neural models are `SBRModel`s; baselines have fit/score."""
    from .base import NormalisedInput, SBRModel

    spec = spec_for(name)
    cfg = model_config(name, overrides)
    if isinstance(spec, BaselineSpec):
        return spec.build(n_items, cfg), cfg
    encoder, readout = spec.encoder(n_items, cfg), spec.readout(cfg)
    if cfg.get("input_norm", "none") != "none" or cfg.get("input_dropout", 0.0) > 0:
        encoder = NormalisedInput(encoder, cfg["dim"], cfg["input_norm"], float(cfg["input_dropout"]))
    # Encoders whose states are wider than `dim` (LESSR's dense concatenation) say so with `out_dim`.
    out_dim, in_dim = getattr(encoder, "out_dim", cfg["dim"]), getattr(readout, "in_dim", cfg["dim"])
    if out_dim != in_dim:
        raise UserError(f"--models {name}: the encoder gives states of width {out_dim} but the readout "
                        f"expects {in_dim}; these two do not compose")
    model = SBRModel(n_items, cfg["dim"], encoder, readout, spec.scorer(cfg))
    if spec.init is not None:
        spec.init(model, cfg)
    else:
        model.reset_parameters()
    return model, cfg
