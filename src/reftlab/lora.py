"""LoRA with peft, on the same data, prompts, loop and evaluation as the ReFT methods."""

from __future__ import annotations

import json
from pathlib import Path

from .spec import InterventionSpec


def build(model, settings: dict):
    """A peft LoRA model around the frozen `model`; adapter weights are fp32 even on a bf16 model."""
    from peft import LoraConfig, get_peft_model

    spec = InterventionSpec.of(settings, model.config.num_hidden_layers)
    config = LoraConfig(
        r=int(settings["rank"]),
        lora_alpha=float(settings["alpha"]),
        lora_dropout=float(settings.get("dropout", 0.0)),
        target_modules=list(settings["target_modules"]),
        layers_to_transform=list(spec.layers) or None,  # none given: every layer
        bias="none",
        task_type="CAUSAL_LM",
    )
    return get_peft_model(model, config, autocast_adapter_dtype=True)


def save(peft_model, settings: dict, folder: Path) -> Path:
    folder = Path(folder)
    peft_model.save_pretrained(str(folder))
    (folder / "reft_settings.json").write_text(json.dumps(settings, indent=2))
    return folder


def load(model, folder: Path):
    from peft import PeftModel

    folder = Path(folder)
    settings = json.loads((folder / "reft_settings.json").read_text())
    return PeftModel.from_pretrained(model, str(folder)), settings
