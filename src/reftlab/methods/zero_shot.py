"""The frozen model zero-shot (`intervention=none`): scored the same constrained way (Yes vs No
logits) with the data's system prompt, and again with an answer hint added (hint_* metrics)."""

from __future__ import annotations

import time

from . import Job, LanguageModelMethod, Outcome, register


@register
class ZeroShot(LanguageModelMethod):
    names = ("none",)
    display = "zero-shot"
    trains = False
    has_layers = False

    def run(self, job: Job) -> Outcome:
        from .. import scoring
        from ..engine import score
        from ..prompts import PromptBuilder

        cfg = job.cfg
        model, tokenizer, device, n_layers, builder, tags = self.load_model(job)
        settings = self.settings(cfg, n_layers)
        args = (builder.yes_id, builder.no_id, tokenizer.pad_token_id, device, cfg.trainer.eval_batch_size)
        start = time.perf_counter()
        scores = score(model, self, settings, builder.prompts(job.texts), *args)
        eval_seconds = time.perf_counter() - start
        hinted = PromptBuilder(
            tokenizer, f"{cfg.data.system_prompt} {cfg.intervention.hint}", cfg.trainer.max_length
        )
        hint = scoring.metrics(
            list(job.prepared.eval["label"]),
            score(model, self, settings, hinted.prompts(job.prepared.eval["text"]), *args),
        )
        metrics = {
            **{f"hint_{k}": v for k, v in hint.items() if k in ("accuracy", "f1", "yes_rate")},
            "train_seconds": 0.0,
            "eval_seconds": eval_seconds,
            "trainable_params": 0,
            "trainable_percent": 0.0,
            "peak_memory_mb": float("nan"),
            "train_examples": 0,
        }
        return Outcome(scores, metrics, tags)
