"""LoReFT interventions with pyreft: build, locate, save and load (used by methods/reft.py).

This module stays at `reftlab.reft`: a saved pyreft folder names its intervention classes
`reftlab.reft.FP32<pyreft class>`, and `pyreft.ReftModel.load` imports them from here.

Vocabulary follows pyreft: `layer`, `component`, `low_rank_dimension` (our `rank`), and positions
such as `l1` (last prompt token), `f1+l1` (first and last), `f3+l3`.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path

import torch

from . import hf_compat
from .hf_compat import pyreft
from .models import head_dim
from .spec import InterventionSpec


def component_dim(config, component: str) -> int:
    if component == "mlp_activation":
        return config.intermediate_size
    if component in ("key_output", "value_output"):
        return config.num_key_value_heads * head_dim(config)
    return config.hidden_size


class FP32Intervention:
    """Mixin: run a pyreft intervention with fp32 parameters on a model of any dtype (bf16 here).

    The input is upcast for the intervention and the output cast back to the model's dtype, so the
    trainable parameters and their optimizer state stay fp32 (stock pyreft keeps them in bf16).
    """

    def __init__(self, **kwargs):
        kwargs.setdefault("dtype", torch.float32)  # pyvene's load passes none: pyreft would pick bf16
        super().__init__(**kwargs)

    def forward(self, base, source=None, subspaces=None):
        return super().forward(base.float(), source, subspaces).to(base.dtype)


def _fp32(cls):
    # named and placed so pyvene's loader finds it: "<class 'reftlab.reft.FP32LoreftIntervention'>"
    return type(f"FP32{cls.__name__}", (FP32Intervention, cls), {"__module__": __name__})


def __getattr__(name: str):
    """`reftlab.reft.FP32<pyreft class>`: what `pyreft.ReftModel.load` imports for a saved folder."""
    for method, pyreft_name in PYREFT_CLASSES.items():
        if name == f"FP32{pyreft_name}":
            return intervention_class(method)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


# reftlab method name -> pyreft intervention (direft is pyreft's NodireftIntervention, the paper's DiReFT)
PYREFT_CLASSES = {
    "loreft": "LoreftIntervention",
    "noreft": "NoreftIntervention",
    "direft": "NodireftIntervention",
    "consreft": "ConsreftIntervention",
}


@functools.cache
def intervention_class(method: str):
    return _fp32(getattr(pyreft(), PYREFT_CLASSES[method]))


def build(model, settings):
    """A pyreft ReftModel around the frozen `model` for the given intervention (spec or settings)."""
    spec = InterventionSpec.of(settings, model.config.num_hidden_layers)
    dim = component_dim(model.config, spec.component)
    representations = [
        {
            "layer": layer,
            "component": spec.component,
            "low_rank_dimension": spec.rank,
            "intervention": intervention_class(spec.method)(
                embed_dim=dim,
                low_rank_dimension=spec.rank,
                dropout=spec.dropout,
                dtype=torch.float32,
                add_bias=True,
            ),
        }
        for layer, _ in spec.slots
    ]
    reft_model = pyreft().get_reft_model(
        model, pyreft().ReftConfig(representations=representations), set_device=False
    )
    for intervention in reft_model.interventions.values():
        intervention.to(model.device).float()
        hf_compat.fast_orthogonal(intervention)  # LoReFT's R: the same, its Householder product ~30x faster
    return reft_model


def interventions(reft_model) -> list[torch.nn.Module]:
    return list(reft_model.interventions.values())


def trainable_parameters(reft_model) -> list[torch.nn.Parameter]:
    return [p for iv in interventions(reft_model) for p in iv.parameters() if p.requires_grad]


def count_trainable(reft_model) -> int:
    return sum(p.numel() for p in trainable_parameters(reft_model))


PYREFT_ZIP = "pyreft.zip"  # inside a saved intervention: pyreft's own layout, zipped


def save(reft_model, settings: dict, folder: Path) -> Path:
    """Intervention weights (pyreft's compact state dicts) and the settings to rebuild them; also
    pyreft's own layout (config.json + intkey_*.bin), which `pyreft.ReftModel.load(<layout>, model)`
    rebuilds exactly (fp32 weights; the saved types are reftlab's fp32 subclasses of pyreft's
    interventions, so reftlab must be importable). The layout goes beside the folder
    (`<folder>_pyreft/`) and zipped into it (`pyreft.zip`): pyvene's file names hold '#', which
    MLflow refuses in artifact paths."""
    import shutil

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "reft_settings.json").write_text(json.dumps(settings, indent=2))
    for i, iv in enumerate(interventions(reft_model)):
        torch.save({k: v.detach().cpu() for k, v in iv.state_dict().items()}, folder / f"intervention_{i}.pt")
    layout = pyreft_layout(folder)
    reft_model.save(str(layout))
    shutil.make_archive(str(folder / PYREFT_ZIP.removesuffix(".zip")), "zip", root_dir=layout)
    return folder


def pyreft_layout(folder: Path) -> Path:
    """Where `save` puts pyreft's own layout for the intervention saved in `folder`."""
    return Path(folder).with_name(f"{Path(folder).name}_pyreft")


def load(model, folder: Path):
    """Rebuild the interventions saved by `save` on `model` (exact: fp32 weights, no bf16 rebuild)."""
    folder = Path(folder)
    settings = json.loads((folder / "reft_settings.json").read_text())
    reft_model = build(model, settings)
    for i, iv in enumerate(interventions(reft_model)):
        state = torch.load(folder / f"intervention_{i}.pt", map_location=model.device)
        iv.load_state_dict(state)
        iv.to(model.device)
    return reft_model, settings
