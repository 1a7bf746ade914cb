"""`sbr-bench models list | show NAME`: every registered model (built-in and plugin), its parameters,
defaults and where they are defined."""

from __future__ import annotations

HELP = "list the models (built-in and plugins) or show one model's parameters and defaults"


def add_arguments(p) -> None:
    p.add_argument("action", choices=("list", "show"), help="list every model, or show one")
    p.add_argument("name", nargs="?", help="the model to show (a name or ENCODER+READOUT)")


def main(args) -> int:
    from ..errors import UserError
    from ..models.registry import TRAIN_DEFAULTS, parameters, search_space, spec_for, specs

    if args.action == "list":
        if args.name:
            raise UserError("models list takes no name; use `sbr-bench models show NAME`")
        known = specs()
        width = max(map(len, known))
        for name, spec in known.items():
            kind = "counting" if not hasattr(spec, "encoder") else "neural"
            tags = ", ".join(t for t, on in ((kind, True), ("ablation", spec.ablation)) if on)
            print(f"{name:{width}}  [{tags}]  {spec.doc}  ({spec.source})")
        print("\nCompose any neural encoder with any neural readout as ENCODER+READOUT, e.g. srgnn+attenmixer.")
        return 0
    if not args.name:
        raise UserError("models show: name a model, e.g. `sbr-bench models show srgnn`")
    spec = spec_for(args.name)
    schema = type(spec.defaults)
    print(f"{args.name}: {spec.doc}\ndefined in: {spec.source} ({schema.__name__}: {(schema.__doc__ or '').strip()})")
    shared = TRAIN_DEFAULTS if hasattr(spec, "encoder") else {}
    for key, kind, default in parameters(args.name):
        origin = "shared training default" if key in shared and shared[key] == default else "model"
        print(f"  {key:28s} {default!r:>12}  {kind:10s} {origin}")
    space = search_space(args.name)
    print(f"search space of `sbr-bench tune` ({spec.source}):" if space else
          "search space: none (`sbr-bench tune` trains its defaults)")
    for key, dist in space.items():
        print(f"  {key:28s} {dist.describe()}")
    return 0
