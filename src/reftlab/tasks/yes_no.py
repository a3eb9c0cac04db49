"""`task=yes_no` (the default): a Yes or a No after a chat prompt.

The score of a prompt is logit(Yes) - logit(No) at its last token (the answers' first tokens); the
prediction is "Yes" when it is > 0. Metrics at that decision (accuracy, F1, the confusion counts)
and threshold-free ones of P(Yes) = sigmoid(score) (ROC AUC, log loss).
"""

from __future__ import annotations

import numpy as np

from . import register
from .base import LABEL, Task
from .chat import NO, YES, PromptBuilder


def metrics(labels: list[str], scores: np.ndarray) -> dict:
    """Accuracy, F1 and the confusion counts at the Yes/No decision (score > 0), and the
    threshold-free ROC AUC (both labels present) and log loss of P(Yes) = sigmoid(score), which
    compare fairly on imbalanced data."""
    from sklearn.metrics import accuracy_score, confusion_matrix, f1_score, log_loss, roc_auc_score

    y_true = np.array([lab == YES for lab in labels])
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


@register
class YesNo(Task):
    names = ("yes_no",)
    family = LABEL
    display = "Yes/No"
    val_metrics = ("accuracy", "f1", "yes_rate", "roc_auc", "log_loss")

    def builder(self, tokenizer, cfg, prepared=None):
        return PromptBuilder(tokenizer, cfg.data.system_prompt, cfg.trainer.max_length)

    def score(self, scorer, builder, frame, batch_size: int):
        return scorer.yes_no(builder.prompts(frame["text"]), builder.yes_id, builder.no_id, batch_size)

    def metrics(self, frame, scores) -> dict:
        return metrics(list(frame["label"]), scores)

    def table(self, frame, scores):
        scores = np.asarray(scores, dtype=np.float64)
        return frame.assign(score=scores, p_yes=1 / (1 + np.exp(-scores)),
                            prediction=np.where(scores > 0, YES, NO))  # fmt: skip

    def served_outputs(self) -> list[tuple[str, str]]:
        return [("label", "string"), ("p_yes", "double")]

    def answers(self, table):
        """Each text's label (Yes/No) and P(Yes)."""
        return table[["text"]].assign(label=table["prediction"], p_yes=table["p_yes"])

    def figures(self, prepared, scores) -> list[tuple[str, object]]:
        """The test split's confusion matrix and ROC curve (validation beside it in the ROC plot),
        drawn by scikit-learn."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from sklearn.metrics import ConfusionMatrixDisplay, RocCurveDisplay

        n_val = len(prepared.val)
        parts = [
            ("test", prepared.eval, np.asarray(scores)[n_val:]),
            ("validation", prepared.val, np.asarray(scores)[:n_val]),
        ]
        matrix, ax = plt.subplots(figsize=(4.5, 4))
        truth = np.array(prepared.eval["label"] == YES)
        ConfusionMatrixDisplay.from_predictions(truth, parts[0][2] > 0, labels=[False, True], display_labels=[NO, YES],
                                                ax=ax, colorbar=False)  # fmt: skip
        ax.set_title(f"test split ({len(truth)} examples)")
        matrix.tight_layout()
        roc, ax = plt.subplots(figsize=(4.5, 4))
        for name, part, s in parts:
            truth = np.array(part["label"] == YES)
            if len(set(truth)) == 2:
                RocCurveDisplay.from_predictions(truth, s, name=name, ax=ax)
        ax.plot([0, 1], [0, 1], ls=":", color="grey", lw=0.8)
        ax.set_title("ROC curve (score = logit Yes - logit No)")
        roc.tight_layout()
        return [("figures/confusion_matrix.png", matrix), ("figures/roc_curve.png", roc)]
