"""A search's trials (child runs with `search.trial`) read back from MLflow as an Optuna study, and its
pictures: the optimisation history, the settings' importances, the metric against each searched
setting, and the Pareto front of validation metric against trainable parameters.

Everything comes from the runs themselves (no study storage needed): the searched settings are the
params that differ between trials; a pruned trial (tag pruned) counts with its last epoch's value.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

HIDDEN = ("search.", "mlflow.", "hydra.", "run_name", "optimized_metric")


@dataclass
class Study:
    metric: str
    trials: pd.DataFrame  # trial, state, value, test, trainable_params, epochs..., and each setting
    settings: list[str]
    best: dict | None = None
    front: pd.DataFrame | None = None
    plots: list[tuple[str, str]] = field(default_factory=list)


def of_runs(runs: pd.DataFrame) -> Study | None:
    """The search in MLflow's runs frame `runs`, or None where its runs are no search's trials."""
    if "params.search.trial" not in runs:
        return None
    numbers = pd.to_numeric(runs["params.search.trial"], errors="coerce")  # "None": no search's trial
    if numbers.isna().all():
        return None
    runs = runs[numbers.notna()].assign(**{"params.search.trial": numbers[numbers.notna()]})
    metric = "val_accuracy"
    if "params.optimized_metric" in runs and runs["params.optimized_metric"].notna().any():
        metric = str(runs["params.optimized_metric"].dropna().iloc[0]).split(",")[0].strip("[]' ")
    settings = sorted(c.removeprefix("params.") for c in runs.columns if c.startswith("params.")
                and not c.removeprefix("params.").startswith(HIDDEN) and runs[c].nunique(dropna=False) > 1)  # fmt: skip
    pruned = runs["tags.pruned"].eq("true") if "tags.pruned" in runs else pd.Series(False, index=runs.index)
    named = {"FINISHED": "complete", "KILLED": "killed", "RUNNING": "running"}
    state = ["pruned" if p else named.get(s, "failed") for p, s in zip(pruned, runs["status"], strict=True)]
    get = lambda name: runs[name] if name in runs else pd.Series(math.nan, index=runs.index)  # noqa: E731
    table = pd.DataFrame({
        "trial": runs["params.search.trial"].astype(int), "state": state, "value": get(f"metrics.{metric}"),
        "test": get("metrics.accuracy"), "trainable_params": get("metrics.trainable_params"),
        "train_seconds": get("metrics.train_seconds"), "epochs": pd.to_numeric(get("params.trainer.epochs")),
        "epochs_done": get("metrics.epochs_done"), "epochs_saved": get("metrics.epochs_saved"),
        "run_id": runs["run_id"],
        **{s: runs[f"params.{s}"] for s in settings},
    }).sort_values(["trial", "state"]).drop_duplicates("trial", keep="first")  # fmt: skip
    study = Study(metric, table.reset_index(drop=True), settings)
    done = table[table["state"] == "complete"].dropna(subset=["value"])
    if len(done):
        row = done.sort_values(["value", "trial"], ascending=[False, True]).iloc[0]
        study.best = row.to_dict()
        study.front = pareto(study)
    return study


def pareto(study: Study) -> pd.DataFrame:
    """The complete trials no other beats on both validation metric (higher) and trainable
    parameters (fewer): Optuna's best trials of the two objectives."""
    rows = sorted(t.user_attrs["row"] for t in as_optuna(study, two=True).best_trials)
    return study.trials.loc[rows].sort_values("trainable_params")


def summary(study: Study) -> list[str]:
    """The search in words: counts, trial-epochs saved by pruning, the best trial with its test once."""
    t = study.trials
    counts = t["state"].value_counts()
    ended = t[t["state"].isin(["complete", "pruned"])]
    run = ended["epochs_done"].fillna(ended["epochs"]).sum()
    saved = ended["epochs_saved"].fillna(0).sum()
    others = "".join(f", {counts[s]} {s}" for s in ("killed", "running") if counts.get(s))
    lines = [f"{len(t)} trials: {counts.get('complete', 0)} complete, {counts.get('pruned', 0)} pruned, "
             f"{counts.get('failed', 0)} failed{others}; trial-epochs run {run:.0f}, saved by pruning {saved:.0f}"
             + (f" ({100 * saved / (run + saved):.0f}% of {run + saved:.0f})" if run + saved else "") + "."]  # fmt: skip
    if study.best:
        b = study.best
        what = ", ".join(f"`{s}={b[s]}`" for s in study.settings)
        lines.append(f"**Best by {study.metric}**: trial {b['trial']} ({what}), {study.metric} "
                     f"{100 * b['value']:.1f}% with {b['trainable_params']:,.0f} trainable parameters; its test "
                     f"accuracy, reported once: {100 * b['test']:.1f}%.")  # fmt: skip
    return lines


def front_table(study: Study) -> pd.DataFrame:
    f = study.front
    return pd.DataFrame({
        "trial": f["trial"], "trainable params": f["trainable_params"].map("{:,.0f}".format),
        study.metric: (100 * f["value"]).map("{:.1f}%".format),
        **{s: f[s] for s in study.settings},
    })  # fmt: skip


def as_optuna(study: Study, two: bool = False):
    """The trials as an in-memory Optuna study (maximise the metric; `two`: and minimise trainable
    parameters), each searched setting a distribution over the values the trials took."""
    import optuna
    from optuna.distributions import CategoricalDistribution, FloatDistribution

    t = study.trials
    dists = {}
    for s in study.settings:
        numbers = pd.to_numeric(t[s], errors="coerce")
        if numbers.notna().all() and numbers.nunique() > 1:
            lo, hi = float(numbers.min()), float(numbers.max())
            dists[s] = FloatDistribution(lo, hi, log=lo > 0 and hi / lo >= 10)
        else:
            dists[s] = CategoricalDistribution(sorted(t[s].astype(str).unique()))
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    out = optuna.create_study(directions=["maximize", "minimize"] if two else ["maximize"])
    State = optuna.trial.TrialState
    for index, row in t.iterrows():
        params = {
            s: (float(row[s]) if isinstance(d, FloatDistribution) else str(row[s])) for s, d in dists.items()
        }
        complete = row["state"] == "complete" and not math.isnan(row["value"])
        if two and not complete:
            continue
        values = [row["value"], row["trainable_params"]] if two else None
        kwargs = {"values": values} if two else ({"value": row["value"]} if complete else {})
        if not two and row["state"] == "pruned" and not math.isnan(row["value"]):
            kwargs["intermediate_values"] = {int(row["epochs_done"] or 1): row["value"]}
        state = State.COMPLETE if complete else (State.PRUNED if row["state"] == "pruned" else State.FAIL)
        out.add_trial(optuna.trial.create_trial(params=params, distributions=dists, state=state,
                                                user_attrs={"row": int(index)}, **kwargs))  # fmt: skip
    return out


def draw(study: Study, out: Path) -> list[tuple[str, str]]:
    """The study's PNGs in `out`: (file, what it shows). A picture Optuna cannot draw for these trials
    (importances need two complete trials that differ) is left out."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from optuna.visualization import matplotlib as vis

    drawn = []
    single = as_optuna(study)
    complete = (study.trials["state"] == "complete").sum()
    pictures = [
        ("search_history.png", f"{study.metric} of each trial and the best so far", lambda: vis.plot_optimization_history(single)),
        ("search_importances.png", "which settings mattered (fANOVA importances)", lambda: vis.plot_param_importances(single)),
        ("search_slices.png", f"{study.metric} against each searched setting", lambda: vis.plot_slice(single)),
        ("search_pareto.png", f"Pareto front: {study.metric} against trainable parameters",
         lambda: vis.plot_pareto_front(as_optuna(study, two=True), target_names=[study.metric, "trainable parameters"])),
    ]  # fmt: skip
    for name, what, make in pictures:
        if complete < (2 if "importances" in name or "pareto" in name else 1):
            continue
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                axes = make()
                fig = (axes.flat[0] if hasattr(axes, "flat") else axes).figure
                fig.set_size_inches(max(6.4, 3.2 * len(study.settings)) if "slices" in name else 6.4, 4.2)
                fig.tight_layout()
            fig.savefig(out / name, dpi=110)
            plt.close(fig)
            drawn.append((name, what))
        except Exception:  # e.g. importances of settings that never differed among complete trials
            plt.close("all")
    return drawn
