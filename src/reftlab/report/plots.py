"""The plots of a report: each group's paired difference against the reference group (points,
95% CI over the same reviews); test accuracy (mean, its 95% interval as the table gives it: over
seeds and folds, or over the test reviews where fewer than 3, never past [0, 100]) against each
setting the experiment varies, and against trainable parameters and train time, with reference
lines (chance, zero-shot, TF-IDF, LoRA at its validation-chosen best, from any experiment on the
same data)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from .runs import method_name, untrained, varying
from .stats import sort_key, summarise
from .tables import label, pct

# Axes a plot can have, in order of preference: (setting, label, numeric, log scale).
AXES = (
    ("intervention.layer", "layer", True, False),
    ("intervention.rank", "rank", True, True),
    ("intervention.positions", "positions", False, False),
    ("trainer.epochs", "epochs", True, False),
    ("trainer.lr", "learning rate", True, True),
    ("data.max_train", "training examples", True, False),
    ("trainer.max_length", "max prompt tokens", True, False),
)


def reference_lines(table: pd.DataFrame, others: pd.DataFrame) -> list[tuple[str, float]]:
    """Chance, every method that trains nothing (zero-shot, TF-IDF), and every trained method this
    experiment did not run (e.g. LoRA beside a LoReFT ablation) at its validation-chosen best; from
    this experiment's runs or, failing that, from runs of any experiment on the same data (`others`)."""
    lines = []
    c = table["chance"].dropna()
    if len(c):
        lines.append((f"chance ({chance_kind(table)})", float(c.iloc[0])))
    pool = others if len(others) else pd.DataFrame(columns=["method"])
    wanted = list(dict.fromkeys(list(table.loc[untrained(table["method"]), "method"]) + list(pool["method"])))
    here = set(table["method"])
    for method in wanted:
        is_baseline = bool(untrained(pd.Series([method])).iloc[0])
        if method in here and not is_baseline:
            continue  # a method of this experiment is in the table, not a reference line
        source = table[table["method"] == method]
        if source.empty:
            rows = pool[pool["method"] == method]
            source = summarise(rows, varying(rows))
        scored = source[source["val_accuracy"].notna()]
        best = scored.loc[scored["val_accuracy"].idxmax()] if len(scored) else source.iloc[0]
        lines.append(
            (method_name(method) + ("" if is_baseline else " (best by validation)"), float(best["accuracy"]))
        )
    return lines


def chance_kind(table: pd.DataFrame) -> str:
    """How its task computes chance: the majority label (Yes/No, k labels), the mean of 1/options."""
    kinds = {"choice": "1/options"}
    found = {kinds.get(t, "majority") for t in (table["task"] if "task" in table else ["yes_no"])}
    return found.pop() if len(found) == 1 else "majority or 1/options"


def describe(refs: list[tuple[str, float]]) -> str:
    """The reference lines in words."""
    return "; ".join(f"{n} {pct(v)}" for n, v in refs)


def plots_for(table: pd.DataFrame, keys: list[str]) -> list[tuple[str, str, bool, bool, str]]:
    """(column, file, numeric, log x, title) for each plot worth drawing: one per varied setting,
    then trainable parameters and train time where they differ."""
    trained = table[~untrained(table["method"])]
    out = []
    for key, title, numeric, log_x in AXES:
        if key in keys and trained[key].nunique() > 1:
            is_number = pd.to_numeric(trained[key], errors="coerce").notna().all()
            out.append(
                (key, f"accuracy_vs_{title.replace(' ', '_')}.png", numeric and is_number, log_x, title)
            )
    if trained["trainable_params"].nunique() > 1:
        out.append(
            ("trainable_params", "accuracy_vs_trainable_params.png", True, True, "trainable parameters")
        )
    if len(trained) > 1:
        out.append(("train_seconds", "accuracy_vs_train_time.png", True, False, "train time (s)"))
    return out


def draw(table: pd.DataFrame, keys: list[str], out: Path, refs: list[tuple[str, float]], compared: dict | None = None,
         ref: int | None = None) -> list[tuple[str, str]]:  # fmt: skip
    """Draw every plot worth drawing into `out` (with `compared`, the paired differences against
    the reference group first); returns (file, caption) of each."""
    drawn = []
    if compared:
        differences(table, keys, compared, ref, out / "difference_vs_reference.png")
        drawn.append(("difference_vs_reference.png", "paired difference against the reference"))
    for col, name, numeric, log_x, title in plots_for(table, keys):
        plot(table, keys, col, numeric, log_x, out / name, title, refs)
        drawn.append((name, f"accuracy vs {title}"))
    return drawn


def group_name(row: pd.Series, keys: list[str]) -> str:
    return ", ".join(f"{label(k, keys)}={method_name(row[k]) if k == 'method' else row[k]}" for k in keys)


def differences(table: pd.DataFrame, keys: list[str], compared: dict, ref: int, path: Path) -> list[tuple]:
    """Each group's test accuracy minus the reference group's, in points, with its paired 95%
    interval (bootstrap over the same reviews); filled where Holm's p < 0.05, open where not,
    a cross where only Welch's test over seeds was possible (no interval). Returns what it drew:
    (group, difference, low, high in points, filled) from the top."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [(i, *compared[i][:5]) for i in table.index if i in compared]
    drawn = [(group_name(table.loc[i], keys), 100 * d, 100 * lo, 100 * hi, how == "paired" and p < 0.05)
             for i, d, lo, hi, p, how in rows]  # fmt: skip
    fig, ax = plt.subplots(figsize=(6.5, 1.2 + 0.42 * len(rows)))
    for y, (_, diff, low, high, p, how) in enumerate(rows):
        significant = how == "paired" and p < 0.05
        if how == "paired":
            ax.errorbar(100 * diff, y, xerr=[[100 * (diff - low)], [100 * (high - diff)]], fmt="o", capsize=3,
                        color="tab:blue" if significant else "gray",
                        markerfacecolor="tab:blue" if significant else "white")  # fmt: skip
        else:
            ax.plot(100 * diff, y, marker="x", color="gray")
        ax.annotate(f"p={p:.3f}" if p >= 0.001 else "p<0.001", (100 * diff, y), textcoords="offset points",
                    xytext=(0, 6), ha="center", fontsize=7, color="dimgray")  # fmt: skip
    ax.axvline(0, color="black", lw=1)
    ax.set_yticks(range(len(rows)), [name for name, *_ in drawn], fontsize=8)
    ax.set_ylim(-0.7, len(rows) - 0.3)
    ax.invert_yaxis()
    ax.set_xlabel("test accuracy minus the reference's (points; paired 95% CI)")
    ax.set_title(f"against {group_name(table.loc[ref], keys)} (filled: Holm p < 0.05)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return drawn


def error_bars(groups: pd.DataFrame) -> tuple[pd.Series, pd.Series]:
    """How far each group's 95% interval reaches below and above its test accuracy (`stats.summarise`'s
    bounds: inside [0, 1]); 0 where it has none."""
    below = (groups["accuracy"] - groups["ci_low"]).fillna(0)
    above = (groups["ci_high"] - groups["accuracy"]).fillna(0)
    return below, above


def integer_ticks(ax, values) -> None:
    """Settings that are whole numbers (layers, ranks, epochs) ticked at exactly the values run,
    labelled as the integers they are (a log axis would write 2x10^0, 3x10^0)."""
    import matplotlib

    values = sorted(float(v) for v in values)
    if values and all(v.is_integer() for v in values):
        ax.set_xticks(values, [str(int(v)) for v in values])
        ax.xaxis.set_minor_locator(matplotlib.ticker.NullLocator())


def plot(table: pd.DataFrame, keys: list[str], x: str, numeric: bool, log_x: bool, path: Path, title: str,
         refs: list[tuple[str, float]]) -> None:  # fmt: skip
    """Test accuracy (mean, 95% interval: `error_bars`, hollow where it is over the test reviews) against
    one setting or metric, one line per other group; the validation accuracy dotted beside it;
    reference lines for the baselines."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4))
    points = table[~untrained(table["method"])]
    series = [k for k in keys if k != x and k != "data"]
    categories = None
    if not numeric:
        categories = sorted(points[x].astype(str).unique(), key=sort_key)
    for name, g in points.groupby(series, sort=False) if series else [((), points)]:
        g = g.assign(
            _x=pd.to_numeric(g[x], errors="coerce") if numeric else g[x].astype(str).map(categories.index)
        )
        g = g[g["_x"].notna()].sort_values("_x")
        if g.empty:
            continue
        name = name if isinstance(name, tuple) else (name,)
        text = group_name(pd.Series(dict(zip(series, name, strict=True))), series)
        line = ax.errorbar(g["_x"], g["accuracy"], yerr=error_bars(g), marker="o", capsize=3,
                           label=f"{text}: test" if text else "test")  # fmt: skip
        color = line.lines[0].get_color()
        reviews = g[g["ci_how"] == "bootstrap"]  # their interval is over the test reviews: drawn hollow
        ax.plot(reviews["_x"], reviews["accuracy"], "o", color=color, markerfacecolor="white", zorder=3)
        ax.plot(g["_x"], g["val_accuracy"], linestyle=":", marker=".", color=color,
                label=f"{text}: validation" if text else "validation")  # fmt: skip
    for (name, value), style in zip(refs, ("-", "--", "-.", ":"), strict=False):
        ax.axhline(value, linestyle=style, color="gray", lw=1)
        ax.annotate(f"{name} {100 * value:.1f}%", (0.01, value), xycoords=("axes fraction", "data"),
                    fontsize=7, color="dimgray", va="bottom")  # fmt: skip
    if categories is not None:
        ax.set_xticks(range(len(categories)), categories, rotation=20 if len(categories) > 4 else 0)
    if log_x:
        ax.set_xscale("log")
    if numeric:
        integer_ticks(ax, pd.to_numeric(points[x], errors="coerce").dropna().unique())
    ax.yaxis.set_major_formatter(matplotlib.ticker.PercentFormatter(1.0))
    ax.set_xlabel(title)
    ax.set_ylabel("accuracy (mean, 95% CI)")
    if (points["ci_how"] == "bootstrap").any():
        caption = "95% CI over seeds and folds (Student t); hollow (†): fewer than 3, over the test reviews (bootstrap)"
        ax.annotate(caption, (0, -0.16), xycoords="axes fraction", fontsize=7, color="dimgray", va="top")
    ax.set_title(f"accuracy vs {title}")
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1))  # beside: never over a line
    fig.tight_layout()
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
