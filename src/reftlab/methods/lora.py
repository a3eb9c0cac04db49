"""LoRA with peft on the frozen model, trained by the same loop, prompts and evaluation as ReFT:
build, save and load the adapters here."""

from __future__ import annotations

import json
from pathlib import Path

from . import LanguageModelMethod, register

LORA_MODULES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


@register
class LoraMethod(LanguageModelMethod):
    names = ("lora",)
    display = "LoRA"
    paths = ("stock",)  # LoRA changes the model's weights: nothing below it can be cached

    def validate(self, icfg, n_layers, model_name) -> None:
        from ..validate import ConfigError, check_layers, check_rank_dropout

        if icfg.get("layer") is not None:
            check_layers(icfg.layer, n_layers, model_name)
        check_rank_dropout(icfg)
        modules = list(icfg.target_modules or [])
        bad = [m for m in modules if m not in LORA_MODULES]
        if not modules or bad:
            raise ConfigError(
                f"intervention.target_modules={bad or modules!r} is not valid: choose from {', '.join(LORA_MODULES)}"
            )
        if not float(icfg.alpha) > 0:
            raise ConfigError(f"intervention.alpha={icfg.alpha!r} is not valid: it must be > 0")

    def build(self, model, settings, spec=None):
        """A peft LoRA model around the frozen `model`; adapter weights are fp32 even on a bf16 model."""
        from peft import LoraConfig, get_peft_model

        from ..spec import InterventionSpec

        spec = spec or InterventionSpec.of(settings, model.config.num_hidden_layers)
        config = LoraConfig(
            r=int(settings["rank"]),
            lora_alpha=float(settings["alpha"]),
            lora_dropout=float(settings.get("dropout", 0.0)),
            target_modules=list(settings["target_modules"]),
            layers_to_transform=list(spec.layers) or None,  # none given: every layer
            use_dora=bool(settings.get("use_dora", False)),
            bias="none",
            task_type="CAUSAL_LM",
        )
        return get_peft_model(model, config, autocast_adapter_dtype=True)

    def save(self, trained, settings, folder):
        folder = Path(folder)
        trained.save_pretrained(str(folder))
        (folder / "reft_settings.json").write_text(json.dumps(settings, indent=2))
        return folder

    def load(self, model, folder):
        from peft import PeftModel

        folder = Path(folder)
        settings = json.loads((folder / "reft_settings.json").read_text())
        return PeftModel.from_pretrained(model, str(folder)), settings


@register
class DoraMethod(LoraMethod):
    """DoRA (Liu et al. 2024, peft's `use_dora`): LoRA on the direction of each weight with its
    magnitude trained apart; the method the ReFT paper's commonsense tables compare with."""

    names = ("dora",)
    display = "DoRA"

    def settings(self, cfg, n_layers: int) -> dict:
        return super().settings(cfg, n_layers) | {"use_dora": True}
