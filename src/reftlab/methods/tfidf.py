"""The classical baseline (`intervention=tfidf`): TF-IDF n-grams + logistic regression
(scikit-learn) on the same split; no language model."""

from __future__ import annotations

from . import Job, Method, Outcome, register


@register
class Tfidf(Method):
    names = ("tfidf",)
    display = "TF-IDF"
    trains = False  # deterministic: seed and training settings change nothing
    needs_model = False
    has_layers = False

    def validate(self, icfg, n_layers, model_name) -> None:
        from ..validate import ConfigError, integer

        integer(icfg.max_ngram, "max_ngram", 1)
        integer(icfg.min_df, "min_df", 1)
        if not float(icfg.C) > 0:
            raise ConfigError(f"intervention.C={icfg.C!r} is not valid: it must be > 0")

    def run(self, job: Job) -> Outcome:
        from .. import baselines

        train = job.prepared.train
        result = baselines.tfidf(train["text"], train["label"], job.texts, job.cfg.intervention)
        metrics = {
            "train_seconds": result["train_seconds"],
            "eval_seconds": result["eval_seconds"],
            "trainable_params": result["trainable_params"],
            "trainable_percent": float("nan"),  # no language model underneath
            "peak_memory_mb": float("nan"),
            "train_examples": len(train),
        }
        return Outcome(result["scores"], metrics)
