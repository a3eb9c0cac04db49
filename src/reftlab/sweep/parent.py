"""One MLflow parent run per sweep: its jobs are its children, its end holds the sweep's answer.

The sweep's main process opens the parent (`open_for`) before any job starts and writes its id into
the sweep's own folder (`parent_run.json`) and the environment; every job, under any launcher (in
this process, in joblib workers, in submitit processes on this or another host), finds its parent
there (`of_this_job`), never by guessing "the latest run". A sweep run again with the same command
(resume) finds its parent by the sweep's key and continues under it. At the end (`close`) the
parent gets the counts, the best job by validation with its test accuracy beside it, the
wall-clock, and the paper-style report of its own children as artifacts.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from pathlib import Path

from .. import tracking

log = logging.getLogger(__name__)
FILE = "parent_run.json"
ENV = "REFTLAB_PARENT_RUN"
KIND = "sweep"


def swept(config) -> dict[str, str]:
    """The keys the sweep varies and their values as given (command line and a preset's sweeper
    params), e.g. {"intervention.layer": "8,16,24"}."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    lines = [str(o) for o in config.hydra.overrides.get("task", [])]
    lines += [f"{k}={v}" for k, v in (config.hydra.get("sweeper", {}).get("params") or {}).items()]
    parser, out = OverridesParser.create(), {}
    for line in lines:
        (override,) = parser.parse_overrides([line])
        if override.is_sweep_override():
            out[override.key_or_group] = line.split("=", 1)[1]
    return out


# a search's settings that make another study (its sampler, pruner, space, name); its number of trials
# and batch size do not: the same command with more trials continues the study
NOT_OF_THE_SWEEP = ("hydra.sweeper.n_trials=", "hydra.sweeper.n_jobs=")


def sweep_key(config) -> str:
    """What makes two sweeps the same sweep (a re-run resumes it): the experiment, every override,
    and the search settings given on the command line (`hydra.sweeper.*`, but how many trials)."""
    lines = sorted(str(o) for o in config.hydra.overrides.get("task", []))
    preset = config.hydra.runtime.choices.get("experiment")
    search = sorted(str(o) for o in config.hydra.overrides.get("hydra", [])
                    if str(o).startswith("hydra.sweeper.") and not str(o).startswith(NOT_OF_THE_SWEEP))  # fmt: skip
    text = json.dumps([config.mlflow.experiment, preset, lines] + ([search] if search else []))
    return hashlib.sha256(text.encode()).hexdigest()[:20]


def name_of(config, keys: dict[str, str]) -> str:
    """The parent's name: the preset's, else the swept keys (`sweep intervention.layer=8,16,24`),
    credentials in the values masked (the name is shown in the UI and titles the sweep's report)."""
    preset = config.hydra.runtime.choices.get("experiment")
    if preset:
        return tracking.redact(preset)
    return tracking.redact("sweep " + " ".join(f"{k}={v}" for k, v in keys.items()) if keys else "sweep")


class SweepDirBusy(Exception):
    """`hydra.sweep.dir` is in use by another sweep (running now, or its jobs' folders are there)."""


_HELD: dict[
    str, int
] = {}  # sweep folder -> the descriptor of its lock, held while this process runs the sweep


def claim(folder: Path, key: str, name: str) -> dict | None:
    """Hold the sweep folder for this sweep until the process ends: refused (SweepDirBusy, naming the
    folder and what to do) while another sweep runs there, or where another sweep's jobs already
    are (their folders would be overwritten and counted as this sweep's). The same sweep run again
    (resume) may use its folder. Returns what the folder says of its earlier run, if any."""
    import fcntl

    from ..locks import open_lock_file

    folder.mkdir(parents=True, exist_ok=True)
    where = str(folder.resolve())
    if where not in _HELD:
        fd = open_lock_file(folder / ".sweep.lock")
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise SweepDirBusy(
                f"hydra.sweep.dir={folder} is in use by another sweep that is running now: wait for it to "
                "end, or give this sweep a folder of its own (hydra.sweep.dir=...)"
            ) from None
        _HELD[where] = fd  # released when this process ends, however it ends
    earlier = opened(folder)
    if earlier and earlier.get("sweep_key", key) != key:
        release(folder)
        raise SweepDirBusy(
            f"hydra.sweep.dir={folder} holds the jobs of another sweep ({earlier.get('name', '?')!r}, MLflow "
            f"run {earlier.get('run_id')}): its folders would be overwritten and counted as this sweep's. "
            "Give this sweep a folder of its own (hydra.sweep.dir=...), or run that sweep's own command to "
            "resume it"
        )
    return earlier or None


def release(folder: Path) -> None:
    """Let the sweep folder go (the sweep has ended)."""
    fd = _HELD.pop(str(Path(folder).resolve()), None)
    if fd is not None:
        os.close(fd)


def open_for(config, uri: str, experiment_id: str, jobs: int | None = None) -> str:
    """The sweep's parent run (found again on a re-run, else created), RUNNING, its id, the sweep's
    key and its number of jobs (`jobs`, None where the sweeper does not say) written to the sweep
    folder and the environment for the jobs. The folder is claimed first (`claim`)."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    key = sweep_key(config)
    keys = swept(config)
    folder = Path(config.hydra.sweep.dir)
    claim(folder, key, name_of(config, keys))
    found = client.search_runs(
        [experiment_id],
        filter_string=f"tags.sweep_key = '{key}' and tags.kind = '{KIND}'",
        order_by=["attributes.start_time DESC"],
        max_results=1,
    )
    launcher = str(config.hydra.launcher.get("_target_", "")).rsplit(".", 1)[-1]
    if found:
        run_id = found[0].info.run_id
        client.update_run(run_id, status="RUNNING")
        client.set_tag(run_id, "resumed", time.strftime("%Y-%m-%d %H:%M:%S"))
    else:
        tags = {"kind": KIND, "sweep_key": key, "launcher": launcher, "git_sha": tracking.git_sha()}
        run = client.create_run(experiment_id, run_name=name_of(config, keys), tags=tags)
        run_id = run.info.run_id
        params = {f"sweep.{k}": v for k, v in keys.items()} | {"launcher": launcher}
        for k, v in params.items():
            client.log_param(run_id, k, tracking.redact(v)[: tracking.MAX_PARAM_CHARS])
    parts = {value: open_part(client, experiment_id, run_id, key, name_of(config, keys), value)
             for value in parts_of(keys)}  # fmt: skip
    record = {"run_id": run_id, "started": time.time(), "sweep_key": key, "name": name_of(config, keys),
              "jobs": jobs, "parts": parts}  # fmt: skip
    tracking.write_atomic(folder / FILE, json.dumps(record))
    os.environ[ENV] = run_id
    return run_id


PART = "data"  # a sweep over datasets (data=arc_easy,boolq) has one parent run a dataset, under its own


def parts_of(keys: dict[str, str]) -> list[str]:
    """The datasets a sweep varies (`data=a,b`, a preset's `data: a,b`): each gets a parent of its own."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    if PART not in keys:
        return []
    (override,) = OverridesParser.create().parse_overrides([f"{PART}={keys[PART]}"])
    return [str(v) for v in override.sweep_string_iterator()]


def open_part(client, experiment_id: str, top: str, key: str, name: str, value: str) -> str:
    """The parent run of the sweep's jobs on dataset `value` (found again on a re-run), a child of
    the sweep's own parent `top`: its jobs are its children, its report compares them."""
    part_key = f"{key}:{PART}={value}"
    found = client.search_runs([experiment_id], filter_string=f"tags.sweep_key = '{part_key}' and tags.kind = '{KIND}'",
                               max_results=1)  # fmt: skip
    if found:
        client.update_run(found[0].info.run_id, status="RUNNING")
        return found[0].info.run_id
    tags = {"kind": KIND, "sweep_key": part_key, "part": f"{PART}={value}", "mlflow.parentRunId": top}
    run = client.create_run(experiment_id, run_name=tracking.redact(f"{name} · {PART}={value}"), tags=tags)
    client.log_param(run.info.run_id, f"sweep.{PART}", value)
    return run.info.run_id


def opened(sweep_dir) -> dict:
    """What the sweep's main process wrote into `sweep_dir` when it opened the parent (`open_for`), else {}."""
    path = Path(sweep_dir) / FILE
    return json.loads(path.read_text()) if path.is_file() else {}


def of_sweep(sweep_dir) -> str | None:
    """The parent run of the sweep in `sweep_dir` (its folder's record), else the environment's."""
    return opened(sweep_dir).get("run_id") or os.environ.get(ENV)


def of_this_job() -> str | None:
    """The parent run of the job running now: from its sweep's folder, else the environment (set by
    the sweep's main process); None for a single run or a job run outside Hydra."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if not HydraConfig.initialized():
        return None
    hydra_cfg = HydraConfig.get()
    if hydra_cfg.mode != RunMode.MULTIRUN:
        return None
    part = (opened(hydra_cfg.sweep.dir).get("parts") or {}).get(str(hydra_cfg.runtime.choices.get(PART)))
    return part or of_sweep(hydra_cfg.sweep.dir)


def close(sweep_dir: Path, uri: str, rows: list[dict], launcher_ended: bool, run_id: str,
          stopped: bool = False) -> str | None:  # fmt: skip
    """Record the sweep's answer in its parent `run_id` (the run this process opened) and end it:
    FINISHED when every job of the sweep finished or was skipped, KILLED when the sweep was stopped
    (SIGTERM, Ctrl-C) or the launcher died with jobs killed, else FAILED (a job failed, was killed or
    never ran: `rows` holds one row for each of the sweep's jobs). Returns the report folder."""
    from mlflow.tracking import MlflowClient

    os.environ.pop(ENV, None)
    record = opened(sweep_dir)
    started = record.get("started", time.time()) if record.get("run_id") == run_id else time.time()
    client = MlflowClient(uri)
    parts = (record.get("parts") or {}) if record.get("run_id") == run_id else {}
    for value, part in parts.items():  # each dataset's parent: its jobs' counts, best and report
        mine = [r for r in rows if job_part(r) == value]
        end(
            client,
            part,
            mine,
            launcher_ended,
            stopped,
            started,
            Path(sweep_dir) / "report" / safe_part(value),
            uri,
        )
    top = end(
        client,
        run_id,
        rows,
        launcher_ended,
        stopped,
        started,
        Path(sweep_dir) / "report",
        uri,
        report=not parts,
    )
    return str(Path(sweep_dir) / "report") if parts else top


def safe_part(value: str) -> str:
    import re

    return re.sub(r"[^A-Za-z0-9._-]+", "_", value).strip(".") or "part"


def job_part(row: dict) -> str | None:
    """The dataset (`data=` choice) of a sweep's job: from its folder's Hydra overrides, or (a job
    that never started) from the overrides its row names."""
    import yaml

    folder = row.get("folder")
    lines = []
    if folder and (Path(folder) / ".hydra" / "overrides.yaml").is_file():
        lines = yaml.safe_load((Path(folder) / ".hydra" / "overrides.yaml").read_text()) or []
    else:
        lines = str(row.get("error", "")).rsplit("(", 1)[-1].rstrip(")").split()
    for line in lines:
        if line.startswith(f"{PART}="):
            return line.split("=", 1)[1]
    return None


def end(client, run_id: str, rows: list[dict], launcher_ended: bool, stopped: bool, started: float, out: Path,
        uri: str, report: bool = True) -> str | None:  # fmt: skip
    """One parent run's answer (counts, best child, report) and its end status."""
    counts = {s: sum(r["status"] == s for r in rows) for s in ("finished", "failed", "skipped", "killed")}
    counts["missing"] = sum(r["status"] in ("missing", "running") for r in rows)
    metrics = {f"jobs_{k}": v for k, v in counts.items()} | {"sweep_seconds": time.time() - started}
    report_dir = None
    try:
        best = best_child(client, run_id)
        if best is not None:
            metrics |= {"best_val_accuracy": best["val"], "best_test_accuracy": best["test"]}
            client.set_tag(run_id, "best_run_id", best["run_id"])
            client.set_tag(run_id, "best_run_name", best["name"])
        for k, v in metrics.items():
            client.log_metric(run_id, k, v)
        report_dir = log_report(client, run_id, out, uri) if report else None
    except Exception as e:  # the jobs' own runs hold the results; say why the parent lacks them
        log.warning("Could not complete the sweep's parent run %s: %s", run_id, e)
        client.set_tag(run_id, "warning", f"the sweep's summary could not be logged: {e}"[:5000])
    if stopped:
        client.set_tag(run_id, "error", "the sweep was stopped (SIGTERM or Ctrl-C) before all its jobs ended")
    elif not any(r.get("started", True) for r in rows):  # e.g. a job's config did not compose
        client.set_tag(run_id, "error", "the sweep's launcher ended before any job started")
    bad = counts["failed"] + counts["killed"] + counts["missing"] + (not rows)
    killed = stopped or (not launcher_ended and counts["killed"])
    status = "FINISHED" if not bad else ("KILLED" if killed else "FAILED")
    client.set_terminated(run_id, status=status)
    return report_dir


def best_child(client, run_id: str) -> dict | None:
    """The finished child with the highest validation accuracy (a search's: the best by its optimised
    metric; its pruned trials are no candidates), test beside it, not used to choose."""
    run = client.get_run(run_id)
    metric = run.data.tags.get("optimized_metric", "val_accuracy")
    order = "ASC" if run.data.tags.get("optimized_direction") == "minimize" else "DESC"
    children = client.search_runs(
        [run.info.experiment_id],
        filter_string=f"tags.mlflow.parentRunId = '{run_id}' and attributes.status = 'FINISHED'",
        order_by=[f"metrics.{metric} {order}"],
        max_results=200,
    )
    for child in children:
        m = child.data.metrics
        if metric in m and "val_accuracy" in m and child.data.tags.get("pruned") != "true":
            return {"run_id": child.info.run_id, "name": child.info.run_name, "val": m["val_accuracy"],
                    "test": m.get("accuracy", float("nan"))}  # fmt: skip
    return None


def log_report(client, run_id: str, out: Path, uri: str) -> str | None:
    """The paper-style report of the parent's own children, written to `out` and logged as the
    parent's artifacts (`report/`)."""
    import mlflow

    from ..report.render import write
    from ..report.runs import baseline_runs, children, data_hashes

    mlflow.set_tracking_uri(uri)
    run = client.get_run(run_id)
    runs = children(run.info.experiment_id, run_id)
    if runs.empty:
        return None
    others = baseline_runs(data_hashes(runs))
    write(runs, out, tracking.redact(f"reftlab sweep: {run.info.run_name}"), others)
    client.log_artifacts(run_id, str(out), "report")
    return str(out)
