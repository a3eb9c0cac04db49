"""The statistics of a report: means over seeds with a 95% confidence interval (Student t from 3
replicates on, else a bootstrap over the test reviews), the paired difference against a reference
group (every replicate paired, a bootstrap over the same test reviews drawn once a fold, Holm-adjusted
over the table; Welch's t-test over seeds where a run has no predictions), chance, and the choice,
made on validation accuracy only.

- Per group: seeds, validation accuracy, test accuracy mean with its 95% interval, F1, trainable
  parameters, train time. An interval never leaves [0, 1].
- The best group overall and per method are chosen by mean validation accuracy; their test
  accuracy is reported beside it, never used to choose.
- The reference group is the one with the project's default settings, or `--reference` (a setting
  named as people type it: `rank=4`, `rank=4.0`, `method=tfidf`; one that finds no single group is a
  `ConfigError` naming the groups).
"""

from __future__ import annotations

import math
from collections import defaultdict
from itertools import product

import numpy as np
import pandas as pd

from .. import tracking
from ..config import ConfigError
from .runs import method_name

# Fewer replicates (seeds x folds) than this: a group's interval is the bootstrap one over its test
# reviews (Student t with 1 degree of freedom spans 59.4% ± 119.1 for two seeds 19 points apart).
MIN_REPLICATES = 3


def label(key: str, keys: list[str]) -> str:
    """Short column name: the last part, unless two keys share it."""
    short = key.split(".")[-1]
    return short if sum(k.split(".")[-1] == short for k in keys) == 1 else key


def ci95(values: pd.Series) -> float:
    """Half-width of the 95% confidence interval of the mean (Student t); NaN for one value."""
    from scipy import stats

    v = values.dropna()
    if len(v) < 2:
        return float("nan")
    return float(stats.t.ppf(0.975, len(v) - 1) * v.std(ddof=1) / math.sqrt(len(v)))


def resample(strata: list[np.ndarray], n_boot: int = 2000, seed: int = 0) -> tuple[float, np.ndarray]:
    """The mean over every row of `strata` of its mean over the columns (a run's or a pair's score on
    each test review), observed and `n_boot` times bootstrapped: each stratum (rows scored on the same
    reviews, e.g. the runs of one fold) draws its reviews with replacement once a draw, for all of
    its rows alike."""
    rng = np.random.default_rng(seed)
    rows = sum(len(m) for m in strata)
    observed = float(sum(m.mean(axis=1).sum() for m in strata) / rows)
    boot = np.zeros(n_boot)
    for m in strata:
        total = m.sum(axis=0)  # the mean over rows is linear: draw the reviews of their sum
        boot += total[rng.integers(0, m.shape[1], size=(n_boot, m.shape[1]))].mean(axis=1)
    return observed, boot / rows


def paired_bootstrap(
    pairs, n_boot: int = 2000, seed: int = 0, strata=None
) -> tuple[float, float, float, float]:
    """Two configurations scored on the same reviews: `pairs` holds, per replicate pair, their 0/1
    correctness on that replicate's test reviews, aligned review by review. Returns the difference
    in accuracy (mean over pairs), its 95% bootstrap interval and the two-sided p of "no difference":
    reviews resampled with replacement `n_boot` times, within each stratum (`strata`: a label per
    pair, e.g. its fold, whose pairs are aligned on the same reviews and share each draw; default:
    each pair its own)."""
    by = defaultdict(list)
    for label, (a, b) in zip(range(len(pairs)) if strata is None else strata, pairs, strict=True):
        by[label].append(np.asarray(a, float) - np.asarray(b, float))
    observed, boot = resample([np.stack(rows) for rows in by.values()], n_boot, seed)
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


def replicate_pairs(runs: pd.DataFrame, reference: pd.DataFrame) -> tuple[list[tuple[str, str, str]], str]:
    """Which run of a group to hold against which of the reference group's, fold by fold (a fold's runs
    are scored on the same reviews): by seed where both ran the same seeds on that fold, else every
    run against every run of the other (a reference that does not depend on the seed, TF-IDF or
    zero-shot, run once a fold under any seed, serves each of the group's seeds; and the other way
    round). Returns (fold, run, reference run) per pair and how they pair, e.g. "3 seeds × 5 folds
    vs 1 run a fold"."""
    pairs, shapes = [], []
    for fold, mine in runs.groupby("fold", sort=False):
        theirs = reference[reference["fold"] == fold]
        if theirs.empty:
            continue
        by_seed = set(mine["seed"]) == set(theirs["seed"])  # a run a seed on each side: one seed each
        if by_seed:
            ids = zip(mine.sort_values("seed")["run_id"], theirs.sort_values("seed")["run_id"], strict=True)
        else:
            ids = product(mine["run_id"], theirs["run_id"])
        pairs += [(fold, a, b) for a, b in ids]
        shapes.append((len(mine), len(theirs), by_seed and len(mine) > 1))
    if not pairs:
        return [], ""
    return pairs, pairing(shapes, folded=any(fold != "-" for fold, _, _ in pairs))


def pairing(shapes: list[tuple[int, int, bool]], folded: bool) -> str:
    """How two groups pair, from (runs of the group, runs of the reference, by seed) per fold."""

    def count(runs) -> str:
        low, high = min(runs), max(runs)
        return "1 run" if high == 1 else f"{low if low == high else f'{low}-{high}'} seeds"

    mine, theirs = count([m for m, _, _ in shapes]), count([t for _, t, _ in shapes])
    text = f"{mine} × {len(shapes)} folds vs {theirs} a fold" if folded else f"{mine} vs {theirs}"
    by_seed = [b for _, _, b in shapes]
    return text + (", by seed" if all(by_seed) else ", by seed where the seeds agree" if any(by_seed) else "")


def on_common_reviews(scored: list[pd.Series]) -> list[np.ndarray]:
    """Each run's correctness on the reviews all of them were scored on, in one order."""
    common = scored[0].index
    for s in scored[1:]:
        common = common.intersection(s.index)
    return [s.loc[common].to_numpy(float) for s in scored]


def paired_against(
    runs: pd.DataFrame, reference: pd.DataFrame, correct
) -> tuple[float, float, float, float, str] | None:
    """`paired_bootstrap` of a group's runs against the reference group's, every replicate paired
    (`replicate_pairs`), a fold's reviews drawn once for all of its pairs; `correct(run_id)` is a
    run's per-review correctness on its test split (a Series by review text), None where the run has
    no predictions. Returns its difference, interval and p, and how the runs paired. None: no
    replicate pairs, or a run without predictions."""
    pairs, how = replicate_pairs(runs, reference)
    scored = {run_id: correct(run_id) for _, a, b in pairs for run_id in (a, b)}
    if not pairs or any(s is None for s in scored.values()):
        return None
    aligned, strata = [], []
    for fold in dict.fromkeys(fold for fold, _, _ in pairs):
        ids = [(a, b) for f, a, b in pairs if f == fold]
        order = list(dict.fromkeys(run_id for pair in ids for run_id in pair))
        arrays = dict(zip(order, on_common_reviews([scored[r] for r in order]), strict=True))
        if not len(arrays[order[0]]):
            return None
        aligned += [(arrays[a], arrays[b]) for a, b in ids]
        strata += [fold] * len(ids)
    return (*paired_bootstrap(aligned, strata=strata), how)


def welch_p(a: pd.Series, b: pd.Series) -> float:
    from scipy import stats

    a, b = a.dropna(), b.dropna()
    if len(a) < 2 or len(b) < 2 or (a.std() == 0 and b.std() == 0):
        return float("nan")
    return float(stats.ttest_ind(a, b, equal_var=False).pvalue)


def review_strata(runs: pd.DataFrame, correct=None) -> list[np.ndarray]:
    """The runs' 0/1 correctness on their test reviews, as `resample`'s strata: a fold's runs aligned on
    its reviews (`correct`, their predictions, as in `paired_against`); where a run has none, each run
    its own stratum rebuilt from its confusion counts (tp + tn right of tp + tn + fp + fn). Empty:
    neither."""
    scored = {run_id: correct(run_id) for run_id in runs["run_id"]} if correct is not None else {}
    if scored and all(s is not None for s in scored.values()):
        folds = [fold["run_id"] for _, fold in runs.groupby("fold", sort=False)]
        strata = [np.stack(on_common_reviews([scored[run_id] for run_id in fold])) for fold in folds]
        if all(m.shape[1] for m in strata):
            return strata
    if not {"tp", "tn", "fp", "fn"} <= set(runs):
        return []
    counts = runs[["tp", "tn", "fp", "fn"]]
    if counts.isna().any().any() or (counts.sum(axis=1) == 0).any():
        return []
    return [
        np.r_[np.ones(int(r.tp + r.tn)), np.zeros(int(r.fp + r.fn))][None, :] for r in counts.itertuples()
    ]


def accuracy_interval(runs: pd.DataFrame, correct=None) -> tuple[float, float, str]:
    """The 95% interval of a group's mean test accuracy and how it was made: (low, high, "t") over its
    replicates (seeds x folds; Student t) from `MIN_REPLICATES` on, cut to [0, 1]; else (low, high,
    "bootstrap") over its test reviews (`review_strata`, resampled as `resample` does); NaN, "" where
    neither can be made."""
    accuracy = runs["accuracy"].dropna()
    if len(accuracy) >= MIN_REPLICATES:
        mean, half = accuracy.mean(), ci95(accuracy)
        return max(0.0, mean - half), min(1.0, mean + half), "t"
    strata = review_strata(runs, correct)
    if not strata:
        return float("nan"), float("nan"), ""
    low, high = np.percentile(resample(strata)[1], [2.5, 97.5])
    return float(low), float(high), "bootstrap"


def summarise(finished: pd.DataFrame, keys: list[str], correct=None) -> pd.DataFrame:
    """One row per group (the keys' values) with means over seeds and the 95% interval of test
    accuracy (`accuracy_interval`; `correct`: a run's per-review correctness, as `paired_against`
    takes it; None: the confusion counts). `ci95` is the Student t half-width, NaN where the interval
    is not Student t's."""
    rows = []
    for values, g in finished.groupby(keys, sort=False, dropna=False):
        values = values if isinstance(values, tuple) else (values,)
        low, high, how = accuracy_interval(g, correct)
        rows.append(
            {
                "method": g["method"].iloc[0],
                **dict(zip(keys, values, strict=True)),
                "seeds": len(g),
                "val_accuracy": g["val_accuracy"].mean(),
                "accuracy": g["accuracy"].mean(),
                "ci95": ci95(g["accuracy"]) if how == "t" else float("nan"),
                "ci_low": low,
                "ci_high": high,
                "ci_how": how,
                "f1": g["f1"].mean(),
                "acc": g["acc"].mean(),  # multiple choice as the evaluation harness scores it
                "acc_norm": g["acc_norm"].mean(),
                "trainable_params": g["trainable_params"].max(),
                "trainable_percent": g["trainable_percent"].max(),
                "train_seconds": g["step_seconds"].mean(),
                "cache_seconds": g["cache_seconds"].max(),
                "peak_memory_mb": g["peak_memory_mb"].mean(),
                "chance": chance(g),
                "task": g["task.name"].iloc[0] if "task.name" in g else "yes_no",
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
    """The chance rate its runs logged (their task's: the majority label, the mean of 1/options), else
    (Yes/No runs of older code) the accuracy of always answering the majority label of the test set."""
    if "chance" in g and g["chance"].notna().any():
        return float(g["chance"].dropna().iloc[0])
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


def same_value(have, typed, column: str) -> bool:
    """Whether a setting's value (as logged) is the one typed: the same text (case aside), the same
    number (`1.0` is `1`), or, for the method, its display name (`TF-IDF` is `tfidf`)."""
    have, typed = str(have).replace(" ", "").lower(), str(typed).replace(" ", "").lower()
    if have == typed or (column == "method" and method_name(have).replace(" ", "").lower() == typed):
        return True
    try:
        return float(have) == float(typed)
    except ValueError:
        return False


def matching(table: pd.DataFrame, wanted: dict) -> list[int]:
    """The groups whose settings (as their runs logged them) are `wanted`'s, setting by setting."""
    settings = {i: runs.iloc[0] for i, runs in table["_runs"].items()}
    return [i for i, s in settings.items() if all(same_value(s.get(k, "-"), v, k) for k, v in wanted.items())]


def group_names(table: pd.DataFrame, keys: list[str], rows=None) -> str:
    """Groups as `--reference` takes them: "method=loreft, rank=4; method=tfidf" (no "-" settings)."""
    rows = table.index if rows is None else rows
    names = [
        ", ".join(f"{label(k, keys)}={table.loc[i, k]}" for k in keys if table.loc[i, k] != "-") for i in rows
    ]
    return "; ".join(names)


def setting_named(name: str, columns: list[str], keys: list[str]) -> str:
    """The setting a `--reference` key names: itself, or the one setting it ends (`rank`:
    `intervention.rank`); `intervention.method` is the method. ConfigError where none or several."""
    name = "method" if name == "intervention.method" else name
    if name in columns:
        return name
    found = [c for c in columns if c.endswith("." + name)]
    if len(found) == 1:
        return found[0]
    if found:
        raise ConfigError(f"--reference {name}: it could be {' or '.join(found)}; give the full name")
    told = ", ".join(label(k, keys) for k in keys)
    raise ConfigError(f"--reference: no setting named {name!r}; the groups differ in {told}")


def find_reference(table: pd.DataFrame, keys: list[str], reference: dict) -> tuple[int, list[str]]:
    """The one group `--reference` names (settings as people type them: `rank=4` for
    intervention.rank, `rank=4.0`, `method=tfidf` or `TF-IDF`) and what a reader should know of how
    it matched (a setting that is no group key tells no groups apart). ConfigError naming the groups
    where it names none or several."""
    columns = ["method"] + [c for c in table.loc[table.index[0], "_runs"].columns if "." in c]
    try:
        wanted = {setting_named(k, columns, keys): v for k, v in reference.items()}
    except ConfigError as e:
        raise ConfigError(f"{e}. The groups: {group_names(table, keys)}") from None
    typed = " ".join(f"{k}={v}" for k, v in reference.items())
    found = matching(table, wanted)
    if not found:
        raise ConfigError(f"--reference {typed} matches no group. The groups: {group_names(table, keys)}")
    if len(found) > 1:
        several = group_names(table, keys, found)
        raise ConfigError(f"--reference {typed} matches {len(found)} groups ({several}): add a setting that tells "
                          f"them apart. The groups: {group_names(table, keys)}")  # fmt: skip
    told = ", ".join(label(k, keys) for k in keys)
    apart = [
        f"{k}={v}: not among the settings that tell the groups apart ({told})"
        for k, v in wanted.items()
        if k not in keys
    ]
    return found[0], apart


def reference_group(table: pd.DataFrame, keys: list[str], reference: dict) -> int | None:
    """The group whose settings match `reference` (the project's defaults) on every key it names
    (and the method), and on every intervention setting its runs logged (a LoReFT of rank 8 at
    f7+l7 is not the default LoReFT, even where only the method tells groups apart); None where no
    single group does."""
    wanted = {k: v for k, v in reference.items() if k in keys}
    if not wanted:
        return None
    method = {
        k: v for k, v in reference.items() if k.startswith("intervention.") and k != "intervention.method"
    }
    found = [i for i in matching(table, wanted)
             if all(same_value(s, method[k], k) for k, s in table.loc[i, "_runs"].iloc[0].items()
                    if k in method and isinstance(s, str) and s != "-")]  # fmt: skip
    return found[0] if len(found) == 1 else None
