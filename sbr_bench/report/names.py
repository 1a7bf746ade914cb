"""How models, datasets and parameters are spelled in tables and figures: one map for the whole report."""

from __future__ import annotations

MODELS = {
    "pop": "POP", "spop": "S-POP", "ar": "AR", "sr": "SR", "sknn": "SKNN", "vsknn": "V-SKNN", "sfsknn": "SF-SKNN",
    "stan": "STAN", "vstan": "V-STAN", "gru4rec": "GRU4Rec", "stamp": "STAMP", "nextitnet": "NextItNet",
    "narm": "NARM", "srgnn": "SR-GNN", "gcsan": "GC-SAN", "sgnnhn": "SGNN-HN", "lessr": "LESSR", "niser": "NISER+",
    "dhcn": "DHCN", "dsan": "DSAN", "attenmixer": "Atten-Mixer", "oracle": "Oracle",
}
DATASETS = {"diginetica": "Diginetica", "gowalla": "Gowalla", "lastfm": "Last.fm", "yoochoose": "YOOCHOOSE",
            "synthetic": "Synthetic"}
PARAMETERS = {"levels": "levels L", "heads": "heads H", "dim": "embedding size d", "lr": "learning rate",
              "p": "p", "sigma": "scale σ"}


def model_name(name: str) -> str:
    """'srgnn+attenmixer' -> 'SR-GNN w/ Atten-Mixer', 'attenmixer-IP' -> 'Atten-Mixer-IP', unknown names as
    they are (a plugin's)."""
    if "+" in name:
        encoder, _, readout = name.partition("+")
        return f"{model_name(encoder)} w/ {model_name(readout)}"
    base, dash, variant = name.partition("-")
    if base in MODELS:
        return MODELS[base] + (dash + variant if dash else "")
    return name


def dataset_name(name: str) -> str:
    """'diginetica' -> 'Diginetica'; a variant keeps its suffix ('synthetic:tiny' -> 'Synthetic:tiny')."""
    for key, shown in DATASETS.items():
        if name == key or name.startswith(key + ":") or name.startswith(key + "-"):
            return shown + name[len(key):]
    return name


def parameter_name(name: str) -> str:
    return PARAMETERS.get(name, name)
