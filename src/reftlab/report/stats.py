"""The statistics of a report: means over seeds with a 95% confidence interval (Student t), Welch's
t-test against a reference group, chance, and the choice, made on validation accuracy only.

- Per group: seeds, validation accuracy, test accuracy mean with its 95% CI over seeds, F1,
  trainable parameters, train time.
- The best group overall and per method are chosen by mean validation accuracy; their test
  accuracy is reported beside it, never used to choose.
- The reference group is the one with the project's default settings, or `--reference`.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from .. import tracking


def ci95(values: pd.Series) -> float:
    """Half-width of the 95% confidence interval of the mean (Student t); NaN for one value."""
    from scipy import stats

    v = values.dropna()
    if len(v) < 2:
        return float("nan")
    return float(stats.t.ppf(0.975, len(v) - 1) * v.std(ddof=1) / math.sqrt(len(v)))


def welch_p(a: pd.Series, b: pd.Series) -> float:
    from scipy import stats

    a, b = a.dropna(), b.dropna()
    if len(a) < 2 or len(b) < 2 or (a.std() == 0 and b.std() == 0):
        return float("nan")
    return float(stats.ttest_ind(a, b, equal_var=False).pvalue)


def summarise(finished: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    """One row per group (the keys' values) with means over seeds and the 95% CI of test accuracy."""
    rows = []
    for values, g in finished.groupby(keys, sort=False, dropna=False):
        values = values if isinstance(values, tuple) else (values,)
        rows.append(
            {
                "method": g["method"].iloc[0],
                **dict(zip(keys, values, strict=True)),
                "seeds": len(g),
                "val_accuracy": g["val_accuracy"].mean(),
                "accuracy": g["accuracy"].mean(),
                "ci95": ci95(g["accuracy"]),
                "f1": g["f1"].mean(),
                "trainable_params": g["trainable_params"].max(),
                "trainable_percent": g["trainable_percent"].max(),
                "train_seconds": g["step_seconds"].mean(),
                "cache_seconds": g["cache_seconds"].max(),
                "peak_memory_mb": g["peak_memory_mb"].mean(),
                "chance": chance(g),
                "_runs": g,
            }
        )
    table = pd.DataFrame(rows)
    return table.sort_values(keys, key=lambda s: s.map(sort_key)).reset_index(drop=True)


def sort_key(value):
    """Numbers in numeric order, then lists by length (layer sets: [15] before [9, 15, 21]), then text."""
    try:
        return (0, float(value), "")
    except (TypeError, ValueError):
        text = str(value)
        if text.startswith("[") and text.endswith("]"):
            return (1, float(text.count(",") + 1), text)
        return (2, 0.0, text)


def chance(g: pd.DataFrame) -> float:
    """Accuracy of always answering the majority label of the test set."""
    pos = (g["tp"] + g["fn"]).iloc[0]
    neg = (g["tn"] + g["fp"]).iloc[0]
    return float(max(pos, neg) / (pos + neg)) if pos + neg > 0 else float("nan")


def choose(table: pd.DataFrame) -> dict:
    """Index of the chosen group overall and per method: highest mean validation accuracy.
    Test accuracy plays no part. Groups without a validation score cannot be chosen."""
    scored = table[table["val_accuracy"].notna()]
    if scored.empty:
        return {"overall": None, "per_method": {}}
    per_method = {m: int(g["val_accuracy"].idxmax()) for m, g in scored.groupby("method", sort=False)}
    return {"overall": int(scored["val_accuracy"].idxmax()), "per_method": per_method}


def default_settings() -> dict:
    """The project's default settings (conf/ composed without overrides), flattened."""
    try:
        from omegaconf import OmegaConf

        from ..config.compose import compose

        flat = tracking.flatten(OmegaConf.to_container(compose([]), resolve=False))
        return {**flat, "method": flat.get("intervention.method")}
    except Exception:  # no conf/ at hand: no reference group
        return {}


def reference_group(table: pd.DataFrame, keys: list[str], reference: dict) -> int | None:
    """The group whose settings match `reference` on every key it names (and the method)."""
    wanted = {k: str(v) for k, v in reference.items() if k in keys}
    if not wanted:
        return None
    match = table[np.logical_and.reduce([table[k].astype(str) == v for k, v in wanted.items()])]
    return int(match.index[0]) if len(match) == 1 else None
