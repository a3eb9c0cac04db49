"""The frozen model zero-shot (`intervention=none`): scored as its task scores a trained model's
answers, with the data's system prompt; for Yes/No again with an answer hint added (hint_* metrics)."""

from __future__ import annotations

import time

from . import Job, LanguageModelMethod, Outcome, register


@register
class ZeroShot(LanguageModelMethod):
    names = ("none",)
    display = "zero-shot"
    trains = False
    has_layers = False

    def unused(self, cfg) -> dict[str, str]:
        if (cfg.get("task") or {}).get("name", "yes_no") == "yes_no":
            return {}
        return {"intervention.hint": "a Yes/No hint: only task=yes_no scores a second, hinted pass"}

    def run(self, job: Job) -> Outcome:
        from ..engine import StockScorer
        from ..tasks.yes_no import YesNo

        cfg, task = job.cfg, job.task
        model, tokenizer, device, n_layers, builder, tags = self.load_model(job)
        scorer = StockScorer(model, self, self.settings(cfg, n_layers), tokenizer.pad_token_id, device)
        start = time.perf_counter()
        scores = task.score(scorer, builder, job.rows, cfg.trainer.eval_batch_size)
        eval_seconds = time.perf_counter() - start
        metrics = {
            "train_seconds": 0.0,
            "eval_seconds": eval_seconds,
            "trainable_params": 0,
            "trainable_percent": 0.0,
            "peak_memory_mb": float("nan"),
            "train_examples": 0,
        }
        if isinstance(task, YesNo):  # the same prompts with an answer hint in the system prompt
            hinted = cfg.copy()
            hinted.data.system_prompt = f"{cfg.data.system_prompt} {cfg.intervention.hint}"
            hint = task.metrics(job.prepared.eval, task.score(scorer, task.builder(tokenizer, hinted),
                                                              job.prepared.eval, cfg.trainer.eval_batch_size))  # fmt: skip
            metrics |= {f"hint_{k}": v for k, v in hint.items() if k in ("accuracy", "f1", "yes_rate")}
        return Outcome(scores, metrics, tags)
