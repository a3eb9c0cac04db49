"""The classical baseline: TF-IDF n-grams + logistic regression (scikit-learn) on the same split."""

from __future__ import annotations

import time

import numpy as np


def tfidf(train_texts, train_labels, eval_texts, settings: dict) -> dict:
    """Fit on train, score eval; scores are log-odds of "Yes" (same sign convention as the LMs)."""
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline

    pipeline = make_pipeline(
        TfidfVectorizer(
            ngram_range=(1, int(settings["max_ngram"])), sublinear_tf=True, min_df=int(settings["min_df"])
        ),
        LogisticRegression(C=float(settings["C"]), max_iter=2000),
    )
    y = np.array([label == "Yes" for label in train_labels])
    start = time.perf_counter()
    pipeline.fit(list(train_texts), y)
    train_seconds = time.perf_counter() - start
    start = time.perf_counter()
    scores = pipeline.decision_function(list(eval_texts))
    classifier = pipeline[-1]
    return {
        "scores": np.asarray(scores, dtype=np.float64),
        "train_seconds": train_seconds,
        "eval_seconds": time.perf_counter() - start,
        "trainable_params": int(classifier.coef_.size + classifier.intercept_.size),
        "pipeline": pipeline,
    }
