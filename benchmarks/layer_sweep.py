"""A sweep over layers with one prefix-cache pass vs one pass per layer (issue 12's CPU target).

    python benchmarks/layer_sweep.py                                   # layers 8,16,24, default data
    python benchmarks/layer_sweep.py --max-train 256 --max-eval 128 --epochs 1    # a quicker look

Runs the design card's sweep twice on the same settings, each with an empty prefix-cache store:
- per layer: each layer as its own `train.py` run (what a sweep did before the cache key lost the
  layer: every job built its own training and evaluation caches);
- one pass:  `train.py -m intervention.layer=...`: the sweep builds one cache from its lowest layer
  and every other job derives its own from it (tags `cache_source`, `cache_point`).
Prints each job's cache source, accuracy and times (from its MLflow run), the walls, and as last
line `layer_sweep speedup_wall=<per-layer/one-pass> speedup_jobs=<...> passes=<built per layer>/<built
one pass> same_accuracy=<bool>`; speedup_jobs compares the runs' own train + eval seconds (no
process start-up or model loading).
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
    ap.add_argument("--layers", default="8,16,24")
    ap.add_argument("--max-train", type=int, default=None, help="data.max_train (default: all)")
    ap.add_argument("--max-val", type=int, default=None)
    ap.add_argument("--max-eval", type=int, default=None)
    ap.add_argument("--epochs", type=int, default=None, help="trainer.epochs (default: the config's)")
    ap.add_argument("overrides", nargs="*", help="more train.py overrides for both sweeps")
    return ap.parse_args(argv)


def overrides_of(args) -> list[str]:
    out = ["save_intervention=false"]
    for key, value in (("data.max_train", args.max_train), ("data.max_val", args.max_val),
                       ("data.max_eval", args.max_eval), ("trainer.epochs", args.epochs)):  # fmt: skip
        if value is not None:
            out.append(f"{key}={value}")
    return out + list(args.overrides)


def train(argv: list[str]) -> float:
    t0 = time.perf_counter()
    done = subprocess.run([sys.executable, "train.py", *argv], cwd=ROOT, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"train.py {' '.join(argv)} failed:\n{done.stderr[-3000:]}")
    return time.perf_counter() - t0


def runs(uri: str):
    import mlflow

    mlflow.set_tracking_uri(uri)
    df = mlflow.search_runs(experiment_names=["layer_sweep_benchmark"])
    return df.sort_values("params.intervention.layer", key=lambda s: s.astype(int))


def main(argv=None) -> None:
    args = parse_args(argv)
    layers = [int(x) for x in args.layers.split(",")]
    common = overrides_of(args) + ["mlflow.experiment=layer_sweep_benchmark"]
    with tempfile.TemporaryDirectory(prefix="layer-sweep-") as tmp:
        tmp = Path(tmp)
        uri_a, uri_b = f"sqlite:///{tmp / 'per_layer.db'}", f"sqlite:///{tmp / 'one_pass.db'}"
        wall_a = 0.0
        for layer in layers:  # per layer: its own process and its own empty cache store
            print(f"per layer: layer {layer} ...", flush=True)
            wall_a += train([*common, f"intervention.layer={layer}", f"trainer.cache_dir={tmp / f'a{layer}'}",
                             f"mlflow.tracking_uri={uri_a}", f"hydra.run.dir={tmp / f'run{layer}'}"])  # fmt: skip
        print("one pass: the sweep ...", flush=True)
        wall_b = train(["-m", *common, f"intervention.layer={args.layers}", f"trainer.cache_dir={tmp / 'b'}",
                        f"mlflow.tracking_uri={uri_b}", f"hydra.sweep.dir={tmp / 'sweep'}"])  # fmt: skip
        a, b = runs(uri_a), runs(uri_b)
    cols = ["params.intervention.layer", "tags.cache_source", "tags.cache_point", "metrics.accuracy",
            "metrics.cache_seconds", "metrics.train_seconds", "metrics.eval_seconds"]  # fmt: skip
    for name, df in (("per layer", a), ("one pass", b)):
        print(f"\n{name}:")
        print(
            df[cols].rename(columns=lambda c: c.split(".", 1)[1]).to_string(index=False, float_format="%.3f")
        )
    jobs_a = float((a["metrics.train_seconds"] + a["metrics.eval_seconds"]).sum())
    jobs_b = float((b["metrics.train_seconds"] + b["metrics.eval_seconds"]).sum())
    built_a = int((a["tags.cache_source"] == "built").sum())
    built_b = int((b["tags.cache_source"] == "built").sum())
    same = bool((a["metrics.accuracy"].to_numpy() == b["metrics.accuracy"].to_numpy()).all())
    print(
        f"\nwall: per layer {wall_a:.0f} s, one pass {wall_b:.0f} s; jobs (train + eval): {jobs_a:.0f} s vs {jobs_b:.0f} s"
    )
    print(f"layer_sweep speedup_wall={wall_a / wall_b:.2f}x speedup_jobs={jobs_a / jobs_b:.2f}x "
          f"passes={built_a}/{built_b} same_accuracy={same}")  # fmt: skip


if __name__ == "__main__":
    main()
