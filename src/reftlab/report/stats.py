"""The statistics of a report: means over seeds with a 95% confidence interval (Student t), the
paired difference against a reference group (a bootstrap over the same test reviews, stratified by
seed and fold, Holm-adjusted over the table; Welch's t-test over seeds where a run has no
predictions), chance, and the choice, made on validation accuracy only.

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


def paired_bootstrap(pairs, n_boot: int = 2000, seed: int = 0) -> tuple[float, float, float, float]:
    """Two configurations scored on the same reviews: `pairs` holds, per replicate (a seed, a fold),
    their 0/1 correctness on that replicate's test reviews, aligned review by review. Returns the
    difference in accuracy (mean over replicates), its 95% bootstrap interval and the two-sided p
    of "no difference": reviews resampled with replacement within each replicate (a bootstrap
    stratified by seed and fold), `n_boot` times."""
    rng = np.random.default_rng(seed)
    diffs = [np.asarray(a, float) - np.asarray(b, float) for a, b in pairs]
    observed = float(np.mean([d.mean() for d in diffs]))
    boot = np.zeros(n_boot)
    for d in diffs:
        boot += d[rng.integers(0, len(d), size=(n_boot, len(d)))].mean(axis=1)
    boot /= len(diffs)
    low, high = np.percentile(boot, [2.5, 97.5])
    p = min(1.0, 2 * min(float((boot <= 0).mean()), float((boot >= 0).mean())))
    return observed, float(low), float(high), p


def holm(pvalues: list[float]) -> list[float]:
    """Holm's step-down adjustment for the comparisons of one table (NaN: no comparison)."""
    order = sorted((p, i) for i, p in enumerate(pvalues) if not math.isnan(p))
    adjusted, running = [float("nan")] * len(pvalues), 0.0
    for rank, (p, i) in enumerate(order):
        running = max(running, min(1.0, (len(order) - rank) * p))
        adjusted[i] = running
    return adjusted


def paired_against(
    runs: pd.DataFrame, reference: pd.DataFrame, correct
) -> tuple[float, float, float, float] | None:
    """`paired_bootstrap` of a group's runs against the reference group's, replicate by replicate:
    runs pair by (seed, fold), or by fold alone when one side does not depend on the seed (TF-IDF,
    zero-shot); `correct(run_id)` is a run's per-review correctness on its test split (a Series by
    review text), None where the run has no predictions. None: no replicate pairs."""

    def keyed(rows, by):
        return {tuple(r[k] for k in by): r["run_id"] for _, r in rows.iterrows()}

    for by in (("seed", "fold"), ("fold",)):
        mine, theirs = keyed(runs, by), keyed(reference, by)
        common = [k for k in mine if k in theirs]
        if common:
            break
    else:
        return None
    pairs = []
    for k in common:
        a, b = correct(mine[k]), correct(theirs[k])
        if a is None or b is None:
            return None
        shared = a.index.intersection(b.index)
        if len(shared) == 0:
            return None
        pairs.append((a.loc[shared].to_numpy(), b.loc[shared].to_numpy()))
    return paired_bootstrap(pairs)


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
