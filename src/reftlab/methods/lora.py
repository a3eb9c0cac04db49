"""LoRA with peft on the frozen model, trained by the same loop, prompts and evaluation as ReFT
(see reftlab.lora for building, saving and loading)."""

from __future__ import annotations

from . import LanguageModelMethod, register

LORA_MODULES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


@register
class LoraMethod(LanguageModelMethod):
    names = ("lora",)
    display = "LoRA"
    paths = ("stock",)  # LoRA changes the model's weights: nothing below it can be cached
    stock_name = "peft"

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

    def trainable_percent(self, n_trainable: int, total: int) -> float:
        return 100.0 * n_trainable / (total - n_trainable)  # peft adds the adapters to the model's count

    def build(self, model, settings):
        from .. import lora

        return lora.build(model, settings)

    def save(self, trained, settings, folder):
        from .. import lora

        return lora.save(trained, settings, folder)

    def load(self, model, folder):
        from .. import lora

        return lora.load(model, folder)
