"""A comparison report over the runs of an MLflow experiment: tables (Markdown, HTML) and plots.

python report.py --experiment reftlab [--filter "tags.dataset = 'opinion_spam'"] [--out reports/x]
"""

from __future__ import annotations

import argparse
import html
from pathlib import Path

import numpy as np
import pandas as pd

from . import tracking

GROUP = ["method", "layer", "rank"]
PLOTS = {
    "accuracy_vs_layer.png": "accuracy vs layer",
    "accuracy_vs_rank.png": "accuracy vs rank",
    "accuracy_vs_params.png": "accuracy vs trainable parameters",
    "accuracy_vs_train_time.png": "accuracy vs train time",
}


def load_runs(experiment: str, tracking_uri: str | None, filter_string: str = "") -> pd.DataFrame:
    import mlflow

    mlflow.set_tracking_uri(tracking_uri)
    exp = mlflow.get_experiment_by_name(experiment)
    if exp is None:
        raise SystemExit(f"No MLflow experiment named {experiment!r} at {mlflow.get_tracking_uri()}")
    runs = mlflow.search_runs([exp.experiment_id], filter_string=filter_string)
    if "tags.kind" in runs:
        runs = runs[runs["tags.kind"] != "report"]
    return runs


def column(runs: pd.DataFrame, name: str, default=np.nan) -> pd.Series:
    return runs[name] if name in runs else pd.Series(default, index=runs.index)


def tidy(runs: pd.DataFrame) -> pd.DataFrame:
    """One row per run with the columns the report uses."""
    out = pd.DataFrame(
        {
            "run_id": runs["run_id"],
            "status": runs["status"],
            "method": column(runs, "tags.method", "?"),
            "layer": column(runs, "params.intervention.layer", "-").fillna("-"),
            "rank": column(runs, "params.intervention.rank", "-").fillna("-"),
            "seed": column(runs, "params.seed", "-"),
            "error": column(runs, "tags.error", ""),
        }
    )
    for metric in (
        "accuracy",
        "f1",
        "trainable_params",
        "trainable_percent",
        "train_seconds",
        "peak_memory_mb",
    ):
        out[metric] = pd.to_numeric(column(runs, f"metrics.{metric}"), errors="coerce")
    out.loc[out["method"].isin(["none", "tfidf"]), ["layer", "rank"]] = "-"
    return out


def summarise(finished: pd.DataFrame) -> pd.DataFrame:
    grouped = finished.groupby(GROUP, dropna=False)
    table = grouped.agg(
        runs=("run_id", "count"),
        accuracy_mean=("accuracy", "mean"),
        accuracy_std=("accuracy", "std"),
        f1=("f1", "mean"),
        trainable_params=("trainable_params", "max"),
        trainable_percent=("trainable_percent", "max"),
        train_seconds=("train_seconds", "mean"),
        peak_memory_mb=("peak_memory_mb", "mean"),
    ).reset_index()
    return table.sort_values(["accuracy_mean"], ascending=False).reset_index(drop=True)


def fmt(value, digits=3) -> str:
    if isinstance(value, float):
        if np.isnan(value):
            return "-"
        return f"{value:,.0f}" if abs(value) >= 1000 else f"{value:.{digits}g}"
    return str(value)


def markdown_table(frame: pd.DataFrame) -> str:
    lines = ["| " + " | ".join(frame.columns) + " |", "|" + "---|" * len(frame.columns)]
    lines += ["| " + " | ".join(fmt(v) for v in row) + " |" for row in frame.itertuples(index=False)]
    return "\n".join(lines)


def display_table(table: pd.DataFrame) -> pd.DataFrame:
    shown = table.copy()
    shown["accuracy"] = [
        f"{m:.3f} ± {s:.3f}" if not np.isnan(s) else f"{m:.3f}"
        for m, s in zip(shown.pop("accuracy_mean"), shown.pop("accuracy_std"), strict=True)
    ]
    return shown[["method", "layer", "rank", "runs", "accuracy", "f1", "trainable_params", "trainable_percent",
                  "train_seconds", "peak_memory_mb"]]  # fmt: skip


def numeric(series: pd.Series) -> pd.Series:
    return pd.to_numeric(series, errors="coerce")


def plot_against(finished: pd.DataFrame, x: str, path: Path, title: str, log_x: bool = False) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4))
    baselines = finished[finished["method"].isin(["none", "tfidf"])]
    points = finished[~finished["method"].isin(["none", "tfidf"])].assign(x=lambda f: numeric(f[x]))
    points = points[points["x"].notna() & (points["x"] > 0 if log_x else True)]
    for method, rows in points.groupby("method"):
        if x == "train_seconds":  # one point per run: times differ between seeds
            ax.scatter(rows["x"], rows["accuracy"], label=method)
            continue
        stats = rows.groupby("x")["accuracy"].agg(["mean", "std"]).reset_index().sort_values("x")
        ax.errorbar(
            stats["x"], stats["mean"], yerr=stats["std"].fillna(0), marker="o", capsize=3, label=method
        )
    for (method, rows), style in zip(baselines.groupby("method"), ("--", ":"), strict=False):
        ax.axhline(rows["accuracy"].mean(), linestyle=style, color="gray", label=f"{method} (mean)")
    if points.empty and baselines.empty:
        ax.text(0.5, 0.5, "no finished runs with this axis", ha="center", transform=ax.transAxes)
    if log_x:
        ax.set_xscale("log")
    ax.set_xlabel(x.replace("_", " "))
    ax.set_ylabel("accuracy")
    ax.set_title(title)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def write(runs: pd.DataFrame, out: Path, title: str) -> dict:
    """Write report.md, report.html and the plots into `out`; returns the paths."""
    out.mkdir(parents=True, exist_ok=True)
    rows = tidy(runs)
    finished = rows[rows["status"] == "FINISHED"]
    failed = rows[rows["status"] != "FINISHED"][
        ["run_id", "status", "method", "layer", "rank", "seed", "error"]
    ]
    table = display_table(summarise(finished)) if len(finished) else pd.DataFrame()
    axes = {"accuracy_vs_layer.png": ("layer", False), "accuracy_vs_rank.png": ("rank", False),
            "accuracy_vs_params.png": ("trainable_params", True), "accuracy_vs_train_time.png": ("train_seconds", False)}  # fmt: skip
    for name, (x, log_x) in axes.items():
        plot_against(finished, x, out / name, PLOTS[name], log_x)
    md = [f"# {title}", "", f"{len(finished)} finished runs, {len(failed)} failed or unfinished.", ""]
    md += [
        "## Results (mean ± std over seeds)",
        "",
        markdown_table(table) if len(table) else "No finished runs.",
        "",
    ]
    md += ["## Failed or unfinished runs", "", markdown_table(failed) if len(failed) else "None.", ""]
    md += ["## Plots", ""] + [f"![{PLOTS[name]}]({name})" for name in PLOTS]
    (out / "report.md").write_text("\n".join(md) + "\n")
    page = [f"<html><head><meta charset='utf-8'><title>{html.escape(title)}</title></head><body>",
            f"<h1>{html.escape(title)}</h1>", f"<p>{len(finished)} finished runs, {len(failed)} failed or unfinished.</p>",
            "<h2>Results (mean ± std over seeds)</h2>", table.to_html(index=False, na_rep="-") if len(table) else "<p>No finished runs.</p>",
            "<h2>Failed or unfinished runs</h2>", failed.to_html(index=False) if len(failed) else "<p>None.</p>",
            "<h2>Plots</h2>"] + [f"<img src='{name}' alt='{PLOTS[name]}'>" for name in PLOTS] + ["</body></html>"]  # fmt: skip
    (out / "report.html").write_text("\n".join(page))
    return {"finished": len(finished), "failed": len(failed), "table": table}


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
    parser.add_argument("--tracking-uri", default=None, help="default: sqlite:///mlflow.db in this directory")
    parser.add_argument("--filter", default="", help="MLflow filter, e.g. \"tags.dataset = 'opinion_spam'\"")
    parser.add_argument("--out", default=None, help="report folder (default: reports/<experiment>)")
    parser.add_argument("--no-mlflow", action="store_true", help="do not log the report as a summary run")
    args = parser.parse_args(argv)
    uri = tracking.tracking_uri(args.tracking_uri)
    runs = load_runs(args.experiment, uri, args.filter)
    out = Path(args.out or f"reports/{args.experiment}")
    result = write(runs, out, f"reftlab report: {args.experiment}")
    print(f"{out / 'report.md'}: {result['finished']} finished, {result['failed']} failed or unfinished runs")
    if not args.no_mlflow:
        print(f"logged as MLflow run {log_to_mlflow(out, args.experiment, args.filter)} (tag kind=report)")
    return 0
