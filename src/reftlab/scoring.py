"""Scores to results: a split's metrics, the scores split into validation and test, the checks on
a result (finite scores, held-out splits large enough to judge), and how it is kept (metrics.json,
predictions.parquet, the confusion matrix and ROC curve as MLflow figures).

A score is logit(Yes) - logit(No) for one prompt; the prediction is "Yes" when it is > 0.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np

from . import validate


def metrics(labels: list[str], scores: np.ndarray) -> dict:
    """Accuracy, F1 and the confusion counts at the Yes/No decision (score > 0), and the
    threshold-free ROC AUC (both labels present) and log loss of P(Yes) = sigmoid(score), which
    compare fairly on imbalanced data."""
    from sklearn.metrics import accuracy_score, confusion_matrix, f1_score, log_loss, roc_auc_score

    y_true = np.array([lab == "Yes" for lab in labels])
    scores = np.asarray(scores, dtype=np.float64)
    y_pred = scores > 0
    tn, fp, fn, tp = confusion_matrix(y_true, y_pred, labels=[False, True]).ravel()
    out = {
        "accuracy": float(accuracy_score(y_true, y_pred)),
        "f1": float(f1_score(y_true, y_pred, zero_division=0)),
        "yes_rate": float(y_pred.mean()),
        "tp": int(tp),
        "fp": int(fp),
        "tn": int(tn),
        "fn": int(fn),
        "log_loss": float(log_loss(y_true, 1 / (1 + np.exp(-scores)), labels=[False, True])),
    }
    if len(set(y_true)) == 2:
        out["roc_auc"] = float(roc_auc_score(y_true, scores))
    return out


def split_metrics(prepared, scores) -> dict:
    """Test metrics under their plain names (accuracy, f1, ...), validation ones as val_*; `scores`
    cover the validation rows, then the test rows (`methods.Job.texts`)."""
    n_val = len(prepared.val)
    out = {
        **metrics(list(prepared.eval["label"]), scores[n_val:]),
        "eval_examples": len(prepared.eval),
    }
    out["val_examples"] = n_val
    if n_val:
        val = metrics(list(prepared.val["label"]), scores[:n_val])
        out.update(
            {f"val_{k}": val[k] for k in ("accuracy", "f1", "yes_rate", "roc_auc", "log_loss") if k in val}
        )
    return out


def check_scores(scores, cfg) -> None:
    """A run whose scores are NaN or inf diverged (or overflowed in half precision): it fails, naming
    the settings to change, instead of counting NaN as "No" and recording 50% as a result."""
    bad = ~np.isfinite(np.asarray(scores, dtype=float))
    if bad.any():
        raise validate.DivergedError(
            f"{int(bad.sum())} of {len(bad)} scores are not numbers (NaN or inf): the model diverged or "
            f"overflowed. Lower trainer.lr (now {cfg.trainer.lr}) or run the model in float32 "
            f"(model.dtype=float32, now {cfg.model.get('dtype', 'n/a')}); nothing was recorded as a result"
        )


MIN_JUDGED = 30  # fewer held-out examples than this (or one class): the accuracy is flagged, not trusted


def judge(prepared) -> list[str]:
    """Warnings for held-out splits too small or of one class to judge a result on."""
    out = []
    for part, name, setting in ((prepared.eval, "test", "data.eval_fraction"),
                                (prepared.val, "validation", "data.val_fraction")):  # fmt: skip
        labels = list(part["label"])
        if not labels:
            continue
        problems = [f"{len(labels)} examples"] if len(labels) < MIN_JUDGED else []
        if len(set(labels)) < 2:
            problems.append(f"all {labels[0]!r}")
        if problems:
            out.append(
                f"the {name} split is too small to judge ({', '.join(problems)}; at least {MIN_JUDGED} "
                f"of both labels are needed): its accuracy says little. Raise {setting} or use more data"
            )
    return out


def strict_json(metrics: dict) -> str:
    """metrics.json that strict parsers read: NaN and inf become null."""
    clean = {k: (v if not isinstance(v, float) or math.isfinite(v) else None) for k, v in metrics.items()}
    return json.dumps(clean, indent=2, allow_nan=False)


def save_predictions(prepared, scores, output_dir: Path) -> None:
    """Every held-out row with its split, score, P(Yes) and prediction: predictions.parquet, on disk
    (written whole or not at all) and in the run."""
    import mlflow
    import pandas as pd

    rows = pd.concat(
        [prepared.val.assign(split="val"), prepared.eval.assign(split="test")], ignore_index=True
    )
    predictions = rows.assign(
        score=scores, p_yes=1 / (1 + np.exp(-scores)), prediction=np.where(scores > 0, "Yes", "No")
    )
    tmp = output_dir / f".predictions.parquet.tmp{os.getpid()}"
    predictions.to_parquet(tmp, index=False)
    tmp.replace(output_dir / "predictions.parquet")
    mlflow.log_artifact(str(output_dir / "predictions.parquet"))


def log_figures(prepared, scores) -> None:
    """The test split's confusion matrix and ROC curve as figures of the run (validation beside them
    in the ROC plot), drawn by scikit-learn."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import mlflow
    from sklearn.metrics import ConfusionMatrixDisplay, RocCurveDisplay

    n_val = len(prepared.val)
    parts = [
        ("test", prepared.eval, np.asarray(scores)[n_val:]),
        ("validation", prepared.val, np.asarray(scores)[:n_val]),
    ]
    fig, ax = plt.subplots(figsize=(4.5, 4))
    truth = np.array(prepared.eval["label"] == "Yes")
    ConfusionMatrixDisplay.from_predictions(truth, parts[0][2] > 0, labels=[False, True], display_labels=["No", "Yes"],
                                            ax=ax, colorbar=False)  # fmt: skip
    ax.set_title(f"test split ({len(truth)} examples)")
    fig.tight_layout()
    mlflow.log_figure(fig, "figures/confusion_matrix.png")
    plt.close(fig)
    fig, ax = plt.subplots(figsize=(4.5, 4))
    for name, part, s in parts:
        truth = np.array(part["label"] == "Yes")
        if len(set(truth)) == 2:
            RocCurveDisplay.from_predictions(truth, s, name=name, ax=ax)
    ax.plot([0, 1], [0, 1], ls=":", color="grey", lw=0.8)
    ax.set_title("ROC curve (score = logit Yes - logit No)")
    fig.tight_layout()
    mlflow.log_figure(fig, "figures/roc_curve.png")
    plt.close(fig)
