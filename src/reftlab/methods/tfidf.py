"""The classical baseline (`intervention=tfidf`): TF-IDF n-grams + logistic regression
(scikit-learn) on the same split; no language model."""

from __future__ import annotations

import time

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

    def pipeline(self, settings):
        from sklearn.feature_extraction.text import TfidfVectorizer
        from sklearn.linear_model import LogisticRegression
        from sklearn.pipeline import make_pipeline

        vectorizer = TfidfVectorizer(ngram_range=(1, int(settings["max_ngram"])), sublinear_tf=True,
                                     min_df=int(settings["min_df"]))  # fmt: skip
        return make_pipeline(vectorizer, LogisticRegression(C=float(settings["C"]), max_iter=2000))

    def run(self, job: Job) -> Outcome:
        """Fit on train, score validation and test; scores are log-odds of "Yes" (the LMs' sign convention)."""
        import numpy as np

        train = job.prepared.train
        pipeline = self.pipeline(job.cfg.intervention)
        start = time.perf_counter()
        pipeline.fit(list(train["text"]), np.array([label == "Yes" for label in train["label"]]))
        train_seconds = time.perf_counter() - start
        start = time.perf_counter()
        scores = np.asarray(pipeline.decision_function(job.texts), dtype=np.float64)
        classifier = pipeline[-1]
        metrics = {
            "train_seconds": train_seconds,
            "eval_seconds": time.perf_counter() - start,
            "trainable_params": int(classifier.coef_.size + classifier.intercept_.size),
            "trainable_percent": float("nan"),  # no language model underneath
            "peak_memory_mb": float("nan"),
            "train_examples": len(train),
        }
        return Outcome(scores, metrics)
