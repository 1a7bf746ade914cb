"""Model names -> how to build them, with every model's defaults in one place (its module's SPECS).

- `build_model("srgnn", n_items)` builds a named model with its paper/reference defaults;
- `build_model("srgnn+attenmixer", n_items)` composes SR-GNN's encoder with Atten-Mixer's readout and
  scorer (paper Table 3): training defaults come from the encoder's model, readout parameters from
  the readout's model;
- `resolve_names("all")` lists every model but ablations, the extra anchors and synthetic-only ones;
  `"anchors"` the anchors (counting, rule and kNN methods); `"table3"` the compositions of paper Table 3.

Built-in model modules define `SPECS = {name: ModelSpec(...) or BaselineSpec(...)}`. Other code adds
models with `register_model` (also as a decorator); other packages declare a module in the entry-point
group `sbr_bench.models`, which is imported (and so registers its models) the first time models are listed.
"""

from __future__ import annotations

import importlib
import sys
from dataclasses import dataclass, field
from importlib import metadata
from typing import Callable

from ..errors import ConfigError
from . import config

ENTRY_POINT_GROUP = "sbr_bench.models"

# Training defaults shared by the reference code bases (SR-GNN lineage); each model's config extends them.
TRAIN_DEFAULTS = config.as_dict(config.TrainConfig())

MODEL_MODULES = [
    "sbr_bench.models.attenmixer",
    "sbr_bench.models.srgnn",
    "sbr_bench.models.niser",
    "sbr_bench.models.gcsan",
    "sbr_bench.models.sgnnhn",
    "sbr_bench.models.lessr",
    "sbr_bench.models.dhcn",
    "sbr_bench.models.narm",
    "sbr_bench.models.nextitnet",
    "sbr_bench.models.stamp",
    "sbr_bench.models.dsan",
    "sbr_bench.models.gru4rec",
    "sbr_bench.models.baselines",
    "sbr_bench.models.rules",
    "sbr_bench.models.vsknn",
    "sbr_bench.models.sfsknn",
    "sbr_bench.models.stan",
    "sbr_bench.models.oracle",
]

# Table 2's rows: the anchors, then the paper's order.
TABLE2_ORDER = ["pop", "spop", "ar", "sr", "sknn", "vsknn", "sfsknn", "stan", "vstan", "gru4rec", "stamp",
                "nextitnet", "narm", "srgnn", "gcsan", "sgnnhn", "lessr", "niser", "dhcn", "dsan", "attenmixer"]
# The anchors that independent studies found hardest to beat (`--models anchors`): counting, rule and kNN
# methods, GRU4Rec and STAMP. pop, spop and sknn are in "all" as well; the others are named or selected as
# anchors.
ANCHORS = ["pop", "spop", "ar", "sr", "sknn", "vsknn", "sfsknn", "stan", "vstan", "gru4rec", "stamp"]
ANCHORS_IN_ALL = ("pop", "spop", "sknn")
SYNTHETIC_ONLY = ("oracle",)  # need the generator's truth: in "all" only on the built-in synthetic data
TABLE3 = ["srgnn", "srgnn+attenmixer", "sgnnhn", "sgnnhn+attenmixer"]  # the paper's Table 3
TABLE3_DIM = 256  # the paper runs both sides of Table 3 (every model, in fact) at d = 256


@dataclass
class ModelSpec:
    """A neural model: factories taking (n_items, cfg) for the encoder and (cfg) for readout/scorer."""

    encoder: Callable
    readout: Callable
    scorer: Callable
    defaults: object = field(default_factory=config.TrainConfig)  # a config dataclass (a dict is typed on registration)
    readout_params: tuple = ()  # cfg keys owned by the readout/scorer (carried over in compositions)
    init: Callable | None = None  # init(model, cfg); default: SBRModel.reset_parameters()
    doc: str = ""
    # How a composition ENCODER+READOUT prepares item embeddings before the encoder (`input_norm`,
    # `input_dropout`, see base.NormalisedInput): the readout's spec sets it, the encoder's may refine it.
    composed_input: dict = field(default_factory=dict)
    ablation: bool = False  # a variant of another model (paper Table 4): named explicitly, not in "all"
    source: str = ""  # where the model and its defaults are defined (set on registration)
    space: dict = field(default_factory=dict)  # what `sbr-bench tune` searches (`models.space`)
    # A model class of its own (n_items, dim, encoder, readout, scorer, cfg) -> SBRModel subclass, for models
    # that train differently (GRU4Rec's session-parallel steps); compositions use SBRModel.
    model: Callable | None = None


@dataclass
class BaselineSpec:
    """A model fitted by counting (pop, s-pop, sknn): build(n_items, cfg) -> object with fit/score."""

    build: Callable
    defaults: object = field(default_factory=config.NoParams)
    doc: str = ""
    ablation: bool = False
    source: str = ""
    space: dict = field(default_factory=dict)


_SPECS: dict | None = None
_REGISTERED: dict = {}  # register_model calls, kept apart so that they survive the first `specs()`


def register_model(name: str, spec: ModelSpec | BaselineSpec | None = None, *, readout=None, scorer=None,
                   defaults: dict | None = None, readout_params: tuple = (), doc: str = "", space: dict | None = None):
    """Register a model under `name`, for `--models`, `models list`, compositions and reports.

    Called with a spec: `register_model("mine", ModelSpec(encoder=..., readout=..., scorer=...))`. As a
    decorator of an `Encoder` class taking `(n_items, cfg)`, with `readout` (a factory taking `cfg`) and
    optionally `scorer` (default: dot products), or of a counting class taking `(n_items, cfg)` that has
    `trainable = False`, `fit(split)` and `forward(batch) -> [B, n_items]` scores.

    Args:
        name: the model's name: letters, digits, `_` and `-` (`+` is how models compose).
        defaults: the model's parameters: a config dataclass (`models.config`; a neural model's extends
            `TrainConfig`), or a dict of defaults whose types are taken from the values.
        doc: one line for `models list`.
        space: what `sbr-bench tune` searches, {parameter: `models.space.Float`, `Int` or `Choice`}.
    Returns:
        The spec (direct call) or the decorated class, unchanged.
    Raises:
        ValueError: the name is taken or malformed.
    """
    if not name or not all(c.isalnum() or c in "_-" for c in name) or name[0] == "-":
        raise ValueError(f"model name {name!r}: use letters, digits, '_' and '-'")
    if name in _REGISTERED or name in (_SPECS or {}):
        raise ValueError(f"model name {name!r} is already registered ({_source_of(name)})")

    def add(made):
        made.source = made.source or getattr(made.encoder if isinstance(made, ModelSpec) else made.build,
                                             "__module__", "")
        _typed(name, made)
        _REGISTERED[name] = made
        if _SPECS is not None:
            _SPECS[name] = made
        return made

    if spec is not None:
        return add(spec)

    def decorate(cls):
        from .base import DotScorer

        if getattr(cls, "trainable", True) is False:
            add(BaselineSpec(build=cls, defaults=defaults or {}, doc=doc, space=dict(space or {})))
        else:
            if readout is None:
                raise ValueError(f"register_model({name!r}): an encoder needs `readout=` (a factory taking cfg)")
            add(ModelSpec(encoder=cls, readout=readout, scorer=scorer or (lambda cfg: DotScorer()),
                          defaults=defaults or {}, readout_params=tuple(readout_params), doc=doc,
                          space=dict(space or {})))
        return cls

    return decorate


def _source_of(name: str) -> str:
    spec = _REGISTERED.get(name) or (_SPECS or {}).get(name)
    return spec.source if spec is not None and spec.source else "built in"


def specs() -> dict:
    """Every known model: the built-ins, then those registered by code and by installed plugins."""
    global _SPECS
    if _SPECS is None:
        found = {}
        for mod_name in MODEL_MODULES:
            for name, spec in importlib.import_module(mod_name).SPECS.items():
                spec.source = spec.source or mod_name
                found[name] = spec
        _SPECS = found
        _load_plugins()
        for name, spec in _REGISTERED.items():
            if name in found and found[name] is not spec:
                raise ValueError(f"model name {name!r} from {spec.source} is already a built-in model")
            found[name] = spec
    return _SPECS


def _typed(name: str, spec):
    """A spec whose `defaults` is a config dataclass: plain dict defaults get types from their values (on
    registration, and for specs put into the registry by hand, on first use)."""
    if isinstance(spec.defaults, dict):
        base = config.TrainConfig if isinstance(spec, ModelSpec) else None
        spec.defaults = config.from_dict(name.replace("-", "_"), spec.defaults, base) if spec.defaults or base \
            else config.NoParams()
    return spec


def _load_plugins() -> None:
    """Import every module of the `sbr_bench.models` entry-point group; each registers its models. A
    plugin that fails to import is skipped with one line on stderr (the built-in models still work)."""
    for entry in metadata.entry_points(group=ENTRY_POINT_GROUP):
        try:
            entry.load()
        except Exception as e:  # noqa: BLE001 - any error in someone else's package
            print(f"sbr-bench: plugin {entry.name} ({entry.value}) not loaded: {type(e).__name__}: {e}",
                  file=sys.stderr)


def list_models() -> dict:
    """{name: one line} of every registered model, built-in and plugin, ablations included."""
    return {name: spec.doc for name, spec in specs().items()}


def resolve_names(text, synthetic: bool = False) -> list[str]:
    """'all' | 'anchors' | 'table3' | names and encoder+readout compositions (a comma-separated string or
    a list). 'all' is every model but ablation variants, the anchors beyond pop, spop and sknn, and
    `SYNTHETIC_ONLY` ones; with `synthetic` (the data are the built-in synthetic data) it also includes the
    oracle, last. 'anchors' is `ANCHORS`."""
    parts = text.split(",") if isinstance(text, str) else list(text)
    names = []
    for part in [p.strip() for p in parts if p.strip()]:
        if part == "all":
            known = specs()
            left_out = set(SYNTHETIC_ONLY) | (set(ANCHORS) - set(ANCHORS_IN_ALL))
            names += [n for n in TABLE2_ORDER if n in known and n not in left_out]
            names += [n for n, s in known.items() if n not in TABLE2_ORDER and not s.ablation and n not in left_out]
            names += [n for n in SYNTHETIC_ONLY if synthetic and n in known]
        elif part == "anchors":
            names += [n for n in ANCHORS if n in specs()]
        elif part == "table3":
            names += TABLE3
        else:
            names.append(part)
    for n in names:
        spec_for(n)  # validate early, with a clear message
    return list(dict.fromkeys(names))


def is_ablation(name: str) -> bool:
    """Whether `name` is a registered ablation variant (unknown names, e.g. from other versions' runs, are not)."""
    spec = specs().get(name)
    return bool(spec is not None and spec.ablation)


def spec_for(name: str):
    known = specs()
    if "+" in name:
        enc_name, _, ro_name = name.partition("+")
        for part in (enc_name, ro_name):
            if part not in known or not isinstance(known[part], ModelSpec):
                raise ConfigError("models", f"'{part}' in '{name}' is not a neural model; known: "
                                  f"{', '.join(sorted(n for n, s in known.items() if isinstance(s, ModelSpec)))}")
        enc, ro = _typed(enc_name, known[enc_name]), _typed(ro_name, known[ro_name])
        parts = [(enc.defaults, None), (ro.defaults, ro.readout_params)]
        if ro.composed_input:
            parts += [(config.from_dict("Input", dict(ro.composed_input, **enc.composed_input)), None)]
        defaults = config.compose(f"{enc_name}_{ro_name}_Config", f"{type(enc.defaults).__name__} with the readout "
                                  f"parameters of {type(ro.defaults).__name__}", *parts)
        space = {k: v for k, v in enc.space.items() if k not in enc.readout_params}
        space.update({k: v for k, v in ro.space.items() if k in ro.readout_params})
        return ModelSpec(enc.encoder, ro.readout, ro.scorer, defaults, ro.readout_params, enc.init,
                         doc=f"{enc_name} encoder with the {ro_name} readout", source=f"{enc.source} + {ro.source}",
                         space=space)
    if name not in known:
        raise ConfigError("models", f"unknown model '{name}'; known: {', '.join(sorted(known))}, "
                          "or ENCODER+READOUT (e.g. srgnn+attenmixer)")
    return _typed(name, known[name])


def model_config(name: str, overrides: dict | None = None) -> dict:
    """The cfg of model `name`: its config's defaults with `overrides`, each checked against its field's
    type (`config.check`); an unknown key is a ConfigError naming the model's parameters."""
    params = config.fields(spec_for(name).defaults)
    cfg = {key: default for key, (_, default) in params.items()}
    for key, value in (overrides or {}).items():
        if key not in cfg:
            raise ConfigError(f"model_overrides.{name}.{key}",
                              f"'{name}' has no parameter '{key}'; it has: {', '.join(sorted(cfg))}")
        cfg[key] = config.check(name, key, value, *params[key])
    return cfg


def parameters(name: str) -> list[tuple[str, str, object]]:
    """(key, type name, default) of every parameter of model `name`, in declaration order."""
    return [(key, config.type_name(kind), default) for key, (kind, default) in
            config.fields(spec_for(name).defaults).items()]


def search_space(name: str) -> dict:
    """The checked search space of model `name` ({} for a model without one: it is tuned by nothing)."""
    from .space import check_space

    spec = spec_for(name)
    return check_space(name, spec.space, spec.defaults)


def build_model(name: str, n_items: int, overrides: dict | None = None):
    """Build model `name` for a catalogue of `n_items` items.

    Args:
        name: a registered model or ENCODER+READOUT (`sbr-bench models list`).
        n_items: items are 1..n_items (0 is padding).
        overrides: parameters that differ from the model's defaults (`sbr-bench models show NAME`).
    Returns:
        (model, cfg): an `SBRModel` (or a counting baseline with fit/forward) and its full cfg.
    Raises:
        ConfigError: an unknown model, parameter or value.
    """
    spec = spec_for(name)
    cfg = model_config(name, overrides)
    try:
        if isinstance(spec, BaselineSpec):
            return spec.build(n_items, cfg), cfg
        encoder, readout = spec.encoder(n_items, cfg), spec.readout(cfg)
        model = _assemble(name, spec, n_items, cfg, encoder, readout)
    except ConfigError as e:  # a component names the bare parameter; say which model it belongs to
        if e.key.startswith("overrides."):
            raise ConfigError(f"model_overrides.{name}.{e.key.partition('.')[2]}", e.message, e.value) from None
        raise
    if spec.init is not None:
        spec.init(model, cfg)
    else:
        model.reset_parameters()
    return model, cfg


def _assemble(name: str, spec: ModelSpec, n_items: int, cfg: dict, encoder, readout):
    """The model around `encoder` and `readout`: input normalisation, width check, scorer, model class."""
    from .base import NormalisedInput, SBRModel, Scorer
    from .scoring import PRECISIONS

    if cfg.get("input_norm", "none") != "none" or cfg.get("input_dropout", 0.0) > 0:
        encoder = NormalisedInput(encoder, cfg["dim"], cfg["input_norm"], float(cfg["input_dropout"]))
    # Encoders whose states are wider than `dim` (LESSR's dense concatenation) say so with `out_dim`.
    out_dim, in_dim = getattr(encoder, "out_dim", cfg["dim"]), getattr(readout, "in_dim", cfg["dim"])
    if out_dim != in_dim:
        raise ConfigError("models", f"{name}: the encoder gives states of width {out_dim} but the readout "
                          f"expects {in_dim}; these two do not compose")
    scorer = spec.scorer(cfg)
    precision = cfg.get("precision", "fp32")
    if precision not in PRECISIONS:
        raise ConfigError("overrides.precision", f"choose one of {', '.join(PRECISIONS)}", precision)
    if precision != "fp32":
        if not isinstance(scorer, Scorer):
            raise ConfigError("overrides.precision", f"{name}: its scorer ({type(scorer).__name__}) is not one of "
                              "the built-in scorers, which alone take a precision", precision)
        scorer.precision = precision
    if spec.model is None:
        return SBRModel(n_items, cfg["dim"], encoder, readout, scorer)
    return spec.model(n_items, cfg["dim"], encoder, readout, scorer, cfg)
