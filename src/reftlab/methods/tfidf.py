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
    families = ("label",)  # a label from a fixed set: Yes/No, or any label set

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
        """Fit on train, score validation and test. Yes/No: scores are log-odds of "Yes" (the LMs'
        sign convention); any label set: the log-probability of each of the task's labels."""
        import numpy as np

        from ..tasks.yes_no import YesNo

        train, task = job.prepared.train, job.task
        pipeline = self.pipeline(job.cfg.intervention)
        start = time.perf_counter()
        if isinstance(task, YesNo):
            pipeline.fit(list(train["text"]), np.array([label == "Yes" for label in train["label"]]))
        else:
            pipeline.fit(list(train["text"]), np.array([str(label) for label in train["label"]]))
        train_seconds = time.perf_counter() - start
        start = time.perf_counter()
        if isinstance(task, YesNo):
            scores = np.asarray(pipeline.decision_function(job.texts), dtype=np.float64)
        else:  # the task's labels in its order; one the training part lacks gets no probability
            seen = list(pipeline.classes_)
            found = pipeline.predict_log_proba(job.texts)
            scores = np.full((len(job.texts), len(task.labels)), np.log(np.finfo(float).tiny))
            for j, label in enumerate(task.labels):
                if label in seen:
                    scores[:, j] = found[:, seen.index(label)]
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
