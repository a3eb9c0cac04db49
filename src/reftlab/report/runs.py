"""The runs a report compares: loaded from MLflow, tidied to one row per run, grouped, deduplicated.

- Groups are every setting that differs between the runs except the seed and the fold (the
  replicates: a cross-validated configuration pools its folds, on the corpus they were cut from) and the
  settings that change no result or only how it is computed (the one list in `config.identity`,
  which resume uses too), plus the data content: runs on different data, models or learning rates
  are never averaged together. A run repeated with the same seed
  counts once (the latest).
- A FINISHED run whose training loss is not a number is no result: marked DIVERGED, listed with
  the failed runs.
"""

from __future__ import annotations

import os
from unittest import mock

import numpy as np
import pandas as pd

from .. import methods, tracking
from ..config import identity

# What a reference line from another experiment must share with this one to be comparable: the data
# it saw and, for a method that trains, how long it trained (a LoRA run on 512 reviews for 2 epochs
# is no reference line for LoReFT on 1,088 reviews for 5).
BUDGET = ("data.max_train", "data.max_val", "data.max_eval", "trainer.max_length")
TRAINED_BUDGET = ("trainer.epochs",)
METRICS = ("accuracy", "val_accuracy", "f1", "train_loss_last", "trainable_params", "trainable_percent", "train_seconds", "cache_seconds",
           "eval_seconds", "peak_memory_mb", "tp", "fp", "tn", "fn", "chance", "acc", "acc_norm")  # fmt: skip
# Params a report holds apart from the settings: the seed (the replicates of a group), the method
# (a column of its own) and where the data came from (the data content, tag data_hash, says what it was).
# With cross-validation the fold is a replicate too: the folds of a configuration pool, and their
# data is the corpus they were cut from (tag data_corpus_hash), not each fold's rows.
NOT_SETTINGS = ("seed", "data.fold", "intervention.method", "data.remote", "data.revision")
DIVERGED = "diverged: a non-finite training loss (a run recorded before reftlab failed such runs)"


def method_name(name: str) -> str:
    """How reports name a method (its plugin's display name)."""
    try:
        return methods.get(name).display or name
    except ValueError:
        return name


def untrained(names: pd.Series) -> pd.Series:
    """Which of these methods train nothing (zero-shot, TF-IDF): no layer, rank or seed."""
    known = {n for n in methods.names() if not methods.get(n).trains}
    return names.isin(known)


# --- load ---------------------------------------------------------------------------------------


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


# --- tidy ---------------------------------------------------------------------------------------


def column(runs: pd.DataFrame, name: str, default=np.nan) -> pd.Series:
    return runs[name] if name in runs else pd.Series(default, index=runs.index)


_CORRECT: dict[str, pd.Series | None] = {}


def test_correct(run_id: str) -> pd.Series | None:
    """A run's correctness (1 right, 0 wrong) on each review of its test split, by review text, from
    its predictions.parquet artifact (tracking URI as set by `load_runs`); None when it has none."""
    import mlflow

    if run_id not in _CORRECT:
        try:
            with mock.patch.dict(
                os.environ, {"MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false"}
            ):  # no bar a run
                path = mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path="predictions.parquet")
            rows = pd.read_parquet(path)
            test = rows[rows["split"] == "test"]
            # a generated answer's own verdict (numbers equal within 1e-3); else prediction == label
            verdict = test["correct"] if "correct" in test else test["prediction"] == test["label"]
            right = pd.Series(verdict.astype(int).to_numpy(), index=test["text"])
            _CORRECT[run_id] = right[~right.index.duplicated()]
        except Exception:  # no such artifact (an older run, a fake one), or unreadable: no pairing
            _CORRECT[run_id] = None
    return _CORRECT[run_id]


def setting_columns(runs: pd.DataFrame) -> list[str]:
    """The params that define what a run computes: all but those in `NOT_SETTINGS` and those that
    change no result or only how it is computed (`config.identity`)."""
    names = [c[len("params.") :] for c in runs.columns if c.startswith("params.")]
    ignored = identity.NO_RESULT + identity.SAME_RESULT
    return sorted(n for n in names if n not in NOT_SETTINGS and not identity.among(n, ignored))


def tidy(runs: pd.DataFrame) -> pd.DataFrame:
    """One row per run: status, method, seed, fold, every setting (as text), data content and metrics."""
    folds = column(runs, "params.data.folds", None)
    folded = folds.notna() & ~folds.astype(str).isin(("None", "-", ""))
    out = pd.DataFrame(
        {
            "run_id": runs["run_id"],
            "status": runs["status"],
            "method": column(runs, "tags.method", "?").fillna("?"),
            "seed": column(runs, "params.seed", "-").fillna("-"),
            "fold": "-",  # a fold number where the run was cross-validated (data.folds set)
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
    out.loc[folded, "fold"] = column(runs, "params.data.fold", "-")[folded].astype(str)
    out.loc[folded, "data"] = column(runs, "tags.data_corpus_hash", "-")[folded].fillna("-")
    blank = untrained(out["method"])  # zero-shot and TF-IDF have no layer, rank or optimiser
    for name in setting_columns(runs):
        out[name] = runs[f"params.{name}"].fillna("-").astype(str).replace("None", "-")
        if identity.among(name, identity.UNTRAINED):
            out.loc[blank, name] = "-"
    if "task.name" in out:  # runs logged before tasks existed answered Yes/No
        out["task.name"] = out["task.name"].replace("-", "yes_no")
    for metric in METRICS:
        out[metric] = pd.to_numeric(column(runs, f"metrics.{metric}"), errors="coerce")
    # train_seconds includes building the prefix cache, which only the first job of a sweep does:
    # the optimisation itself is what compares between settings
    out["step_seconds"] = out["train_seconds"] - out["cache_seconds"].fillna(0)
    return mark_diverged(out, "metrics.train_loss_last" in runs)


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


# --- group --------------------------------------------------------------------------------------


def varying(rows: pd.DataFrame) -> list[str]:
    """Settings (and the data content) that differ between these runs: the group keys."""
    keys = ["method"] + [c for c in rows.columns if "." in c] + ["data"]
    keys = [k for k in keys if k in rows and rows[k].nunique(dropna=False) > 1] or ["method"]
    if "method" in keys:  # a setting each method holds fixed (LoRA's alpha, LoReFT's positions) tells
        # groups apart no more than the method does: listed per method (`method_settings`), no column
        by = rows.groupby("method")
        keys = [k for k in keys if k in ("method", "data") or (by[k].nunique(dropna=False) > 1).any()]
    return keys


def constant_settings(finished: pd.DataFrame, keys: list[str]) -> dict:
    """The settings (and the model) every run shares."""
    cols = [c for c in finished.columns if "." in c and c not in keys] + ["model"]
    return {c: finished[c].iloc[0] for c in cols if finished[c].nunique() == 1 and finished[c].iloc[0] != "-"}


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
    """A run repeated with the same settings, seed and fold counts once (the latest)."""
    ordered = rows.sort_values("start_time", na_position="first")
    return ordered.drop_duplicates(subset=keys + ["seed", "fold"], keep="last")


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


def comparable(others: pd.DataFrame | None, finished: pd.DataFrame) -> pd.DataFrame:
    """Tidied runs of other experiments that may draw a reference line beside `finished`: finished,
    on the same data and model (or no model), answering the same task, at the same budget."""
    others = tidy(others) if others is not None and len(others) else pd.DataFrame()
    if len(others):
        others = others[(others["status"] == "FINISHED") & others["data"].isin(set(finished["data"]))]
        task = lambda t: t["task.name"] if "task.name" in t else pd.Series("yes_no", index=t.index)  # noqa: E731
        others = others[task(others).isin(set(task(finished)))]
        others = others[others["model"].isin(set(finished["model"])) | others["model"].isin(["-", ""])]
        others = same_budget(others, finished)
    return others
