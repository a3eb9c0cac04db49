"""Training speed: stock pyreft path vs cached-prefix path vs one no-grad forward pass (the floor).

    python benchmarks/train_speed.py                      # bundled SmolLM2-135M, bf16 where fast
    python benchmarks/train_speed.py --examples 64 --epochs 1 --eval 32    # a quick look
    python benchmarks/train_speed.py --task generate --data gsm8k --eval 0 --positions l7 --rank 8   # worked solutions

All paths run in this one process on the same model, data slice, dtype and settings, from the
same initial intervention weights (fp32 parameters and optimizer state, frozen model in bf16
where the hardware is fast at it):
- pyreft:   pyreft's own ReftTrainerForCausalLM (stock pyreft: right-padded prompt+answer batches,
            the whole model over the whole sequence, loss from the logits of every position);
- uncached: reftlab's path without the cache (trainer.cache=off): pyreft's IntervenableModel over
            the whole left-padded sequence, logits of the answer positions only, length-grouped
            batches (the same batches as the cached path, so per-step losses compare);
- cached:   trainer.cache=auto: one no-grad pass builds the prefix cache, steps run the suffix only;
- floor:    one plain no-grad forward pass over the same training prompts (eval batching; the
            faster of two passes).
The sweep is ranks 1,2,4,8 at one layer; the cached sweep builds the cache once (first job) and the
other jobs load it from the on-disk store, as parallel jobs of a Hydra sweep would. A stock sweep
repeats the whole work per job (the rank does not change its cost): by default it is 4 x the
measured run, --measure-stock-sweep runs them all.

Last line: speedup_vs_pyreft single=<pyreft/cached> sweep4=<pyreft/cached> vs_floor=<cached/floor>,
where cached counts building (or loading) its cache; the line before it gives the same against uncached.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

# Llama-3-8B-Instruct's architecture (its published config.json), for a randomly initialised model
# where no weights can be fetched (the GPU check).
LLAMA3_8B = dict(
    vocab_size=128256,
    hidden_size=4096,
    intermediate_size=14336,
    num_hidden_layers=32,
    num_attention_heads=32,
    num_key_value_heads=8,
    max_position_embeddings=8192,
    rms_norm_eps=1e-5,
    rope_theta=500000.0,
    tie_word_embeddings=False,
)


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2_135m", help="a conf/model name, or llama3_8b_random")
    ap.add_argument(
        "--tokenizer", default=None, help="tokenizer folder for llama3_8b_random (default: bundled)"
    )
    ap.add_argument(
        "--random-divide", type=int, default=1, help="llama3_8b_random: divide widths (smoke runs)"
    )
    ap.add_argument("--data", default="opinion_spam", help="a conf/data name")
    ap.add_argument(
        "--task", default="yes_no", help="yes_no, or generate (--data gsm8k: worked solutions; --eval 0)"
    )
    ap.add_argument("--examples", type=int, default=256, help="training examples")
    ap.add_argument("--eval", type=int, default=200, help="held-out examples for accuracy (0: skip)")
    ap.add_argument("--layer", type=int, default=15)
    ap.add_argument("--rank", type=int, default=4)
    ap.add_argument("--positions", default="l1")
    ap.add_argument("--epochs", type=int, default=5)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--grad-accum", type=int, default=1)
    ap.add_argument("--lr", type=float, default=4e-3)
    ap.add_argument("--max-length", type=int, default=256)
    ap.add_argument("--dtype", default="auto", help="auto (bf16 where fast), bfloat16, float32")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--sweep-ranks", default="1,2,4,8")
    ap.add_argument("--measure-stock-sweep", action="store_true", help="run the stock sweep (4 full runs)")
    ap.add_argument(
        "--skip-pyreft", action="store_true", help="leave out pyreft's ReftTrainer (no speedup_vs_pyreft)"
    )
    ap.add_argument(
        "--skip-uncached", action="store_true", help="leave out reftlab's uncached path (trainer.cache=off)"
    )
    ap.add_argument("--json", default=None, help="also write the results here")
    return ap.parse_args(argv)


def compose(*overrides):
    from reftlab.config.compose import compose as reftlab_compose

    return reftlab_compose(list(overrides))


def load(args):
    import torch

    from reftlab import models

    if args.model == "llama3_8b_random":
        from transformers import LlamaConfig, LlamaForCausalLM

        device = models.resolve_device(args.device)
        dtype = models.resolve_dtype(args.dtype, device)
        tokenizer = models.load_tokenizer(args.tokenizer or models.bundled_model_dir())
        arch = dict(LLAMA3_8B)
        for key in ("hidden_size", "intermediate_size", "num_attention_heads", "num_key_value_heads"):
            arch[key] = max(1, arch[key] // args.random_divide)
        config = LlamaConfig(**arch, pad_token_id=tokenizer.pad_token_id)
        torch.manual_seed(0)
        with torch.device(device):
            model = LlamaForCausalLM._from_config(config, dtype=dtype)
        model.eval().requires_grad_(False)
        from reftlab import hf_compat

        hf_compat.contiguous_lm_head(model)
        name = "Llama-3-8B architecture, random weights" + (
            f" (widths / {args.random_divide})" if args.random_divide > 1 else ""
        )
        return model, tokenizer, device, dtype, name
    cfg = compose(f"model={args.model}", f"model.dtype={args.dtype}", f"model.device={args.device}")
    model, tokenizer, device, dtype = models.load_model_and_tokenizer(cfg.model)
    return model, tokenizer, device, dtype, cfg.model.name


def examples_of(args, tokenizer):
    """Training pairs of the data as its task trains them (`--task`: yes_no, or generate for GSM8K's
    worked solutions), and the held-out Yes/No prompts (yes_no only) with their labels."""
    from reftlab import tasks
    from reftlab.data import recipes

    cfg = compose(f"task={args.task}", f"data={args.data}", f"data.max_train={args.examples}",
                  f"data.max_eval={args.eval or 1}", f"trainer.max_length={args.max_length}")  # fmt: skip
    for key in ("path", "test_path"):
        if cfg.data.get(key) is not None and not recipes.is_url(cfg.data[key]):
            cfg.data[key] = str(ROOT / cfg.data[key])
    prepared = recipes.prepare(cfg.data)
    task = tasks.of(cfg)
    builder = task.builder(tokenizer, cfg, prepared)
    train = task.examples(builder, prepared.train)
    if args.task != "yes_no" and args.eval:
        raise SystemExit(f"--task {args.task}: give --eval 0 (held-out accuracy is measured for yes_no only)")
    evals = builder.prompts(prepared.eval["text"]) if args.eval else []
    return train, evals, list(prepared.eval["label"]), builder


class Bench:
    def __init__(self, args):
        import torch

        self.args = args
        self.model, self.tok, self.device, self.dtype, self.model_name = load(args)
        self.train, self.evals, self.labels, self.builder = examples_of(args, self.tok)
        self.trainer = compose(
            f"trainer.epochs={args.epochs}",
            f"trainer.batch_size={args.batch_size}",
            f"trainer.grad_accum={args.grad_accum}",
            f"trainer.lr={args.lr}",
            f"trainer.max_length={args.max_length}",
        ).trainer
        self.store = None
        self.torch = torch

    def settings(self, rank):
        return dict(method="loreft", layer=self.args.layer, component="block_output", rank=rank,
                    positions=self.args.positions, share_weights=False, dropout=0.0,
                    num_layers=self.model.config.num_hidden_layers)  # fmt: skip

    def fresh(self, rank):
        from reftlab import reft

        self.torch.manual_seed(0)  # the same initial intervention weights for every path
        return reft.build(self.model, self.settings(rank))

    def sync(self):
        if self.device.startswith("cuda"):
            self.torch.cuda.synchronize()

    def accuracy(self, scores):
        from reftlab.tasks.yes_no import metrics

        return metrics(self.labels, scores)["accuracy"] if self.args.eval else float("nan")

    def warm_up(self):
        """One small forward and backward first, so no path pays for the first-call allocations."""
        from reftlab.engine.strategies import Stock

        model = self.fresh(self.args.rank)
        Stock(self.engine(model, self.args.rank, "off").ctx).batch_loss(self.train[:2]).backward()

    def floor(self) -> dict:
        from reftlab import methods
        from reftlab.engine import score

        prompts = [p for p, _ in self.train]
        self.sync()
        t0 = time.perf_counter()
        score(self.model, methods.get("none"), {}, prompts, self.builder.yes_id, self.builder.no_id,
              self.tok.pad_token_id, self.device, self.trainer.eval_batch_size, progress=True)  # fmt: skip
        self.sync()
        return {"path": "floor (1 no-grad forward)", "train_s": time.perf_counter() - t0, "build_s": 0.0}

    def engine(self, model, rank, cache: str, store=None):
        from reftlab import methods
        from reftlab.engine import Engine

        trainer = self.trainer.copy()
        trainer.cache, trainer.cache_max_gb = cache, 64
        return Engine(model, methods.get("loreft"), self.settings(rank), trainer, self.tok.pad_token_id, self.device,
                      store=store)  # fmt: skip

    def through_engine(self, rank, cache: str, evaluate: bool, label: str) -> dict:
        """reftlab's own training (trainer.cache=off: stock; auto: cached) through the run's Engine."""
        from reftlab.engine import clear_caches

        model = self.fresh(rank)
        engine = self.engine(model, rank, cache, self.store)
        clear_caches()  # each job is a fresh process in a parallel sweep: disk or build
        chosen = engine.plan_training(self.train)
        if cache == "auto" and chosen.strategy == "stock":
            raise SystemExit(f"cached path not applicable: {chosen.reason}")
        self.sync()
        res = engine.train(self.train, seed=0)
        self.sync()
        source = res.cache_source if res.path == "cached" else res.path  # residual: first-token positions
        out = {"path": label.format(rank=rank, source=source), "build_s": res.cache_seconds,
               "train_s": res.step_seconds, "peak_mb": res.peak_memory_mb, "losses": res.losses, "steps": res.steps,
               "cache_mb": res.cache_mb}  # fmt: skip
        clear_caches()
        if evaluate and self.evals:
            t0 = time.perf_counter()
            scores, _ = self.engine(model, rank, cache).predict(
                self.evals, self.builder.yes_id, self.builder.no_id
            )
            out.update(eval_s=time.perf_counter() - t0, accuracy=self.accuracy(scores), scores=scores)
            clear_caches()
        return out

    def stock(self, rank, evaluate=True) -> dict:
        return self.through_engine(rank, "off", evaluate, "stock pyreft r{rank}")

    def pyreft_trainer(self, rank) -> dict:
        """pyreft's own training loop: ReftTrainerForCausalLM over right-padded prompt+answer batches,
        loss from the full logits (as pyreft's examples and the reference blog train)."""
        from transformers import DataCollatorForSeq2Seq, TrainingArguments

        from reftlab import hf_compat, methods, tracking
        from reftlab.engine import score

        pyreft = hf_compat.pyreft()

        Trainer = hf_compat.reft_trainer_class()  # noqa: N806 (a class)
        model = self.fresh(rank)
        n = int(self.args.positions.lstrip("l"))
        rows = [{"input_ids": p + a, "labels": [-100] * len(p) + a,
                 "intervention_locations": [[len(p) - n + k for k in range(n)]]} for p, a in self.train]  # fmt: skip
        import datasets

        tok = self.tok
        old_side, tok.padding_side = tok.padding_side, "right"  # pyreft's positions count from the left
        collator = pyreft.ReftDataCollator(DataCollatorForSeq2Seq(tok, model=None, label_pad_token_id=-100,
                                                                  padding="longest"))  # fmt: skip
        tmp = tempfile.TemporaryDirectory(prefix="reftlab-bench-trainer-")
        targs = TrainingArguments(
            output_dir=tmp.name, per_device_train_batch_size=self.args.batch_size,
            gradient_accumulation_steps=self.args.grad_accum, num_train_epochs=self.args.epochs,
            learning_rate=self.args.lr, weight_decay=0.0, lr_scheduler_type="linear", warmup_steps=0,
            logging_steps=1, report_to=[], save_strategy="no", remove_unused_columns=False, seed=0,
            use_cpu=not self.device.startswith("cuda"), dataloader_num_workers=0,
        )  # fmt: skip
        trainer = Trainer(model=model, args=targs, train_dataset=datasets.Dataset.from_list(rows),
                          data_collator=collator, processing_class=tok)  # fmt: skip
        with tracking.PeakMemory(self.device) as mem:
            self.sync()
            t0 = time.perf_counter()
            trainer.train()
            self.sync()
            seconds = time.perf_counter() - t0
        tok.padding_side = old_side
        tmp.cleanup()
        losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
        out = {"path": f"pyreft ReftTrainer r{rank}", "build_s": 0.0, "train_s": seconds, "peak_mb": mem.peak_mb,
               "losses": losses, "steps": trainer.state.global_step}  # fmt: skip
        if self.evals:
            model.model.eval()
            t0 = time.perf_counter()
            scores = score(model, methods.get("loreft"), self.settings(rank), self.evals, self.builder.yes_id,
                           self.builder.no_id, tok.pad_token_id, self.device, self.trainer.eval_batch_size)  # fmt: skip
            out.update(eval_s=time.perf_counter() - t0, accuracy=self.accuracy(scores), scores=scores)
        return out

    def cached(self, rank, evaluate=True) -> dict:
        return self.through_engine(rank, "auto", evaluate, "cached r{rank} ({source})")


def fmt_row(r, n_examples, epochs):
    import numpy as np

    total = r["build_s"] + r["train_s"]
    final = float(np.mean(r["losses"][-10:])) if r.get("losses") else float("nan")
    return (
        f"{r['path']:<28} {r['build_s']:>8.1f} {r['train_s']:>9.1f} {total:>9.1f} "
        f"{n_examples * epochs / total if 'losses' in r else n_examples / total:>8.1f} "
        f"{r.get('peak_mb', float('nan')):>9.0f} {final:>8.4f} {100 * r.get('accuracy', float('nan')):>6.1f} "
        f"{r.get('eval_s', float('nan')):>7.1f}"
    )


def main(argv=None):
    import numpy as np
    import torch

    from reftlab import tracking
    from reftlab.engine import store as cache_store

    args = parse_args(argv)
    b = Bench(args)
    tmp = tempfile.TemporaryDirectory(prefix="reftlab-bench-cache-")
    b.store = cache_store.DiskStore(Path(tmp.name), 64 * 2**30)
    ranks = [int(r) for r in args.sweep_ranks.split(",")]
    plens = [len(p) + len(a) for p, a in b.train]
    print(
        f"model {b.model_name} | {b.device} {str(b.dtype).replace('torch.', '')} | data {args.data}: "
        f"{len(b.train)} train (tokens mean {np.mean(plens):.0f}, max {max(plens)}), {len(b.evals)} eval | "
        f"layer {args.layer} rank {args.rank} {args.positions} | {args.epochs} epochs, batch {args.batch_size} "
        f"x accum {args.grad_accum}, lr {args.lr} | torch threads {torch.get_num_threads()}",
        flush=True,
    )
    b.warm_up()
    rows = {}
    floors = [b.floor(), b.floor()]  # the faster of two passes: the first also warms kernels up
    rows["floor"] = min(floors, key=lambda r: r["train_s"])
    print("floor: " + ", ".join(f"{r['train_s']:.1f} s" for r in floors), flush=True)
    rows["cached"] = b.cached(args.rank)
    print(
        f"cached: build {rows['cached']['build_s']:.1f} s, train {rows['cached']['train_s']:.1f} s",
        flush=True,
    )
    sweep_cached = []
    b.store = cache_store.DiskStore(Path(tmp.name) / "sweep", 64 * 2**30)  # the sweep's first job builds
    for rank in ranks:
        r = b.cached(rank, evaluate=False)
        sweep_cached.append(r)
        print(f"cached sweep r{rank}: {r['path']} {r['build_s']:.1f} + {r['train_s']:.1f} s", flush=True)
    sweeps = {}
    for key, runner, skip in (
        ("uncached", b.stock, args.skip_uncached),
        ("pyreft", b.pyreft_trainer, args.skip_pyreft),
    ):
        if skip:
            continue
        rows[key] = runner(args.rank)
        print(f"{rows[key]['path']}: train {rows[key]['train_s']:.1f} s", flush=True)
        if args.measure_stock_sweep:
            sweeps[key] = [rows[key]["train_s"]] + [runner(r)["train_s"] for r in ranks if r != args.rank]
        else:
            sweeps[key] = [rows[key]["train_s"]] * len(ranks)  # the rank does not change a stock run's work

    header = (
        f"{'path':<28} {'build_s':>8} {'train_s':>9} {'total_s':>9} {'ex/s':>8} {'peak_MB':>9} "
        f"{'loss':>8} {'acc%':>6} {'eval_s':>7}"
    )
    print("\n" + header + "\n" + "-" * len(header))
    for key in ("pyreft", "uncached", "cached", "floor"):
        if key in rows:
            print(fmt_row(rows[key], len(b.train), args.epochs))
    cached_single = rows["cached"]["build_s"] + rows["cached"]["train_s"]
    cached_sweep = sum(r["build_s"] + r["train_s"] for r in sweep_cached)
    steps = rows["cached"]["steps"]
    print(f"\ncached: {1000 * rows['cached']['train_s'] / steps:.0f} ms/step over {steps} steps, cache "
          f"{rows['cached']['cache_mb']:.0f} MB; sweep of {len(ranks)} (ranks {args.sweep_ranks}): "
          f"{cached_sweep:.1f} s ({', '.join(r['path'] for r in sweep_cached)})")  # fmt: skip
    result = {
        "model": b.model_name, "device": b.device, "dtype": str(b.dtype), "args": vars(args),
        "floor_s": rows["floor"]["train_s"], "cached_build_s": rows["cached"]["build_s"],
        "cached_train_s": rows["cached"]["train_s"], "cached_sweep_s": cached_sweep,
        "cached_accuracy": rows["cached"].get("accuracy"), "versions": tracking.package_versions(),
    }  # fmt: skip
    if b.device.startswith("cuda"):
        result["gpu"] = torch.cuda.get_device_name()
    ratios = {}
    for key, row in ((k, rows[k]) for k in ("uncached", "pyreft") if k in rows):
        r1, r2 = row["train_s"] / cached_single, sum(sweeps[key]) / cached_sweep
        agree = (
            float(np.mean((row["scores"] > 0) == (rows["cached"]["scores"] > 0)))
            if args.eval
            else float("nan")
        )
        how = "measured" if args.measure_stock_sweep else f"{len(ranks)} x the measured run"
        line = (f"{row['path']}: {1000 * row['train_s'] / row['steps']:.0f} ms/step; its sweep {sum(sweeps[key]):.1f} s "
                f"({how}); accuracy {100 * row.get('accuracy', float('nan')):.1f}% vs cached "
                f"{100 * rows['cached'].get('accuracy', float('nan')):.1f}%, prediction agreement {100 * agree:.1f}%")  # fmt: skip
        if key == "uncached":
            l_s, l_c = np.array(row["losses"]), np.array(rows["cached"]["losses"])
            rel = np.abs(l_s - l_c) / np.abs(l_s)
            line += f"; per-step loss vs cached (same batches): rel diff median {np.median(rel):.1e}, max {rel.max():.1e}"
        print(line)
        ratios[key] = (r1, r2)
        result[key] = {"train_s": row["train_s"], "sweep_s": sum(sweeps[key]), "accuracy": row.get("accuracy"),
                       "agreement": agree, "single": r1, "sweep4": r2}  # fmt: skip
    r3 = cached_single / rows["floor"]["train_s"]
    result["vs_floor"] = r3
    if "uncached" in ratios:
        print(f"speedup_vs_uncached single={ratios['uncached'][0]:.1f} sweep4={ratios['uncached'][1]:.1f}")
    r1, r2 = ratios.get("pyreft", (float("nan"), float("nan")))
    if "pyreft" in rows:  # the step alone, without the cache pass: pyreft's ms/step over the cached path's
        per_step = (rows["pyreft"]["train_s"] / rows["pyreft"]["steps"]) / (rows["cached"]["train_s"] / steps)
        result["step_vs_pyreft"] = per_step
        print(f"step_vs_pyreft={per_step:.2f} (pyreft's ms/step / the cached path's)")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2, default=str))
    tmp.cleanup()
    print(f"speedup_vs_pyreft single={r1:.1f} sweep4={r2:.1f} vs_floor={r3:.2f}")


if __name__ == "__main__":
    main()
