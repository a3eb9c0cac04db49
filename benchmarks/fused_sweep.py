"""Makespan of one sweep three ways, side by side on this machine: fused (`hydra/launcher=fused`),
one job after another (Hydra's basic launcher), and N processes in parallel (`local_parallel`);
and each fused member's agreement with the same job run on its own.

    python benchmarks/fused_sweep.py                                   # 4 ranks x 3 seeds, bundled model
    python benchmarks/fused_sweep.py --ranks 1,4 --seeds 1 --max-train 32   # a quick look

Every sweep starts from an empty prefix-cache folder and its own MLflow experiment in one temporary
store, so each pays its own cache pass; the printed times are wall-clock of `python train.py -m`.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2_135m", help="a conf/model name")
    ap.add_argument("--ranks", default="1,4,16,32")
    ap.add_argument("--seeds", default="1,2,3")
    ap.add_argument("--layer", type=int, default=15)
    ap.add_argument("--positions", default="l3")
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--max-train", type=int, default=128)
    ap.add_argument("--max-val", type=int, default=64)
    ap.add_argument("--max-eval", type=int, default=64)
    ap.add_argument("--max-length", type=int, default=256)
    ap.add_argument("--dtype", default="auto")
    ap.add_argument("--parallel", type=int, default=2, help="processes of the parallel sweep")
    ap.add_argument("--skip", default="", help="comma-separated: sequential, parallel")
    ap.add_argument(
        "--log-models", action="store_true", help="also log each job's MLflow model (as by default)"
    )
    return ap.parse_args(argv)


def sweep(args, name: str, store: Path, launcher: list[str]) -> tuple[float, str]:
    cmd = [sys.executable, "train.py", "-m", *launcher, f"model={args.model}", f"model.dtype={args.dtype}",
           f"intervention.layer={args.layer}", f"intervention.positions={args.positions}",
           f"intervention.rank={args.ranks}", f"seed={args.seeds}", f"trainer.epochs={args.epochs}",
           f"trainer.max_length={args.max_length}", f"data.max_train={args.max_train}",
           f"data.max_val={args.max_val}", f"data.max_eval={args.max_eval}",
           f"trainer.cache_dir={store / name / 'prefix'}", f"mlflow.tracking_uri=sqlite:///{store / 'mlflow.db'}",
           f"mlflow.experiment=bench_{name}", f"hydra.sweep.dir={store / name / 'multirun'}",
           f"mlflow.log_model={str(args.log_models).lower()}"]  # fmt: skip
    start = time.perf_counter()
    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if out.returncode != 0:
        print(out.stderr[-3000:], file=sys.stderr)
        raise SystemExit(f"the {name} sweep failed (exit {out.returncode})")
    return seconds, out.stdout + out.stderr


def results(store: Path, name: str):
    import mlflow

    mlflow.set_tracking_uri(f"sqlite:///{store / 'mlflow.db'}")
    runs = mlflow.search_runs(experiment_names=[f"bench_{name}"])
    if "tags.kind" in runs:
        runs = runs[runs["tags.kind"] != "sweep"]
    return runs.set_index(["params.intervention.rank", "params.seed"]).sort_index()


def main(argv=None) -> int:
    import numpy as np

    from reftlab import models

    args = parse_args(argv)
    skip = set(filter(None, args.skip.split(",")))
    n = len(args.ranks.split(",")) * len(args.seeds.split(","))
    cpu = models.cpu_model() or "unknown CPU"
    print(f"sweep of {n} jobs: ranks {args.ranks} x seeds {args.seeds}, {args.model} ({args.dtype}), layer "
          f"{args.layer} {args.positions}, {args.max_train} train / {args.max_val} val / {args.max_eval} test, "
          f"{args.epochs} epoch(s), max_length {args.max_length} | {cpu}", flush=True)  # fmt: skip
    store = Path(tempfile.mkdtemp(prefix="reftlab-bench-fused-"))
    times = {}
    times["fused"], said = sweep(args, "fused", store, ["hydra/launcher=fused"])
    group = [line for line in said.splitlines() if "Fused group" in line]
    print(
        f"fused: {times['fused']:.0f} s  ({group[-1].split('] ')[-1] if group else 'no group formed'})",
        flush=True,
    )
    if "sequential" not in skip:
        times["sequential"], _ = sweep(args, "sequential", store, [])
        print(f"one after another: {times['sequential']:.0f} s", flush=True)
    if "parallel" not in skip:
        launcher = ["hydra/launcher=local_parallel", f"hydra.launcher.n_jobs={args.parallel}"]
        times["parallel"], _ = sweep(args, "parallel", store, launcher)
        print(f"{args.parallel} processes in parallel: {times['parallel']:.0f} s", flush=True)
    fused = results(store, "fused")
    print("\nmakespan: " + ", ".join(f"{k} {v:.0f} s" for k, v in times.items()))
    for other in ("sequential", "parallel"):
        if other in times:
            print(f"fused vs {other}: {times[other] / times['fused']:.2f}x less wall-clock")
    if "sequential" in times:
        solo = results(store, "sequential")
        print("\nagreement of each fused member with its run on its own (relative difference):")
        print(
            f"{'rank':>5} {'seed':>5} {'train loss':>11} {'test log loss':>14} {'val log loss':>13} {'test acc':>9}"
        )
        for key in fused.index:
            f, s = fused.loc[key], solo.loc[key]
            rel = [abs(f[f"metrics.{m}"] - s[f"metrics.{m}"]) / abs(s[f"metrics.{m}"])
                   for m in ("train_loss_last", "log_loss", "val_log_loss")]  # fmt: skip
            same = "same" if np.isclose(f["metrics.accuracy"], s["metrics.accuracy"]) else "DIFFERS"
            print(f"{key[0]:>5} {key[1]:>5} {rel[0]:>11.1e} {rel[1]:>14.1e} {rel[2]:>13.1e} {same:>9}")
    print(f"\n(temporary store: {store})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
