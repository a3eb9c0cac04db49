"""The results table as people read it: one row per group, numbers formatted (percentages, counts,
seconds, shares), the chosen and the reference group marked, p-values against the reference.
A frame of text; `render` writes it as Markdown or HTML."""

from __future__ import annotations

import math

import pandas as pd

from .runs import method_name, test_correct
from .stats import holm, label, paired_against, welch_p


def missing(value) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def pct(value, ci=None) -> str:
    if missing(value):
        return "-"
    text = f"{100 * value:.1f}%"
    if ci is not None and not math.isnan(ci):
        text += f" ± {100 * ci:.1f}"
    return text


def with_interval(row: pd.Series) -> str:
    """A group's test accuracy with its 95% interval (`stats.accuracy_interval`): "± half-width" over
    its replicates (Student t), its bounds where that would leave [0, 100], its bounds marked †
    where they come from the test reviews (a bootstrap: fewer than 3 replicates)."""
    accuracy, low, high, how = row["accuracy"], row["ci_low"], row["ci_high"], row["ci_how"]
    if how == "t" and 0 <= accuracy - row["ci95"] and accuracy + row["ci95"] <= 1:
        return pct(accuracy, row["ci95"])
    if how in ("t", "bootstrap"):
        return f"{pct(accuracy)} [{100 * low:.1f}, {100 * high:.1f}]" + ("†" if how == "bootstrap" else "")
    return pct(accuracy)


def count(value) -> str:
    return "-" if missing(value) else f"{int(round(value)):,}"


def seconds(value) -> str:
    if missing(value):
        return "-"
    return f"{value:.1f} s" if value < 10 else f"{value:,.0f} s"


def share(value) -> str:
    if missing(value):
        return "-"
    return f"{value:.4f}%" if value < 0.1 else f"{value:.2f}%"


def p_value(p: float) -> str:
    """A p-value, starred below 0.05."""
    if math.isnan(p):
        return "-"
    return ("<0.001" if p < 0.001 else f"{p:.3f}") + (" *" if p < 0.05 else "")


def against_reference(table: pd.DataFrame, ref: int, correct=test_correct) -> dict:
    """Per group, its test accuracy against the reference group's: (difference in points, 95% CI
    low, high, Holm-adjusted p, how it was tested, how its runs paired). Paired over the same reviews
    where both have predictions, every replicate paired (`stats.replicate_pairs`); else Welch's
    t-test over seeds (no interval)."""
    ref_runs, found = table.loc[ref, "_runs"], {}
    for i, row in table.iterrows():
        if i == ref:
            continue
        paired = paired_against(row["_runs"], ref_runs, correct)
        if paired is not None:
            diff, low, high, p, how = paired
            found[i] = (diff, low, high, p, "paired", how)
        else:
            diff = row["_runs"]["accuracy"].mean() - ref_runs["accuracy"].mean()
            p = welch_p(row["_runs"]["accuracy"], ref_runs["accuracy"])
            found[i] = (diff, float("nan"), float("nan"), p, "welch", "")
    adjusted = holm([v[3] for v in found.values()])
    return {i: (*v[:3], p, *v[4:]) for (i, v), p in zip(found.items(), adjusted, strict=True)}


def difference(diff: float, low: float, high: float) -> str:
    if missing(diff):
        return "-"
    text = f"{100 * diff:+.1f} pts"
    return text if missing(low) else f"{text} [{100 * low:+.1f}, {100 * high:+.1f}]"


def harness(table: pd.DataFrame, row) -> dict:
    """A multiple-choice group's test accuracy as the evaluation harness scores it (acc, acc_norm),
    where the table has any (a report of Yes/No or label runs shows no such columns)."""
    if "acc" not in table or table["acc"].isna().all():
        return {}
    return {"test acc (harness)": pct(row["acc"]), "test acc_norm": pct(row["acc_norm"])}


def f1_label(table: pd.DataFrame) -> str:
    """The F1 column's name: binary F1 of Yes (yes_no), macro-F1 over k labels (classify), or both."""
    tasks = set(table["task"]) if "task" in table else {"yes_no"}
    if tasks & {"classify"}:
        return "macro-F1" if tasks <= {"classify", "choice"} else "F1 (macro for classify)"
    return "F1"


def display(
    table: pd.DataFrame, keys: list[str], chosen: dict, ref: int | None, compared: dict | None
) -> pd.DataFrame:
    """The table as people read it: formatted numbers, marks for what was chosen, and each group's
    paired difference against `ref` and how its runs paired (`compared`: `against_reference`'s,
    None without a reference)."""
    rows = []
    for i, row in table.iterrows():
        marks = []
        if i == chosen["overall"]:
            marks.append("**chosen** (best validation)")
        elif i in chosen["per_method"].values():
            marks.append(f"best {method_name(row['method'])} (validation)")
        if i == ref:
            marks.append("reference")
        out = {label(k, keys): (method_name(row[k]) if k == "method" else row[k]) for k in keys}
        out |= {
            "seeds": int(row["seeds"]),
            "val acc": pct(row["val_accuracy"]),
            "test acc (95% CI)": with_interval(row),
            f1_label(table): f"{row['f1']:.3f}" if not math.isnan(row["f1"]) else "-",
            **harness(table, row),
            "trainable": count(row["trainable_params"]),
            "% of model": share(row["trainable_percent"]),
            "train time": seconds(row["train_seconds"]),
            "cache pass": seconds(row["cache_seconds"]),
        }
        if compared is not None:
            diff, low, high, p, how, paired_on = compared.get(i, (float("nan"),) * 4 + ("", ""))
            out["vs reference (95% CI)"] = difference(diff, low, high)
            out["p (Holm)"] = p_value(p) + (" (Welch)" if how == "welch" else "")
            out["paired on"] = paired_on or "-"
        out["note"] = ", ".join(marks)
        rows.append(out)
    return pd.DataFrame(rows)
