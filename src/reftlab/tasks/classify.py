"""`task=classify`: any label set, the labels kept as the strings they are.

The labels are `task.labels` (a list, in that order) or every label the prepared data holds (sorted).
Each label is an answer the assistant says after the chat prompt (its end-of-turn included); a
prompt's score for a label is the log-likelihood of that whole answer (not only its first token:
"half-true" and "mostly-true" share theirs), and P(label) is the softmax over the labels. Metrics:
accuracy, macro-F1 (`f1`), per-class precision and recall, log loss, ROC AUC (one-vs-rest macro for
more than two labels), the chance rate (always the majority label), the k x k confusion matrix.
"""

from __future__ import annotations

import re

import numpy as np

from . import register
from .base import LABEL, Task
from .chat import PromptBuilder


def softmax(scores: np.ndarray) -> np.ndarray:
    z = scores - scores.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def metric_name(label: str) -> str:
    """A label as part of an MLflow metric name (letters, digits, '_', '-', '.', ' ', '/' only)."""
    return re.sub(r"[^A-Za-z0-9_\-. /]", "_", str(label))


def label_metrics(labels: list[str], truth, scores: np.ndarray) -> dict:
    """The metrics of `scores` [N, k] (one column per label, in `labels`' order) against `truth`."""
    from sklearn.metrics import (
        accuracy_score,
        f1_score,
        log_loss,
        precision_recall_fscore_support,
        roc_auc_score,
    )

    truth = np.asarray([str(t) for t in truth])
    probs = softmax(np.asarray(scores, dtype=np.float64))
    pred = np.asarray(labels)[probs.argmax(axis=1)]
    out = {
        "accuracy": float(accuracy_score(truth, pred)),
        "f1": float(f1_score(truth, pred, labels=labels, average="macro", zero_division=0)),
        "log_loss": float(log_loss(truth, probs, labels=labels)),
        "chance": float(max((truth == lab).mean() for lab in labels)) if len(truth) else float("nan"),
    }
    precision, recall, _, _ = precision_recall_fscore_support(truth, pred, labels=labels, zero_division=0)
    for lab, p, r in zip(labels, precision, recall, strict=True):
        out[f"precision.{metric_name(lab)}"] = float(p)
        out[f"recall.{metric_name(lab)}"] = float(r)
    present = sorted(set(truth))
    if len(present) == len(labels) == 2:
        out["roc_auc"] = float(roc_auc_score(truth == labels[1], probs[:, 1]))
    elif len(present) == len(labels) > 2:
        out["roc_auc"] = float(roc_auc_score(truth, probs, labels=labels, multi_class="ovr", average="macro"))
    return out


@register
class Classify(Task):
    names = ("classify",)
    family = LABEL
    f1_name = "macro-F1"
    display = "labels"
    val_metrics = ("accuracy", "f1", "log_loss", "roc_auc")

    def __init__(self, tcfg):
        super().__init__(tcfg)
        given = tcfg.get("labels") if tcfg is not None else None
        self.labels = [str(x) for x in given] if given else None

    def saved(self) -> dict:
        return {"name": self.names[0], "labels": list(self.labels or [])}

    def check(self, cfg) -> None:
        from ..config import ConfigError

        if self.labels is not None:
            if len(self.labels) < 2:
                raise ConfigError(
                    f"task.labels={self.labels} is not valid: give at least 2 labels (or null: the data's)"
                )
            if len(set(self.labels)) != len(self.labels):
                raise ConfigError(f"task.labels={self.labels} is not valid: a label is listed twice")

    def check_data(self, prepared) -> None:
        from ..data.recipes import DataError

        found = sorted(
            {str(x) for part in (prepared.train, prepared.val, prepared.eval) for x in part["label"]}
        )
        if self.labels is None:
            self.labels = found
            if len(found) < 2:
                raise DataError(
                    f"the data has {len(found)} label(s) ({found}): a classification needs at least 2"
                )
        else:
            outside = [x for x in found if x not in self.labels]
            if outside:
                raise DataError(f"label(s) {outside} of the data are not in task.labels={self.labels}: add them, "
                                "or keep only those rows (data.keep.<column>=...)")  # fmt: skip

    def builder(self, tokenizer, cfg, prepared=None):
        if self.labels is None and prepared is not None:
            self.check_data(prepared)
        return PromptBuilder(
            tokenizer, cfg.data.system_prompt, cfg.trainer.max_length, answers=tuple(self.labels)
        )

    def score(self, scorer, builder, frame, batch_size: int):
        answers = [builder.answer_ids[lab] for lab in self.labels]
        prompts = builder.prompts(frame["text"])
        return (
            np.stack(scorer.loglik(prompts, [answers] * len(prompts), batch_size))
            if prompts
            else np.zeros((0, len(answers)))
        )

    def metrics(self, frame, scores) -> dict:
        return label_metrics(self.labels, frame["label"], scores)

    def table(self, frame, scores):
        scores = np.asarray(scores, dtype=np.float64)
        probs = softmax(scores) if len(scores) else scores
        return frame.assign(
            prediction=np.asarray(self.labels)[probs.argmax(axis=1)] if len(scores) else [],
            p_prediction=probs.max(axis=1) if len(scores) else [],
            labels=[list(self.labels)] * len(frame),
            probabilities=list(probs),
            loglik=list(scores),
        )

    def served_outputs(self) -> list[tuple[str, str]]:
        return [("label", "string")] + [(f"p_{lab}", "double") for lab in self.labels]

    def answers(self, table):
        """Each text's label and the probability of each label (`p_<label>`, in the task's order)."""
        probs = np.asarray(list(table["probabilities"]), dtype=np.float64).reshape(
            len(table), len(self.labels)
        )
        each = {f"p_{lab}": probs[:, i] for i, lab in enumerate(self.labels)}
        return table[["text"]].assign(label=table["prediction"], **each)

    def figures(self, prepared, scores) -> list[tuple[str, object]]:
        """The test split's k x k confusion matrix."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from sklearn.metrics import ConfusionMatrixDisplay

        test = np.asarray(scores)[len(prepared.val) :]
        pred = np.asarray(self.labels)[test.argmax(axis=1)]
        k = len(self.labels)
        fig, ax = plt.subplots(figsize=(3 + 0.6 * k, 2.6 + 0.6 * k))
        ConfusionMatrixDisplay.from_predictions([str(x) for x in prepared.eval["label"]], pred, labels=self.labels,
                                                ax=ax, colorbar=False, xticks_rotation=30 if k > 3 else "horizontal")  # fmt: skip
        ax.set_title(f"test split ({len(test)} examples, {k} labels)")
        fig.tight_layout()
        return [("figures/confusion_matrix.png", fig)]
