"""Robust sweeps: set MLflow up before the jobs start, summarise the sweep when it ends.

Registered as a Hydra callback in conf/train.yaml; works with any launcher (basic, joblib,
submitit) because each job leaves `status.json` in its own output folder.
"""

from __future__ import annotations

import atexit
import json
import logging
import os
import socket
import sys
from collections import Counter
from pathlib import Path

from hydra.experimental.callback import Callback

from .. import tracking
from ..tracking import CACHE_FROM_ENV, STATUS_FILE
from .parent import SweepDirBusy, opened
from .parent import close as close_parent
from .parent import open_for as open_parent
from .parent import release as release_dir

log = logging.getLogger(__name__)


def read_statuses(sweep_dir: Path, jobs: list[list[str]] | None = None) -> list[dict]:
    """One row per job of the sweep: its status file, or `missing` for a job that Hydra started
    (its folder holds .hydra/) but that died before writing one (OOM kill, SIGKILL, a crash at start).
    With `jobs` (the sweep's jobs, by number, as `job_list` gives them) every job the launcher never
    started is a `missing` row too (a worker killed before its jobs got a folder), so a sweep's
    counts always add up to its number of jobs."""
    folders = sorted(p for p in Path(sweep_dir).iterdir() if p.is_dir()) if Path(sweep_dir).is_dir() else []
    rows = []
    for job in folders:
        path = job / STATUS_FILE
        if path.exists():
            rows.append({"job": job.name, "folder": job, **json.loads(path.read_text())})
        elif (job / ".hydra").is_dir():
            rows.append(
                {"job": job.name, "status": "missing", "error": "the job ended without a status (killed?)"}
            )
    if jobs is None or len(rows) >= len(jobs):
        return rows
    numbered = {str(i) for i in range(len(jobs))}
    seen = {r["job"] for r in rows}
    if seen <= numbered:  # hydra.sweep.subdir is the job's number: name the jobs that never ran
        absent = [(str(i), " ".join(o)) for i, o in enumerate(jobs) if str(i) not in seen]
    else:
        absent = [("?", "") for _ in range(len(jobs) - len(rows))]
    rows += [{"job": job, "status": "missing", "started": False,
              "error": f"{NEVER_RAN} ({overrides})" if overrides else NEVER_RAN} for job, overrides in absent]  # fmt: skip
    return sorted(rows, key=lambda r: (not r["job"].isdigit(), int(r["job"]) if r["job"].isdigit() else 0))


def parts_of_sweep(sweep_dir: Path) -> dict[str, str]:
    """A sweep over datasets: each dataset's parent run (`parent.open_for`), else {}."""
    return opened(sweep_dir).get("parts") or {}


NEVER_RAN = "the job never started: its launcher or worker ended first (killed?), or the sweep was stopped"


def job_list(config) -> list[list[str]] | None:
    """The sweep's jobs (each one's overrides, in Hydra's numbering) as Hydra's basic sweeper makes
    them from the command line and the preset's sweeper params; None under another sweeper, or
    where the list cannot be made here (a glob over a config group)."""
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.override_parser.overrides_parser import OverridesParser

    sweeper = config.hydra.get("sweeper", {})
    if not str(sweeper.get("_target_", "")).endswith("basic_sweeper.BasicSweeper"):
        return None
    lines = [f"{k}={v}" for k, v in (sweeper.get("params") or {}).items()]
    lines += [str(o) for o in config.hydra.overrides.get("task", [])]
    try:
        (batch,) = BasicSweeper.split_arguments(OverridesParser.create().parse_overrides(lines), None)
    except Exception:
        return None
    return batch


BAD = ("failed", "killed", "missing")


def lowest_layer(config) -> int | None:
    """The lowest value `intervention.layer` takes in this sweep (command line or preset sweeper
    params; a list value counts its lowest layer), or None where the sweep does not vary it."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    lines = [str(o) for o in config.hydra.overrides.get("task", [])]
    lines += [f"{k}={v}" for k, v in (config.hydra.get("sweeper", {}).get("params") or {}).items()]
    found = []
    for override in OverridesParser.create().parse_overrides(lines):
        if override.key_or_group != "intervention.layer" or not override.is_sweep_override():
            continue
        for value in override.sweep_iterator():
            for layer in value if isinstance(value, list) else [value]:
                if isinstance(layer, int) and not isinstance(layer, bool):
                    found.append(layer)
    return min(found) if len(set(found)) > 1 else None


def summary(rows: list[dict]) -> str:
    """The sweep's counts by status, then a line per job that failed, died or may still run."""
    counts = Counter(r["status"] for r in rows)
    parts = ", ".join(f"{counts.get(s, 0)} {s}" for s in ("finished", "failed", "skipped", "killed"))
    for extra in ("missing", "running"):
        if counts.get(extra):
            parts += f", {counts[extra]} {extra}"
    lines = [f"sweep summary: {len(rows)} jobs: {parts}"]
    lines += [f"  job {r['job']} {r['status']}: {r.get('error', '')}" for r in rows if r["status"] in BAD]
    lines += [f"  job {r['job']} still running on host {r.get('host', '?')} (pid {r.get('pid', '?')}): "
              f"{r.get('note', 'not verified')}" for r in rows if r["status"] == "running"]  # fmt: skip
    return "\n".join(lines)


DIED = (
    "the job's process ended without closing its run (killed with SIGKILL, OOM-killed, or stopped with "
    "its launcher's worker pool)"
)


def alive(row: dict, since: float | None = None) -> bool | None:
    """Whether the process of a job that says it is running still runs: True, False (evidence from
    this host's /proc, a zombie is dead, or from the scheduler), or None (unknown: another host).
    `since`: a time the job's process was running (a pid reused by a later process is not it)."""
    pid, host = row.get("pid"), row.get("host") or socket.gethostname()
    if pid and host == socket.gethostname():
        return pid_alive(int(pid), since)
    if row.get("slurm_job_id"):
        return slurm_job_alive(str(row["slurm_job_id"]))
    return None


def pid_alive(pid: int, since: float | None = None) -> bool:
    """Whether process `pid` of this host runs (a zombie has ended); with `since` (a time the process
    was already running), a process of that pid started later is another one (the pid was reused)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    if state == "Z":
        return False
    if since is not None:
        import psutil

        try:
            return psutil.Process(pid).create_time() <= since + 1
        except psutil.Error:
            return False
    return True


SLURM_ACTIVE = {"PENDING", "CONFIGURING", "RUNNING", "COMPLETING", "SUSPENDED", "REQUEUED", "REQUEUE_HOLD",
                "REQUEUE_FED", "RESIZING", "SIGNALING", "STAGE_OUT", "STOPPED", "RESV_DEL_HOLD"}  # fmt: skip
SLURM_ENDED = {"COMPLETED", "CANCELLED", "FAILED", "TIMEOUT", "NODE_FAIL", "PREEMPTED", "BOOT_FAIL",
               "DEADLINE", "OUT_OF_MEMORY", "REVOKED", "SPECIAL_EXIT"}  # fmt: skip


def slurm_job_alive(job_id: str) -> bool | None:
    """What the scheduler says of SLURM job `job_id`: `squeue`, then `sacct` (a job squeue has
    forgotten); None where neither answers (commands missing, failing, or an unknown state)."""
    for args in (
        ["squeue", "-h", "-j", job_id, "-o", "%T"],
        ["sacct", "-n", "-X", "-P", "-j", job_id, "-o", "State"],
    ):
        state = scheduler_state(args)
        if state in SLURM_ACTIVE:
            return True
        if state in SLURM_ENDED:
            return False
    return None


def scheduler_state(args: list[str]) -> str | None:
    """The first job state a scheduler command prints (`CANCELLED by 0` -> CANCELLED), or None."""
    import subprocess

    try:
        out = subprocess.run(args, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return None
    words = out.stdout.split() if out.returncode == 0 else []
    return words[0].rstrip("+").upper() if words else None


NOT_VERIFIED = "not verified: no word from its host or the scheduler that it ended; left running"
STILL_RUNS = "its process (or SLURM job) still runs; left running"


def close_dead_runs(rows: list[dict], tracking_uri: str, all_ended: bool) -> None:
    """Jobs still `running` whose process is gone (all of them, when the launcher says every job has
    ended): their MLflow run is marked KILLED with the reason, their status file says killed. A job
    with no evidence either way (another host, no scheduler answer) is left running, and said so."""
    client = None
    for row in rows:
        if row["status"] != "running":
            continue
        state = False if all_ended else alive(row)
        if state is False:
            client = mark_killed(row, tracking_uri, client)
        else:
            row["note"] = STILL_RUNS if state else NOT_VERIFIED


def mark_killed(row: dict, tracking_uri: str, client=None):
    """Mark a dead job's MLflow run KILLED (tag `error`) and its status killed; returns the client."""
    from mlflow.tracking import MlflowClient

    if row.get("run_id"):
        client = client or MlflowClient(tracking_uri)
        try:
            client.set_tag(row["run_id"], "error", DIED)
            client.set_terminated(row["run_id"], status="KILLED")
        except Exception as e:  # the summary still tells; the store may be unreachable
            log.warning("Could not mark run %s KILLED: %s", row["run_id"], e)
    if row.get("folder") and Path(row["folder"]).is_dir():
        tracking.write_status(row["folder"], "killed", run_id=row.get("run_id"), error=DIED)
    row.update(status="killed", error=DIED)
    return client


def ranking(rows: list[dict], top: int = 20) -> str:
    """The sweep's jobs that produced metrics, best validation accuracy first (test beside it:
    reported, not used to choose), with the overrides that tell them apart (those all share are
    left out). A sweep over datasets ranks each dataset's jobs apart (accuracies of different data
    do not compare: 2 options against 5)."""
    import yaml

    from .parent import job_part

    table = []
    for row in rows:
        folder = row.get("folder")
        metrics_path = folder / "metrics.json" if folder else None
        if not metrics_path or not metrics_path.exists():
            continue
        m = {k: float("nan") if v is None else v for k, v in json.loads(metrics_path.read_text()).items()}
        overrides_path = folder / ".hydra" / "overrides.yaml"
        overrides = yaml.safe_load(overrides_path.read_text()) if overrides_path.exists() else []
        if m.get("pruned"):  # a search's trial its pruner stopped: no test score, marked in the table
            overrides = [*(overrides or []), f"[pruned_after_epoch={m.get('epochs_done', 0):.0f}]"]
        table.append((m.get("val_accuracy", float("nan")), m.get("accuracy", float("nan")),
                      m.get("train_seconds", float("nan")), row["job"], " ".join(overrides or []),
                      job_part(row)))  # fmt: skip
    if not table:
        return ""
    common = set.intersection(*(set(t[4].split(" ")) for t in table)) if len(table) > 1 else set()
    table = [(*t[:4], " ".join(o for o in t[4].split(" ") if o not in common), t[5]) for t in table]
    parts = list(dict.fromkeys(t[5] for t in table))  # in the sweep's order
    table.sort(key=lambda t: (-(t[0] if t[0] == t[0] else -1), -(t[1] if t[1] == t[1] else -1)))
    apart = len(parts) > 1
    heading = "jobs ranked by validation accuracy" + (" within each dataset" if apart else "")
    lines = [f"{heading} (test beside it, not used to choose); top {min(top, len(table))}"
             + (" of each:" if apart else ":")]  # fmt: skip
    for part in parts:
        if apart:
            lines.append(f"  data={part}:")
        lines.append(f"  {'job':>4} {'val':>6} {'test':>6} {'train_s':>8}  overrides")
        for val, test, seconds, job, overrides, _ in [t for t in table if t[5] == part][:top]:
            lines.append(f"  {job:>4} {100 * val:>5.1f}% {100 * test:>5.1f}% {seconds:>8.0f}  {overrides}")
    return "\n".join(lines)


def check_sweeper(config) -> None:
    """The sweeper's own checks of its settings where it has them (`check(config)`: the search's
    space, objectives, storage): a bad value prints its message and exits 2, nothing recorded."""
    from hydra.utils import get_class

    from ..config import ConfigError

    try:
        check = getattr(get_class(str(config.hydra.sweeper._target_)), "check", None)
    except Exception:
        return
    if check is None:
        return
    try:
        check(config)
    except ConfigError as e:  # Hydra turns a callback's exceptions into warnings: stop here, exit 2
        print(f"error: {tracking.redact(e)}", file=sys.stderr)
        raise SystemExit(2) from None


class SweepCallback(Callback):
    """Sets MLflow up before the jobs, shares one prefix cache over the layers of a sweep, and at its
    end closes the runs of jobs that died and prints a summary. A launcher that fails (a worker
    killed under joblib, a job killed under submitit) skips Hydra's end-of-sweep callback; the
    same closing runs at the interpreter's exit then. SIGTERM anywhere in the sweep (a job, a fused
    group's training, between jobs) stops it like Ctrl-C: the running job is KILLED, the summary is
    printed and the parent run is KILLED."""

    def on_multirun_start(self, config, **kwargs) -> None:
        # Create the tracking database and experiment once, before parallel jobs race to do it.
        tracking.redact_logging()  # the launchers log each job's overrides
        tracking.remember_secrets([str(o) for o in config.hydra.overrides.task])

        check_sweeper(config)  # a search's bad setting stops here, before its parent run opens
        uri = tracking.tracking_uri(config.mlflow.get("tracking_uri"))
        launcher = str(config.hydra.launcher.get("_target_", ""))
        if uri.startswith("sqlite:") and "slurm" in launcher.lower():
            log.warning(
                "SQLite tracking (%s) with a SLURM launcher: SQLite locking on a shared (NFS) filesystem is "
                "unreliable; use a tracking server (make mlflow-server; mlflow.tracking_uri=http://...)",
                tracking.redact(uri),
            )
        experiment_id = tracking.setup(config.mlflow)

        # one parent run for the whole sweep, before any job starts: every job becomes its child; it
        # knows how many jobs the sweep has (a job that never got a folder still counts)
        self._jobs = job_list(config)
        try:
            self._parent = (
                open_parent(config, uri, experiment_id, len(self._jobs) if self._jobs else None),
                experiment_id,
            )
        except SweepDirBusy as e:  # Hydra turns a callback's exceptions into warnings: stop here, exit 2
            print(f"error: {tracking.redact(e)}", file=sys.stderr)
            raise SystemExit(2) from None
        self._restore = (
            tracking.stop_on_signals()
        )  # outside any job's run too (a fused group trains outside them)
        # Jobs at different layers share one prefix cache built from the lowest (trainer.cache_from
        # set by hand wins); a cache from a lower layer serves every layer above it.
        os.environ.pop(CACHE_FROM_ENV, None)
        lowest = lowest_layer(config)
        if lowest is not None and config.trainer.get("cache_from") is None:
            os.environ[CACHE_FROM_ENV] = str(lowest)
            log.info("Sweep over layers: one prefix cache from layer %d serves all of them", lowest)
        self._pending = (Path(config.hydra.sweep.dir), uri)
        atexit.register(self._at_exit)

    def on_job_start(self, config, **kwargs) -> None:
        """Every job, under any launcher and in its own process: credentials masked in its log
        records and in the files Hydra wrote before it started (.hydra/*.yaml, multirun.yaml)."""
        from hydra.core.hydra_config import HydraConfig
        from hydra.types import RunMode

        tracking.redact_logging()
        tracking.remember_secrets([str(o) for o in config.hydra.overrides.task])
        runtime = config.hydra.runtime.output_dir if config.hydra.runtime.output_dir else None
        if runtime and config.hydra.output_subdir:
            folder = Path(runtime) / str(config.hydra.output_subdir)
            tracking.redact_files(*(folder / f for f in ("config.yaml", "hydra.yaml", "overrides.yaml")))
        if HydraConfig.initialized() and config.hydra.mode == RunMode.MULTIRUN:
            tracking.redact_files(Path(config.hydra.sweep.dir) / "multirun.yaml")

    def _finish(self, all_ended: bool) -> list[dict]:
        sweep_dir, uri = self._pending
        self._pending = None
        os.environ.pop(CACHE_FROM_ENV, None)
        rows = read_statuses(sweep_dir, getattr(self, "_jobs", None))
        close_dead_runs(rows, uri, all_ended)
        text = summary(rows)
        ranked = ranking(rows)
        text += f"\n{ranked}" if ranked else ""
        text += self._close_parent(sweep_dir, uri, rows, all_ended)
        text = tracking.redact(text)  # the overrides it shows may hold a URL with a password
        print(text, file=sys.stderr)  # once: not through Hydra's logger as well
        return rows

    def _close_parent(self, sweep_dir: Path, uri: str, rows: list[dict], all_ended: bool) -> str:
        """End the sweep's parent run with its answer; the lines that point a person to it."""
        opened = getattr(self, "_parent", None)
        if not opened:
            return ""
        run_id, experiment_id = opened
        try:
            report_dir = close_parent(
                sweep_dir, uri, rows, all_ended, run_id, tracking.stopped_by() is not None
            )
        except Exception as e:  # the store may be unreachable: the jobs' runs and files still hold it all
            log.warning("Could not close the sweep's parent run %s: %s", run_id, e)
            return ""
        finally:
            release_dir(sweep_dir)
            getattr(self, "_restore", lambda: None)()
        parts = parts_of_sweep(sweep_dir)
        if parts:  # a sweep over datasets: one parent a dataset, each with its jobs and report
            lines = [f"sweep run {run_id} (a parent run a dataset under it; reports: {report_dir or 'none'}):",
                     f"  {tracking.ui_link(uri, experiment_id, run_id)}"]  # fmt: skip
            for value, part in parts.items():
                lines += [f"  data={value}: run {part}, python report.py --run {part}"]
            return "\n" + "\n".join(lines)
        lines = [f"sweep run {run_id} (its jobs are its children; report: {report_dir or 'none'}):",
                 f"  {tracking.ui_link(uri, experiment_id, run_id)}",
                 f"  python report.py --run {run_id}"]  # fmt: skip
        return "\n" + "\n".join(lines)

    def _at_exit(self) -> None:
        # the launcher failed: Hydra skipped on_multirun_end (nothing to say if no job started)
        if not getattr(self, "_pending", None):
            return
        if read_statuses(self._pending[0], getattr(self, "_jobs", None)):
            self._finish(all_ended=False)
        elif getattr(self, "_parent", None):  # no job started: end the parent, nothing to summarise
            sweep_dir, uri = self._pending
            self._pending = None
            self._close_parent(sweep_dir, uri, [], False)

    def on_multirun_end(self, config, **kwargs) -> None:
        atexit.unregister(self._at_exit)
        rows = self._finish(all_ended=True)
        if any(r["status"] in BAD for r in rows):
            # Hydra turns a callback's exceptions into warnings; SystemExit still sets the exit code.
            raise SystemExit(1)
