"""python report.py --experiment ablate_layer [--filter "tags.dataset = 'opinion_spam'"] [--out reports/x]

Writes the report of an experiment's runs (or, `--run`, of one sweep's jobs) and logs it to MLflow:
as a summary run (tag kind=report) or as the sweep parent's artifacts.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

from .. import tracking
from ..config import ConfigError
from .render import write
from .runs import baseline_runs, data_hashes, load_runs, load_sweep
from .tables import pct, with_interval


def parse_reference(items: list[str] | None) -> dict | None:
    """`--reference key=value ...` as a dict; ConfigError for an item that is no key=value."""
    if not items:
        return None
    out = {}
    for item in items:
        key, _, value = item.partition("=")
        if not key.strip() or not value.strip():
            raise ConfigError(f"--reference {item!r}: use key=value, e.g. intervention.layer=15")
        out[key.strip()] = value.strip()
    return out


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
    try:
        result = write(runs, out, title, others, parse_reference(args.reference))
    except ConfigError as e:  # a --reference that names no single group: say which groups there are
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"{out / 'report.md'}: {result['finished']} finished, {result['failed']} failed or unfinished runs")
    if result.get("reference_said"):
        name, *how = result["reference_said"]
        print(f"reference: {name} ({'; '.join(how)})")
    if result["chosen"] and result["chosen"]["overall"] is not None:
        row = result["table"].loc[result["chosen"]["overall"]]
        what = ", ".join(f"{k}={row[k]}" for k in result["keys"])
        print(f"chosen on validation: {what} (val {pct(row['val_accuracy'])}, test {with_interval(row)})")
    if not args.no_mlflow and args.run:
        import mlflow

        mlflow.tracking.MlflowClient(uri).log_artifacts(args.run, str(out), "report")
        print(f"logged to the sweep's run {args.run} (artifacts report/)")
    elif not args.no_mlflow:
        print(f"logged as MLflow run {log_to_mlflow(out, args.experiment, args.filter)} (tag kind=report)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
