"""Robust sweeps: set MLflow up before the jobs start, summarise the sweep when it ends.

Registered as a Hydra callback in conf/train.yaml; works with any launcher (basic, joblib,
submitit) because each job leaves `status.json` in its own output folder.
"""

from __future__ import annotations

import json
import logging
import sys
from collections import Counter
from pathlib import Path

from hydra.experimental.callback import Callback

from .tracking import STATUS_FILE

log = logging.getLogger(__name__)


def read_statuses(sweep_dir: Path) -> list[dict]:
    rows = []
    for path in sorted(Path(sweep_dir).glob(f"*/{STATUS_FILE}")):
        rows.append({"job": path.parent.name, **json.loads(path.read_text())})
    return rows


def summary(rows: list[dict]) -> str:
    counts = Counter(r["status"] for r in rows)
    parts = ", ".join(f"{counts.get(s, 0)} {s}" for s in ("finished", "failed", "skipped", "killed"))
    lines = [f"sweep summary: {len(rows)} jobs: {parts}"]
    lines += [
        f"  job {r['job']} {r['status']}: {r.get('error', '')}"
        for r in rows
        if r["status"] in ("failed", "killed")
    ]
    return "\n".join(lines)


class SweepCallback(Callback):
    def on_multirun_start(self, config, **kwargs) -> None:
        # Create the tracking database and experiment once, before parallel jobs race to do it.
        from . import tracking

        tracking.setup(config.mlflow)

    def on_multirun_end(self, config, **kwargs) -> None:
        rows = read_statuses(Path(config.hydra.sweep.dir))
        text = summary(rows)
        print(text, file=sys.stderr)
        log.info(text)
        if any(r["status"] in ("failed", "killed") for r in rows):
            # Hydra turns a callback's exceptions into warnings; SystemExit still sets the exit code.
            raise SystemExit(1)
