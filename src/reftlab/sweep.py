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

from .tracking import STATUS_FILE

log = logging.getLogger(__name__)


def read_statuses(sweep_dir: Path) -> list[dict]:
    """One row per job of the sweep: its status file, or `missing` for a job that Hydra started
    (its folder holds .hydra/) but that died before writing one (OOM kill, SIGKILL, a crash at start)."""
    rows = []
    for job in sorted(p for p in Path(sweep_dir).iterdir() if p.is_dir()) if Path(sweep_dir).is_dir() else []:
        path = job / STATUS_FILE
        if path.exists():
            rows.append({"job": job.name, "folder": job, **json.loads(path.read_text())})
        elif (job / ".hydra").is_dir():
            rows.append(
                {"job": job.name, "status": "missing", "error": "the job ended without a status (killed?)"}
            )
    return rows


BAD = ("failed", "killed", "missing")
CACHE_FROM_ENV = (
    "REFTLAB_CACHE_FROM"  # the lowest layer of a sweep: its jobs build one prefix cache from there
)


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
    counts = Counter(r["status"] for r in rows)
    parts = ", ".join(f"{counts.get(s, 0)} {s}" for s in ("finished", "failed", "skipped", "killed"))
    for extra in ("missing", "running"):
        if counts.get(extra):
            parts += f", {counts[extra]} {extra}"
    lines = [f"sweep summary: {len(rows)} jobs: {parts}"]
    lines += [f"  job {r['job']} {r['status']}: {r.get('error', '')}" for r in rows if r["status"] in BAD]
    return "\n".join(lines)


DIED = (
    "the job's process ended without closing its run (killed with SIGKILL, OOM-killed, or stopped with "
    "its launcher's worker pool)"
)


def alive(row: dict) -> bool:
    """Whether the process of a job that says it is running still runs (on this host; a zombie is dead)."""
    pid = row.get("pid")
    if not pid or row.get("host", socket.gethostname()) != socket.gethostname():
        return False
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def close_dead_runs(rows: list[dict], tracking_uri: str, all_ended: bool) -> None:
    """Jobs still `running` whose process is gone (all of them, when the launcher says every job has
    ended): their MLflow run is marked KILLED with the reason, their status file says killed."""
    from mlflow.tracking import MlflowClient

    from . import tracking

    client = None
    for row in rows:
        if row["status"] != "running" or (not all_ended and alive(row)):
            continue
        if row.get("run_id"):
            client = client or MlflowClient(tracking_uri)
            try:
                client.set_tag(row["run_id"], "error", DIED)
                client.set_terminated(row["run_id"], status="KILLED")
            except Exception as e:  # the summary still tells; the store may be unreachable
                log.warning("Could not mark run %s KILLED: %s", row["run_id"], e)
        tracking.write_status(row["folder"], "killed", run_id=row.get("run_id"), error=DIED)
        row.update(status="killed", error=DIED)


def ranking(rows: list[dict], top: int = 20) -> str:
    """The sweep's jobs that produced metrics, best validation accuracy first (test beside it:
    reported, not used to choose), with the overrides that tell them apart (those all share are
    left out)."""
    import yaml

    table = []
    for row in rows:
        folder = row.get("folder")
        metrics_path = folder / "metrics.json" if folder else None
        if not metrics_path or not metrics_path.exists():
            continue
        m = json.loads(metrics_path.read_text())
        overrides_path = folder / ".hydra" / "overrides.yaml"
        overrides = yaml.safe_load(overrides_path.read_text()) if overrides_path.exists() else []
        table.append((m.get("val_accuracy", float("nan")), m.get("accuracy", float("nan")),
                      m.get("train_seconds", float("nan")), row["job"], " ".join(overrides or [])))  # fmt: skip
    if not table:
        return ""
    common = set.intersection(*(set(t[4].split(" ")) for t in table)) if len(table) > 1 else set()
    table = [(*t[:4], " ".join(o for o in t[4].split(" ") if o not in common)) for t in table]
    table.sort(key=lambda t: (-(t[0] if t[0] == t[0] else -1), -(t[1] if t[1] == t[1] else -1)))
    lines = [f"jobs ranked by validation accuracy (test beside it, not used to choose); top {min(top, len(table))}:",
             f"  {'job':>4} {'val':>6} {'test':>6} {'train_s':>8}  overrides"]  # fmt: skip
    for val, test, seconds, job, overrides in table[:top]:
        lines.append(f"  {job:>4} {100 * val:>5.1f}% {100 * test:>5.1f}% {seconds:>8.0f}  {overrides}")
    return "\n".join(lines)


class SweepCallback(Callback):
    """Sets MLflow up before the jobs, shares one prefix cache over the layers of a sweep, and at its
    end closes the runs of jobs that died and prints a summary. A launcher that fails (a worker
    killed under joblib, a job killed under submitit) skips Hydra's end-of-sweep callback; the
    same closing runs at the interpreter's exit then."""

    def on_multirun_start(self, config, **kwargs) -> None:
        # Create the tracking database and experiment once, before parallel jobs race to do it.
        from . import tracking

        uri = tracking.tracking_uri(config.mlflow.get("tracking_uri"))
        launcher = str(config.hydra.launcher.get("_target_", ""))
        if uri.startswith("sqlite:") and "slurm" in launcher.lower():
            log.warning(
                "SQLite tracking (%s) with a SLURM launcher: SQLite locking on a shared (NFS) filesystem is "
                "unreliable; use a tracking server (make mlflow-server; mlflow.tracking_uri=http://...)",
                tracking.redact(uri),
            )
        tracking.setup(config.mlflow)
        # Jobs at different layers share one prefix cache built from the lowest (trainer.cache_from
        # set by hand wins); a cache from a lower layer serves every layer above it.
        os.environ.pop(CACHE_FROM_ENV, None)
        lowest = lowest_layer(config)
        if lowest is not None and config.trainer.get("cache_from") is None:
            os.environ[CACHE_FROM_ENV] = str(lowest)
            log.info("Sweep over layers: one prefix cache from layer %d serves all of them", lowest)
        self._pending = (Path(config.hydra.sweep.dir), uri)
        atexit.register(self._at_exit)

    def _finish(self, all_ended: bool) -> list[dict]:
        sweep_dir, uri = self._pending
        self._pending = None
        os.environ.pop(CACHE_FROM_ENV, None)
        rows = read_statuses(sweep_dir)
        close_dead_runs(rows, uri, all_ended)
        text = summary(rows)
        ranked = ranking(rows)
        text += f"\n{ranked}" if ranked else ""
        print(text, file=sys.stderr)
        log.info(text)
        return rows

    def _at_exit(self) -> None:
        # the launcher failed: Hydra skipped on_multirun_end (nothing to say if no job started)
        if getattr(self, "_pending", None) and read_statuses(self._pending[0]):
            self._finish(all_ended=False)

    def on_multirun_end(self, config, **kwargs) -> None:
        atexit.unregister(self._at_exit)
        rows = self._finish(all_ended=True)
        if any(r["status"] in BAD for r in rows):
            # Hydra turns a callback's exceptions into warnings; SystemExit still sets the exit code.
            raise SystemExit(1)
