"""Makespan of one sweep three ways, side by side on this machine: fused (`hydra/launcher=fused`),
one job after another (Hydra's basic launcher), and N processes in parallel (`local_parallel`);
and each fused member's agreement with the same job run on its own.

    python benchmarks/fused_sweep.py                                   # 4 ranks x 3 seeds, bundled model
    python benchmarks/fused_sweep.py --ranks 1,4 --seeds 1 --max-train 32   # a quick look

Every sweep starts from an empty prefix-cache folder and its own MLflow experiment in one temporary
store, so each pays its own cache pass; the printed times are wall-clock of `python train.py -m`.

First, in this process, the step itself: the per-example time of a cached training step solo (each
rank on its own, batch trainer.batch_size) and fused (all the sweep's members in one step), beside
its arithmetic (FLOPs counted from the model's shapes: the suffix tokens through the layers above
the intervention, forward and backward to the inputs, attention over each example's own prefix,
the answer logits) at the matmul rate measured here on the step's own shapes (`--skip step`: not).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# train_speed's Bench: the model and data of the step measurement
sys.path.insert(0, str(ROOT / "benchmarks"))


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2_135m", help="a conf/model name")
    ap.add_argument("--ranks", default="1,4,16,32")
    ap.add_argument("--seeds", default="1,2,3")
    ap.add_argument("--layer", type=int, default=15)
    ap.add_argument("--positions", default="l3")
    ap.add_argument("--epochs", type=int, default=5)
    ap.add_argument("--max-train", type=int, default=64)
    ap.add_argument("--max-val", type=int, default=32)
    ap.add_argument("--max-eval", type=int, default=32)
    ap.add_argument("--max-length", type=int, default=256)
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--parallel", type=int, default=2, help="processes of the parallel sweep")
    ap.add_argument("--batch-size", type=int, default=8, help="trainer.batch_size (the ablation base's)")
    ap.add_argument("--step-examples", type=int, default=64, help="training examples of the step measurement")
    ap.add_argument("--skip", default="", help="comma-separated: step, fused, sequential, parallel")
    ap.add_argument(
        "--log-models", action="store_true", help="also log each job's MLflow model (as by default)"
    )
    return ap.parse_args(argv)


def sweep(args, name: str, store: Path, launcher: list[str]) -> tuple[float, str]:
    cmd = [sys.executable, "train.py", "-m", *launcher, f"model={args.model}", f"model.dtype={args.dtype}",
           f"intervention.layer={args.layer}", f"intervention.positions={args.positions}",
           f"intervention.rank={args.ranks}", f"seed={args.seeds}", f"trainer.epochs={args.epochs}",
           f"trainer.max_length={args.max_length}", f"trainer.batch_size={args.batch_size}",
           f"data.max_train={args.max_train}",
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


def step_flops(config, start: int, prefix_lens, suffix_len: int, answer_positions: int) -> float:
    """FLOPs of one example's cached training step: `suffix_len` tokens through layers start..N-1
    (the linear layers, attention over its own `prefix_lens` keys and the suffix), the answer logits;
    the backward to the inputs costs what the forward does (the frozen weights get no gradient)."""
    from reftlab.models import head_dim

    h, d = config.hidden_size, head_dim(config)
    q, kv = config.num_attention_heads * d, config.num_key_value_heads * d
    linear = 2 * (h * q + 2 * h * kv + q * h + 3 * h * config.intermediate_size)  # per token and layer
    layers = config.num_hidden_layers - start
    attention = 4 * q * (prefix_lens + suffix_len)  # QK^T and PV, per token and layer
    head = 2 * h * config.vocab_size * answer_positions
    return float(2 * (suffix_len * layers * (linear + attention) + head))


def matmul_rate(config, rows: int, dtype) -> float:
    """GFLOP/s of this machine's matmul on the step's own largest shape ([rows, hidden] x [hidden,
    intermediate], forward and backward to the input), the best of 5 runs of 10."""
    import torch

    w = torch.randn(config.intermediate_size, config.hidden_size, dtype=dtype)
    x = torch.randn(rows, config.hidden_size, dtype=dtype, requires_grad=True)
    g = torch.randn(rows, config.intermediate_size, dtype=dtype)
    best = float("inf")
    for _ in range(5):
        t = time.perf_counter()
        for _ in range(10):
            torch.nn.functional.linear(x, w).backward(g)
        best = min(best, (time.perf_counter() - t) / 10)
    return 4 * rows * config.hidden_size * config.intermediate_size / best / 1e9


def step_section(args) -> None:
    """The cached step solo and fused, per example, beside its arithmetic (see the module doc)."""
    import numpy as np
    import torch
    import train_speed

    from reftlab import methods, reft
    from reftlab.engine import fused
    from reftlab.engine.plan import start_point, train_inputs
    from reftlab.engine.prefix import build
    from reftlab.engine.strategies import Context
    from reftlab.spec import InterventionSpec

    ranks = [int(r) for r in args.ranks.split(",")]
    seeds = [int(x) for x in args.seeds.split(",")]
    bench = train_speed.Bench(train_speed.parse_args(
        ["--model", args.model, "--dtype", args.dtype, "--examples", str(args.step_examples), "--eval", "0",
         "--positions", args.positions, "--layer", str(args.layer), "--epochs", "1", "--max-length",
         str(args.max_length), "--batch-size", str(args.batch_size)]))  # fmt: skip
    model, examples = bench.model, bench.train
    n_pos = int(args.positions.lstrip("l"))
    seqs, suffix = train_inputs(examples, n_pos)
    spec0 = InterventionSpec.of(bench.settings(ranks[0]), model.config.num_hidden_layers)
    cache = build(model, start_point(spec0), seqs, suffix, bench.tok.pad_token_id, progress=False)

    def group(settings_seeds):
        out = []
        for rank, seed in settings_seeds:
            settings = bench.settings(rank)
            torch.manual_seed(seed)
            trained = reft.build(model, settings)
            spec = InterventionSpec.of(settings, model.config.num_hidden_layers)
            ctx = Context(
                trained, methods.get("loreft"), spec, bench.trainer, bench.tok.pad_token_id, progress=False
            )
            out.append(fused.Member(ctx, seed))
        return out

    def per_example(members) -> float:
        seconds = fused.train(members, cache, examples, progress=False)
        return 1000 * seconds / (len(members) * len(examples))

    def weights(member):
        return torch.cat([p.detach().flatten() for p in reft.trainable_parameters(member.ctx.trained)])

    per_example(group([(ranks[0], 0)]))  # warm-up: first-call allocations
    solo, alone = {}, {}
    for rank in ranks:
        (alone[rank],) = one = group([(rank, seeds[0])])
        solo[rank] = per_example(one)
    members = [(r, s) for r in ranks for s in seeds]
    stacked = group(members)
    together = per_example(stacked)
    same = [(alone[r], m) for (r, s), m in zip(members, stacked, strict=True) if s == seeds[0]]
    loss_diff = max(
        float(np.max(np.abs(np.subtract(a.losses, m.losses)) / np.abs(a.losses))) for a, m in same
    )
    weight_diff = max(float((weights(a) - weights(m)).norm() / weights(a).norm()) for a, m in same)
    answers = len(examples[0][1])
    flops = np.mean([step_flops(model.config, cache.start, int(p), int(s), answers)
                     for p, s in zip(cache.prefix_len, cache.suffix_len, strict=True)])  # fmt: skip
    rows = len(members) * args.batch_size * int(cache.suffix_len.max())
    rate = matmul_rate(model.config, rows, model.dtype)
    floor = 1000 * flops / (rate * 1e9)
    print(f"\nthe cached step ({args.step_examples} examples, 1 epoch, batch {args.batch_size}, "
          f"{model.dtype}): {flops / 1e9:.2f} GFLOP an example; matmul rate here {rate:.0f} GFLOP/s "
          f"({rows} rows x {model.config.hidden_size} x {model.config.intermediate_size}): arithmetic "
          f"{floor:.1f} ms an example")  # fmt: skip
    for rank, ms in solo.items():
        print(f"  solo rank {rank:>3}: {ms:6.1f} ms an example ({ms / floor:.2f}x its arithmetic)")
    mean = float(np.mean(list(solo.values())))
    print(f"  fused x{len(members)}: {together:6.1f} ms an example ({together / floor:.2f}x its arithmetic; "
          f"{mean / together:.2f}x less than solo on average)", flush=True)  # fmt: skip
    print(f"  each solo run against its fused twin (seed {seeds[0]}): per-step losses differ by at most "
          f"{loss_diff:.1e} (relative), trained weights by {weight_diff:.1e}")  # fmt: skip


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
    if "step" not in skip:
        step_section(args)
    if "fused" in skip:
        return 0
    store = Path(tempfile.mkdtemp(prefix="reftlab-bench-fused-"))
    times = {}
    times["fused"], said = sweep(args, "fused", store, ["hydra/launcher=fused"])
    group = [line for line in said.splitlines() if "Fused group" in line]
    print(
        f"\nfused: {times['fused']:.0f} s  ({group[-1].split('] ')[-1] if group else 'no group formed'})",
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
