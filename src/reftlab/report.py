"""A paper-style report over the runs of an MLflow experiment: tables (Markdown, HTML) and plots.

python report.py --experiment ablate_layer [--filter "tags.dataset = 'opinion_spam'"] [--out reports/x]

- Groups are every setting that differs between the runs except the seed (and bookkeeping such as
  the tracking URI or cache folders), plus the data content: runs on different data, models or
  learning rates are never averaged together. A run repeated with the same seed counts once.
- Per group: seeds, validation accuracy, test accuracy mean with a 95% confidence interval over
  seeds (Student t), F1, trainable parameters, train time; Welch's t-test of test accuracy against
  the reference group (the project's default settings, or --reference).
- Choices are made on validation accuracy only: the best group overall and per method are chosen
  by mean validation accuracy; their test accuracy is reported beside it, never used to choose.
- Plots only for settings the experiment varies, with 95% CIs and reference lines (chance,
  zero-shot, TF-IDF, LoRA at its validation-chosen best, from any experiment on the same data).
"""

from __future__ import annotations

import argparse
import html
import math
import re
from pathlib import Path

import numpy as np
import pandas as pd

from . import tracking

# Settings that do not change what a run computes (never a reason to split a group).
IGNORED = ("seed", "intervention.method", "run_name", "force", "save_intervention", "trainer.log_every", "trainer.eval_batch_size",
           "data.remote", "data.revision", "data.license")  # fmt: skip
IGNORED_PREFIXES = ("mlflow.", "trainer.cache", "hydra.")
NOT_FOR_UNTRAINED = ("intervention.layer", "intervention.rank", "trainer.lr", "trainer.epochs", "trainer.batch_size",
                     "trainer.grad_accum", "trainer.weight_decay", "trainer.warmup_ratio")  # fmt: skip
# What a reference line from another experiment must share with this one to be comparable: the data
# it saw and, for a method that trains, how long it trained (a LoRA run on 512 reviews for 2 epochs
# is no reference line for LoReFT on 1,088 reviews for 5).
BUDGET = ("data.max_train", "data.max_val", "data.max_eval", "trainer.max_length")
TRAINED_BUDGET = ("trainer.epochs",)
METRICS = ("accuracy", "val_accuracy", "f1", "train_loss_last", "trainable_params", "trainable_percent", "train_seconds", "cache_seconds",
           "eval_seconds", "peak_memory_mb", "tp", "fp", "tn", "fn")  # fmt: skip
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


def method_name(name: str) -> str:
    """How reports name a method (its plugin's display name)."""
    from . import methods

    try:
        return methods.get(name).display or name
    except ValueError:
        return name


def untrained(names: pd.Series) -> pd.Series:
    """Which of these methods train nothing (zero-shot, TF-IDF): no layer, rank or seed."""
    from . import methods

    known = {n for n in methods.names() if not methods.get(n).trains}
    return names.isin(known)


def load_runs(experiment: str, tracking_uri: str | None, filter_string: str = "") -> pd.DataFrame:
    import mlflow

    mlflow.set_tracking_uri(tracking_uri)
    exp = mlflow.get_experiment_by_name(experiment)
    if exp is None:
        raise SystemExit(
            f"No MLflow experiment named {experiment!r} at {tracking.redact(mlflow.get_tracking_uri())}"
        )
    return drop_reports(mlflow.search_runs([exp.experiment_id], filter_string=filter_string))


def load_sweep(run_id: str, tracking_uri: str | None):
    """A sweep's parent run and its jobs (the parent's children)."""
    import mlflow

    mlflow.set_tracking_uri(tracking_uri)
    try:
        sweep = mlflow.tracking.MlflowClient().get_run(run_id)
    except Exception as e:
        raise SystemExit(
            f"--run {run_id}: no such run at {tracking.redact(mlflow.get_tracking_uri())} ({e})"
        ) from e
    runs = children(sweep.info.experiment_id, run_id)
    if runs.empty:
        raise SystemExit(
            f"--run {run_id} ({sweep.info.run_name!r}) has no child runs: give a sweep's parent run"
        )
    return sweep, drop_reports(runs)


def children(experiment_id: str, run_id: str) -> pd.DataFrame:
    """The runs of one sweep (its parent run's children) as MLflow's search_runs frame."""
    import mlflow

    return mlflow.search_runs([experiment_id], filter_string=f"tags.mlflow.parentRunId = '{run_id}'")


def drop_reports(runs: pd.DataFrame) -> pd.DataFrame:
    return runs[~runs["tags.kind"].isin(["report", "sweep"])] if "tags.kind" in runs else runs


def column(runs: pd.DataFrame, name: str, default=np.nan) -> pd.Series:
    return runs[name] if name in runs else pd.Series(default, index=runs.index)


def setting_columns(runs: pd.DataFrame) -> list[str]:
    """The params that define what a run computes."""
    names = [c[len("params.") :] for c in runs.columns if c.startswith("params.")]
    return sorted(n for n in names if n not in IGNORED and not n.startswith(IGNORED_PREFIXES))


def tidy(runs: pd.DataFrame) -> pd.DataFrame:
    """One row per run: status, method, seed, every setting (as text), data content and metrics."""
    out = pd.DataFrame(
        {
            "run_id": runs["run_id"],
            "status": runs["status"],
            "method": column(runs, "tags.method", "?").fillna("?"),
            "seed": column(runs, "params.seed", "-").fillna("-"),
            "data": column(runs, "tags.data_hash", "-").fillna("-"),
            "model": column(runs, "tags.model", "-").fillna("-"),
            "experiment": column(runs, "experiment_id", "-"),
            "error": column(runs, "tags.error", "").fillna(""),
            "warning": column(runs, "tags.result_warning", "").fillna(""),
            "code": column(runs, "tags.code_version", "-")
            .fillna(column(runs, "tags.git_sha", "-"))
            .fillna("-"),
            "start_time": column(runs, "start_time", pd.NaT),
        }
    )
    for name in setting_columns(runs):
        out[name] = runs[f"params.{name}"].fillna("-").astype(str).replace("None", "-")
    for name in NOT_FOR_UNTRAINED:  # zero-shot and TF-IDF have no layer, rank or optimiser
        if name in out:
            out.loc[untrained(out["method"]), name] = "-"
    for metric in METRICS:
        out[metric] = pd.to_numeric(column(runs, f"metrics.{metric}"), errors="coerce")
    # train_seconds includes building the prefix cache, which only the first job of a sweep does:
    # the optimisation itself is what compares between settings
    out["step_seconds"] = out["train_seconds"] - out["cache_seconds"].fillna(0)
    return mark_diverged(out, "metrics.train_loss_last" in runs)


DIVERGED = "diverged: a non-finite training loss (a run recorded before reftlab failed such runs)"


def mark_diverged(rows: pd.DataFrame, logged: bool = True) -> pd.DataFrame:
    """FINISHED runs that are no result: a method that trained for some epochs but whose training
    loss is not a number (`logged`: these runs record train_loss_last at all). They are listed
    with the failed runs, never chosen or averaged."""
    epochs = column(rows, "trainer.epochs", "-").astype(str)
    trained = (rows["trainable_params"] > 0) & ~untrained(rows["method"]) & (epochs != "0")
    bad = (rows["status"] == "FINISHED") & trained & rows["train_loss_last"].isna() & logged
    rows = rows.copy()
    rows.loc[bad, "status"] = "DIVERGED"
    rows.loc[bad, "error"] = DIVERGED
    return rows


def caveats(finished: pd.DataFrame) -> list[str]:
    """What a reader must know before trusting the table: results on test splits too small or of one
    class to judge, and runs of different code versions side by side."""
    lines = []
    small = finished[finished["warning"].str.contains("test split", regex=False)]
    if len(small):
        lines.append(
            f"**Caution: {len(small)} of {len(finished)} runs were scored on a test split too small or of one "
            f"class to judge** ({small['warning'].iloc[0]}); their accuracies say little."
        )
    codes = sorted(set(finished["code"]) - {"-"})
    if len(codes) > 1:
        lines.append(
            f"**These runs come from {len(codes)} versions of reftlab's code** (tag `code_version`: "
            f"{', '.join(codes[:6])}{', ...' if len(codes) > 6 else ''}): a difference between groups may "
            "be the code's. Filter one version with `--filter \"tags.code_version = '<version>'\"`."
        )
    return lines


def varying(rows: pd.DataFrame) -> list[str]:
    """Settings (and the data content) that differ between these runs: the group keys."""
    keys = ["method"] + [c for c in rows.columns if "." in c] + ["data"]
    keys = [k for k in keys if k in rows and rows[k].nunique(dropna=False) > 1] or ["method"]
    if "method" in keys:  # a setting each method holds fixed (LoRA's alpha, LoReFT's positions) tells
        # groups apart no more than the method does: listed per method (`method_settings`), no column
        by = rows.groupby("method")
        keys = [k for k in keys if k in ("method", "data") or (by[k].nunique(dropna=False) > 1).any()]
    return keys


def method_settings(finished: pd.DataFrame, keys: list[str]) -> dict[str, dict[str, str]]:
    """Per method, the settings it held fixed that other methods did not share (not group keys)."""
    if "method" not in keys:
        return {}
    shared = constant_settings(finished, keys)
    cols = [c for c in finished.columns if "." in c and c not in keys and c not in shared]
    out = {}
    for method, rows in finished.groupby("method", sort=False):
        fixed = {c: rows[c].iloc[0] for c in cols if rows[c].nunique() == 1 and rows[c].iloc[0] != "-"}
        if fixed:
            out[method_name(method)] = fixed
    return out


def dedupe(rows: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    """A run repeated with the same settings and seed counts once (the latest)."""
    ordered = rows.sort_values("start_time", na_position="first")
    return ordered.drop_duplicates(subset=keys + ["seed"], keep="last")


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

        from .configs import compose

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


def label(key: str, keys: list[str]) -> str:
    """Short column name: the last part, unless two keys share it."""
    short = key.split(".")[-1]
    return short if sum(k.split(".")[-1] == short for k in keys) == 1 else key


def pct(value, ci=None) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    text = f"{100 * value:.1f}%"
    if ci is not None and not math.isnan(ci):
        text += f" ± {100 * ci:.1f}"
    return text


def count(value) -> str:
    return (
        "-" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{int(round(value)):,}"
    )


def seconds(value) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:.1f} s" if value < 10 else f"{value:,.0f} s"


def share(value) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:.4f}%" if value < 0.1 else f"{value:.2f}%"


def display(table: pd.DataFrame, keys: list[str], chosen: dict, ref: int | None) -> pd.DataFrame:
    """The table as people read it: formatted numbers, marks for what was chosen."""
    rows = []
    ref_runs = table.loc[ref, "_runs"] if ref is not None else None
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
            "test acc (95% CI)": pct(row["accuracy"], row["ci95"]),
            "F1": f"{row['f1']:.3f}" if not math.isnan(row["f1"]) else "-",
            "trainable": count(row["trainable_params"]),
            "% of model": share(row["trainable_percent"]),
            "train time": seconds(row["train_seconds"]),
            "cache pass": seconds(row["cache_seconds"]),
        }
        if ref_runs is not None:
            p = welch_p(row["_runs"]["accuracy"], ref_runs["accuracy"]) if i != ref else float("nan")
            out["p vs reference"] = (
                "-"
                if math.isnan(p)
                else (("<0.001" if p < 0.001 else f"{p:.3f}") + (" *" if p < 0.05 else ""))
            )
        out["note"] = ", ".join(marks)
        rows.append(out)
    return pd.DataFrame(rows)


def markdown_table(frame: pd.DataFrame, bold: set[int] = frozenset()) -> str:
    lines = ["| " + " | ".join(map(str, frame.columns)) + " |", "|" + "---|" * len(frame.columns)]
    for i, row in enumerate(frame.itertuples(index=False)):
        cells = [str(v) for v in row]
        if i in bold:
            cells = [f"**{c}**" if c and not c.startswith("**") else c for c in cells]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def html_table(frame: pd.DataFrame, bold: set[int] = frozenset()) -> str:
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in frame.columns)
    body = []
    for i, row in enumerate(frame.itertuples(index=False)):
        cells = "".join(f"<td>{html.escape(str(v).replace('**', ''))}</td>" for v in row)
        body.append(f"<tr class='chosen'>{cells}</tr>" if i in bold else f"<tr>{cells}</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def same_budget(others: pd.DataFrame, finished: pd.DataFrame) -> pd.DataFrame:
    """The runs of `others` trained and evaluated on the budget of this experiment's runs: the same
    data caps and prompt length, and (methods that train) epochs among this experiment's."""
    keep = pd.Series(True, index=others.index)
    trains = ~untrained(others["method"])
    for name in BUDGET + TRAINED_BUDGET:
        if name not in finished:
            continue
        theirs = others[name] if name in others else pd.Series("-", index=others.index)
        match = theirs.isin(set(finished[name]))
        keep &= match | (~trains if name in TRAINED_BUDGET else False)
    return others[keep]


def reference_lines(table: pd.DataFrame, others: pd.DataFrame) -> list[tuple[str, float]]:
    """Chance, every method that trains nothing (zero-shot, TF-IDF), and every trained method this
    experiment did not run (e.g. LoRA beside a LoReFT ablation) at its validation-chosen best; from
    this experiment's runs or, failing that, from runs of any experiment on the same data (`others`)."""
    lines = []
    c = table["chance"].dropna()
    if len(c):
        lines.append(("chance (majority)", float(c.iloc[0])))
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


def plot(table: pd.DataFrame, keys: list[str], x: str, numeric: bool, log_x: bool, path: Path, title: str,
         refs: list[tuple[str, float]]) -> None:  # fmt: skip
    """Test accuracy (mean, 95% CI) against one setting or metric, one line per other group; the
    validation accuracy dotted beside it; reference lines for the baselines."""
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
        text = ", ".join(
            f"{label(k, keys)}={method_name(v) if k == 'method' else v}"
            for k, v in zip(series, name, strict=True)
        )
        line = ax.errorbar(g["_x"], g["accuracy"], yerr=g["ci95"].fillna(0), marker="o", capsize=3,
                           label=f"{text}: test" if text else "test")  # fmt: skip
        ax.plot(g["_x"], g["val_accuracy"], linestyle=":", marker=".", color=line.lines[0].get_color(),
                label=f"{text}: validation" if text else "validation")  # fmt: skip
    for (name, value), style in zip(refs, ("-", "--", "-.", ":"), strict=False):
        ax.axhline(value, linestyle=style, color="gray", lw=1)
        ax.annotate(f"{name} {100 * value:.1f}%", (0.01, value), xycoords=("axes fraction", "data"),
                    fontsize=7, color="dimgray", va="bottom")  # fmt: skip
    if categories is not None:
        ax.set_xticks(range(len(categories)), categories, rotation=20 if len(categories) > 4 else 0)
    if log_x:
        ax.set_xscale("log")
    ax.yaxis.set_major_formatter(matplotlib.ticker.PercentFormatter(1.0))
    ax.set_xlabel(title)
    ax.set_ylabel("accuracy (mean, 95% CI over seeds)")
    ax.set_title(f"accuracy vs {title}")
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1))  # beside: never over a line
    fig.tight_layout()
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)


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


CSS = """body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;color:#222;line-height:1.45}
table{border-collapse:collapse;margin:1em 0;font-size:14px}th,td{padding:4px 10px;border-bottom:1px solid #ddd;
text-align:right}th{background:#f4f4f4}td:first-child,th:first-child{text-align:left}tr.chosen td{font-weight:bold;
background:#eef6ee}.plots img{width:48%;margin:1%;border:1px solid #eee}.note{color:#555;font-size:14px}"""


def write(runs: pd.DataFrame, out: Path, title: str, others: pd.DataFrame | None = None,
          reference: dict | None = None) -> dict:  # fmt: skip
    """Write report.md, report.html and the plots into `out`; returns what was found and chosen."""
    out.mkdir(parents=True, exist_ok=True)
    rows = tidy(runs)
    finished_all = rows[rows["status"] == "FINISHED"]
    failed = rows[rows["status"] != "FINISHED"][["run_id", "status", "method", "seed", "error"]]
    keys = varying(finished_all) if len(finished_all) else ["method"]
    finished = dedupe(finished_all, keys)
    others = tidy(others) if others is not None and len(others) else pd.DataFrame()
    if len(others):
        others = others[(others["status"] == "FINISHED") & others["data"].isin(set(finished["data"]))]
        others = others[others["model"].isin(set(finished["model"])) | others["model"].isin(["-", ""])]
        others = same_budget(others, finished)
    result = {"finished": len(finished), "failed": len(failed), "keys": keys, "chosen": None, "table": None}
    md = [f"# {title}", "", f"{len(finished)} finished runs, {len(failed)} failed or unfinished."]
    page = [f"<html><head><meta charset='utf-8'><title>{html.escape(title)}</title><style>{CSS}</style></head><body>",
            f"<h1>{html.escape(title)}</h1>", f"<p>{len(finished)} finished runs, {len(failed)} failed or unfinished.</p>"]  # fmt: skip
    notes = caveats(finished)
    md += ["", *notes] if notes else []
    page += [f"<p class='note'><b>{html.escape(n.replace('**', ''))}</b></p>" for n in notes]
    result["caveats"] = notes
    if len(finished):
        table = summarise(finished, keys)
        chosen = choose(table)
        ref = reference_group(table, keys, default_settings() if reference is None else reference)
        shown = display(table, keys, chosen, ref)
        bold = {chosen["overall"]} if chosen["overall"] is not None else set()
        refs = reference_lines(table, others)
        plots = plots_for(table, keys)
        for col, name, numeric, log_x, axis_title in plots:
            plot(table, keys, col, numeric, log_x, out / name, axis_title, refs)
        constant = {k: v for k, v in constant_settings(finished, keys).items()}
        how = how_to_read(table, keys, chosen, ref)
        md += ["", "## Results", "", *how, "", markdown_table(shown, bold), ""]
        md += ["Reference lines: " + "; ".join(f"{n} {pct(v)}" for n, v in refs) + "." if refs else "", ""]
        md += ["## Plots", ""] + [f"![accuracy vs {t}]({n})" for _, n, _, _, t in plots]
        per_method = method_settings(finished, keys)
        for method, fixed in per_method.items():
            md += ["", f"## {method} settings", "", *[f"- `{k}` = {v}" for k, v in fixed.items()]]
        md += ["", "## Settings shared by all runs", "", *[f"- `{k}` = {v}" for k, v in constant.items()]]
        page += ["<h2>Results</h2>", *[f"<p class='note'>{html.escape(h).replace('**', '')}</p>" for h in how],
                 html_table(shown, bold)]  # fmt: skip
        if refs:
            page.append("<p class='note'>Reference lines: " + html.escape("; ".join(f"{n} {pct(v)}" for n, v in refs)) + "</p>")  # fmt: skip
        page += ["<h2>Plots</h2><div class='plots'>"] + [
            f"<img src='{n}' alt='accuracy vs {t}'>" for _, n, _, _, t in plots
        ]
        page.append("</div>")
        for method, fixed in per_method.items():
            page += [f"<h2>{html.escape(method)} settings</h2><ul>"]
            page += [
                f"<li><code>{html.escape(k)}</code> = {html.escape(str(v))}</li>" for k, v in fixed.items()
            ]
            page.append("</ul>")
        page += ["<h2>Settings shared by all runs</h2><ul>"]
        page += [
            f"<li><code>{html.escape(k)}</code> = {html.escape(str(v))}</li>" for k, v in constant.items()
        ] + ["</ul>"]
        result.update(chosen=chosen, table=table, reference=ref, plots=[p[1] for p in plots])
    else:
        md += ["", "No finished runs."]
        page.append("<p>No finished runs.</p>")
    md += ["", "## Failed or unfinished runs", "", markdown_table(failed) if len(failed) else "None.", ""]
    page += [
        "<h2>Failed or unfinished runs</h2>",
        html_table(failed) if len(failed) else "<p>None.</p>",
        "</body></html>",
    ]
    (out / "report.md").write_text("\n".join(md) + "\n")
    (out / "report.html").write_text("\n".join(page))
    return result


def constant_settings(finished: pd.DataFrame, keys: list[str]) -> dict:
    cols = [c for c in finished.columns if "." in c and c not in keys] + ["model"]
    return {c: finished[c].iloc[0] for c in cols if finished[c].nunique() == 1 and finished[c].iloc[0] != "-"}


def how_to_read(table: pd.DataFrame, keys: list[str], chosen: dict, ref: int | None) -> list[str]:
    lines = [
        f"Groups: every setting that differs ({', '.join(f'`{k}`' for k in keys)}); seeds are averaged. "
        "Test accuracy: mean ± half-width of the 95% confidence interval over seeds (Student t). "
        "Train time: the optimisation steps (mean over seeds); cache pass: the one no-grad pass that "
        "builds the prefix cache (the longest; later jobs of a sweep load it)."
    ]
    if chosen["overall"] is not None:
        row = table.loc[chosen["overall"]]
        what = ", ".join(f"{label(k, keys)}={row[k]}" for k in keys)
        lines.append(
            f"**Chosen on the validation split** (highest mean validation accuracy, {pct(row['val_accuracy'])}): "
            f"{what}; its test accuracy, reported once, is {pct(row['accuracy'], row['ci95'])}. "
            "The test split played no part in any choice."
        )
    else:
        lines.append("No run has a validation score (data.val_fraction=0): nothing is chosen.")
    if ref is not None:
        lines.append("p vs reference: Welch's t-test of test accuracy over seeds against the group with the "
                     "project's default settings (* p < 0.05).")  # fmt: skip
    return lines


def parse_reference(items: list[str] | None) -> dict | None:
    if not items:
        return None
    out = {}
    for item in items:
        if "=" not in item:
            raise SystemExit(f"--reference {item!r}: use key=value, e.g. intervention.layer=15")
        key, value = item.split("=", 1)
        out[key] = value
    return out


def data_hashes(runs: pd.DataFrame) -> set[str]:
    """The data contents these runs saw (tag data_hash)."""
    return set(runs["tags.data_hash"].dropna()) if "tags.data_hash" in runs else set()


def baseline_runs(data_hashes: set[str]) -> pd.DataFrame:
    """Finished runs of every experiment on the same data (candidates for reference lines)."""
    import mlflow

    frames = [
        mlflow.search_runs(
            search_all_experiments=True,
            filter_string=f"tags.data_hash = '{h}' and attributes.status = 'FINISHED'",
        )
        for h in sorted(data_hashes)
    ]
    found = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
    if found.empty or "tags.method" not in found:
        return pd.DataFrame()
    return drop_reports(found)


def log_to_mlflow(out: Path, experiment: str, filter_string: str) -> str:
    import mlflow

    mlflow.set_experiment(experiment)
    with mlflow.start_run(run_name="report") as run:
        mlflow.set_tags({"kind": "report", "filter": filter_string or "(all runs)"})
        mlflow.log_artifacts(str(out), "report")
    return run.info.run_id


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Compare the runs of an MLflow experiment: tables and plots."
    )
    parser.add_argument("--experiment", default="reftlab")
    parser.add_argument("--run", default=None, help="a sweep's parent run id: report exactly that sweep's jobs "
                        "(its children); the report is logged to the parent run")  # fmt: skip
    parser.add_argument("--tracking-uri", default=None, help="default: sqlite:///mlflow.db in this directory")
    parser.add_argument("--filter", default="", help="MLflow filter, e.g. \"tags.dataset = 'opinion_spam'\"")
    parser.add_argument("--out", default=None, help="report folder (default: reports/<experiment>)")
    parser.add_argument("--reference", nargs="*", help="the group to test against, e.g. intervention.layer=15 "
                        "(default: the project's default settings)")  # fmt: skip
    parser.add_argument("--no-mlflow", action="store_true", help="do not log the report as a summary run")
    args = parser.parse_args(argv)
    uri = tracking.tracking_uri(args.tracking_uri)
    if args.run:
        sweep, runs = load_sweep(args.run, uri)
        title, name = f"reftlab sweep: {sweep.info.run_name}", f"sweep-{args.run[:8]}"
    else:
        runs = load_runs(args.experiment, uri, args.filter)
        title, name = f"reftlab report: {args.experiment}", args.experiment
    others = baseline_runs(data_hashes(runs))
    out = Path(args.out or f"reports/{re.sub(r'[^A-Za-z0-9._-]+', '_', name).strip('.') or 'report'}")
    result = write(runs, out, title, others, parse_reference(args.reference))
    print(f"{out / 'report.md'}: {result['finished']} finished, {result['failed']} failed or unfinished runs")
    if result["chosen"] and result["chosen"]["overall"] is not None:
        row = result["table"].loc[result["chosen"]["overall"]]
        what = ", ".join(f"{k}={row[k]}" for k in result["keys"])
        print(
            f"chosen on validation: {what} (val {pct(row['val_accuracy'])}, test {pct(row['accuracy'], row['ci95'])})"
        )
    if not args.no_mlflow and args.run:
        import mlflow

        mlflow.tracking.MlflowClient(uri).log_artifacts(args.run, str(out), "report")
        print(f"logged to the sweep's run {args.run} (artifacts report/)")
    elif not args.no_mlflow:
        print(f"logged as MLflow run {log_to_mlflow(out, args.experiment, args.filter)} (tag kind=report)")
    return 0
