"""The task protocol: what a question looks like to the model and how its answer is scored.

A `Task` owns one family of questions end to end: how an example becomes prompt and target token
ids (`builder`, `examples`), which answers a stored prefix keeps beside each prompt (`tails`), how a
trained model's answers are scored (`score`, through a scorer: the engine, or a stock pass), the
metrics, figures and the predictions table, and its checks of the settings and the data. A method
says which task families it serves (`Method.families`); `run.py` knows no task by name.

Scores are what `score` returns for the rows it is given (validation, then test): an array with one
row per example, or a dict of such arrays; `take` cuts them by rows.

A saved model answers as its task (`serving/`: predict.py and the MLflow model): `request` turns what
a caller sends into the task's rows (refusing what cannot be scored), `answers` gives the columns
served from its `table`, and `served_inputs` / `served_outputs` are the MLflow model's signature.
"""

from __future__ import annotations

import numpy as np

LABEL, CHOICE, GENERATE = "label", "choice", "generate"  # families: a label from a fixed set, one of each
# example's options, or a generated answer


def take(scores, rows):
    """The scores of `rows` (a slice or indices) of every array in `scores`."""
    if isinstance(scores, dict):
        return {k: take(v, rows) for k, v in scores.items()}
    return np.asarray(scores)[rows]


def count(scores) -> int:
    """How many examples `scores` hold."""
    return count(next(iter(scores.values()))) if isinstance(scores, dict) else len(scores)


class Task:
    names: tuple[str, ...] = ()
    family: str = LABEL
    display: str = ""
    val_metrics: tuple[str, ...] = ("accuracy",)  # logged again on the validation split as val_<name>
    f1_name: str = "F1"  # what its `f1` metric is (binary F1 of Yes; macro-F1 over k labels)

    def __init__(self, tcfg):
        self.cfg = tcfg

    def saved(self) -> dict:
        """What a saved model keeps of its task (`reft_settings.json`), to answer as it was trained."""
        return {"name": self.names[0]}

    def bind(self, cfg) -> None:
        """What the task takes from the run's other settings (a generated answer's extractor and seed)."""

    def check(self, cfg) -> None:
        """Settings checks before any data is read (a ConfigError naming the value and the choices)."""

    def check_data(self, prepared) -> None:
        """Checks of the prepared data before the model loads (a DataError naming what is wrong)."""

    def builder(self, tokenizer, cfg, prepared=None):
        """What turns this task's rows into prompts and targets for this tokenizer and these settings."""
        raise NotImplementedError

    def examples(self, builder, frame) -> list[tuple[list[int], list[int]]]:
        """(prompt ids, answer ids) training pairs of `frame`'s rows."""
        return builder.examples(frame["text"], frame["label"])

    def tails(self, builder) -> list[list[int]]:
        """The answers (but their last token) a stored prefix keeps after each prompt."""
        return builder.tails

    def score(self, scorer, builder, frame, batch_size: int):
        """The scores of `frame`'s rows through `scorer` (`yes_no`, `loglik`)."""
        raise NotImplementedError

    def metrics(self, frame, scores) -> dict:
        raise NotImplementedError

    def finite(self, scores) -> np.ndarray:
        """Per example: whether its scores are numbers (NaN or inf: the run diverged)."""
        if isinstance(scores, dict):
            return np.logical_and.reduce([self.finite(v) for v in scores.values()])
        a = np.asarray(scores, dtype=float)
        return np.isfinite(a) if a.ndim == 1 else ~np.isnan(a).all(1) & ~np.isinf(a).any(1)

    def table(self, frame, scores):
        """`frame` with each row's scores, probabilities and prediction (predictions.parquet)."""
        raise NotImplementedError

    def run_metrics(self) -> dict:
        """Metrics of the run's scoring as a whole (tokens per second of a decoding), after `score`."""
        return {}

    def sample(self, table):
        """A few predictions to show as an MLflow table (None: none beside predictions.parquet)."""
        return None

    def figures(self, prepared, scores) -> list[tuple[str, object]]:
        """(artifact file, matplotlib figure) pairs of the run."""
        return []

    def judged_labels(self) -> bool:
        """Whether a held-out split of one label says little (a label task's accuracy)."""
        return self.family == LABEL

    # Serving: what a saved model of this task takes and answers. Types are MLflow's column types,
    # "list[<type>]" for a column of lists.
    def served_inputs(self) -> list[tuple[str, str, bool]]:
        """(column, type, required) of what a caller sends; the first is what a printed answer shows."""
        return [("text", "string", True)]

    def served_outputs(self) -> list[tuple[str, str]]:
        """(column, type) of what a served model answers."""
        raise NotImplementedError

    def request(self, frame):
        """The rows to score from a caller's frame (a label task: its `text` column), or a DataError
        naming the rows that cannot be scored: a missing (null) text. An empty string is a text."""
        import pandas as pd

        from ..data.recipes import DataError, row_numbers, rows_text

        if "text" not in frame:
            raise DataError(
                f"no 'text' column: a {self.display} model takes texts (its columns: {list(frame.columns)})"
            )
        missing = frame["text"].isna().to_numpy()
        if missing.any():
            rows = rows_text(row_numbers(np.flatnonzero(missing)), int(missing.sum()))
            raise DataError(f"'text' is missing (null) in {rows} (row 1 = the first): give every row a text, or "
                            'leave those rows out (an empty string "" is a text)')  # fmt: skip
        return pd.DataFrame({"text": frame["text"].astype(str).tolist()})

    def answers(self, table):
        """What is served for each row of `table` (`self.table` of the requested rows): the input
        shown first, then `served_outputs`."""
        raise NotImplementedError
