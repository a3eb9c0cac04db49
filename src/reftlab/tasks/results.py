"""A run's scores to its results, for any task: the metrics of the validation and test splits, the
checks on a result (finite scores, held-out splits large enough to judge), and how it is kept
(metrics.json, predictions.parquet, the task's figures in MLflow)."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

from .base import take


def split_metrics(task, prepared, scores) -> dict:
    """Test metrics under their plain names (accuracy, f1, ...), validation ones as val_*; `scores`
    cover the validation rows, then the test rows (`methods.Job.rows`)."""
    n_val = len(prepared.val)
    out = {
        **task.metrics(prepared.eval, take(scores, slice(n_val, None))),
        "eval_examples": len(prepared.eval),
    }
    out["val_examples"] = n_val
    if n_val:
        val = task.metrics(prepared.val, take(scores, slice(0, n_val)))
        out.update({f"val_{k}": val[k] for k in task.val_metrics if k in val})
    return out


def check_scores(task, scores, cfg) -> None:
    """A run whose scores are NaN or inf diverged (or overflowed in half precision): it fails, naming
    the settings to change, instead of counting NaN as an answer and recording chance as a result."""
    from ..config import DivergedError

    bad = ~task.finite(scores)
    if bad.any():
        raise DivergedError(
            f"{int(bad.sum())} of {len(bad)} scores are not numbers (NaN or inf): the model diverged or "
            f"overflowed. Lower trainer.lr (now {cfg.trainer.lr}) or run the model in float32 "
            f"(model.dtype=float32, now {cfg.model.get('dtype', 'n/a')}); nothing was recorded as a result"
        )


MIN_JUDGED = 30  # fewer held-out examples than this (or one class): the accuracy is flagged, not trusted


def judge(prepared, one_label_matters: bool = True) -> list[str]:
    """Warnings for held-out splits too small (or, where labels are classes, of one class) to judge
    a result on."""
    out = []
    for part, name, setting in ((prepared.eval, "test", "data.eval_fraction"),
                                (prepared.val, "validation", "data.val_fraction")):  # fmt: skip
        labels = list(part["label"])
        if not labels:
            continue
        problems = [f"{len(labels)} examples"] if len(labels) < MIN_JUDGED else []
        if one_label_matters and len(set(labels)) < 2:
            problems.append(f"all {labels[0]!r}")
        if problems:
            needed = f"at least {MIN_JUDGED}" + (
                " examples of more than one label" if one_label_matters else " examples"
            )
            out.append(
                f"the {name} split is too small to judge ({', '.join(problems)}; {needed} are needed): its "
                f"accuracy says little. Raise {setting} or use more data"
            )
    return out


def strict_json(metrics: dict) -> str:
    """metrics.json that strict parsers read: NaN and inf become null."""
    clean = {k: (v if not isinstance(v, float) or math.isfinite(v) else None) for k, v in metrics.items()}
    return json.dumps(clean, indent=2, allow_nan=False)


def save_predictions(task, prepared, scores, output_dir: Path) -> None:
    """Every held-out row with its split, scores, probabilities and prediction: predictions.parquet,
    on disk (written whole or not at all) and in the run."""
    import mlflow
    import pandas as pd

    rows = pd.concat(
        [prepared.val.assign(split="val"), prepared.eval.assign(split="test")], ignore_index=True
    )
    tmp = output_dir / f".predictions.parquet.tmp{os.getpid()}"
    table = task.table(rows, scores)
    table.to_parquet(tmp, index=False)
    tmp.replace(output_dir / "predictions.parquet")
    mlflow.log_artifact(str(output_dir / "predictions.parquet"))
    sample = task.sample(table)
    if sample is not None:  # viewable in the run's Artifacts tab (and Evaluation tables)
        mlflow.log_table(data=sample.reset_index(drop=True), artifact_file="predictions_sample.json")


def log_figures(task, prepared, scores) -> None:
    """The task's figures of the run (a confusion matrix, a ROC curve, ...) in MLflow."""
    import matplotlib.pyplot as plt
    import mlflow

    for name, fig in task.figures(prepared, scores):
        mlflow.log_figure(fig, name)
        plt.close(fig)
