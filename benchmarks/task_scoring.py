"""Scoring k options against scoring Yes/No, and a choice task's training step against a Yes/No step.

    python benchmarks/task_scoring.py                       # bundled SmolLM2-135M, 64 ARC-Easy prompts
    python benchmarks/task_scoring.py --data opinion_spam --prompts 128
    python benchmarks/task_scoring.py --prompts 16 --steps 4 --skip-residual    # a quick look

Side by side in one process, on the same chat prompts, model and dtype:

scoring (each measurement from nothing: the prompt pass included, as a job scores its held-out rows),
on the cached path (a LoReFT intervention at --layer, trainer.cache=auto: the prompts' stored prefix
built once for all their continuations, then a few suffix tokens per continuation) and on the stock
path of the bundled model (zero-shot: each prompt once, its continuations from its keys/values):
- yes_no:   logit(Yes) - logit(No) at the last prompt token (`Engine.yes_no`, the yes_no task);
- answers2: the log-likelihood of the two whole answers Yes and No (`Engine.loglik`);
- keywordsK: ARC: the paper's "the correct answer is answerN" for each of the question's options;
            opinion spam: the four classes of Ott et al. (deceptive/truthful x positive/negative);
- optionsK: ARC only: each question's own option texts (per example, as the harness scores them).
Each is measured --repeat times, interleaved; the fastest counts. Times are this process's CPU
seconds, on one thread by default (--threads: other processes on a shared machine inflate
wall-clock, and the CPU time of several threads that wait on each other, not this), and wall-clock
beside them. Ratios (of CPU seconds): K options / yes_no and K options / answers2
(target: <= 1.3, the prompt pass shared).

training (ARC-Easy training prompts; the same prompts, so the same lengths): a step on the choice
task (target "the correct answer is answerN") against a Yes/No step (target "Yes" or "No"), on the
cached path (positions --positions), the residual path (positions f7+l7, the paper's commonsense
setting) and the stock path (--positions, trainer.cache=off: pyreft over whole sequences), the
cache pass apart (target: <= 1.2x).

Prints one table per part, the ratios, and the machine; --json writes them too.
"""

from __future__ import annotations

import argparse
import json
import platform
import re
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
ARC = ROOT.parent / "shared" / "data" / "reft_tasks" / "commonsense" / "arc_easy"
ARC_SYSTEM = "Answer the multiple-choice question."
OPTION = re.compile(r"Answer(\d): (.*?)(?= Answer\d: |\n\nAnswer format|$)", re.S)
CLASSES = ("deceptive positive", "deceptive negative", "truthful positive", "truthful negative")


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2_135m", help="a conf/model name")
    ap.add_argument("--dtype", default="auto", help="auto (bf16 where fast), bfloat16, float32")
    ap.add_argument("--data", default="arc_easy", help="arc_easy (LLM-Adapters json) or a conf/data name")
    ap.add_argument("--arc", default=str(ARC), help="folder of ARC-Easy's train.json and test.json")
    ap.add_argument("--prompts", type=int, default=64, help="prompts scored")
    ap.add_argument("--max-length", type=int, default=256)
    ap.add_argument("--layer", type=int, default=15)
    ap.add_argument("--rank", type=int, default=4)
    ap.add_argument("--positions", default="l1", help="the cached path's positions")
    ap.add_argument("--batch-size", type=int, default=8, help="training batch")
    ap.add_argument("--eval-batch-size", type=int, default=16)
    ap.add_argument("--steps", type=int, default=16, help="training steps timed per task")
    ap.add_argument("--repeat", type=int, default=2, help="measurements of each (the fastest counts)")
    ap.add_argument("--skip-training", action="store_true")
    ap.add_argument(
        "--train-paths",
        default="cached,residual,stock",
        help="training paths to time: cached (--positions), residual (f7+l7), stock (--positions, cache off)",
    )
    ap.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads (1: its CPU time is its work alone, however busy the machine)",
    )
    ap.add_argument("--json", default=None, help="also write the results here")
    return ap.parse_args(argv)


def compose(*overrides):
    from reftlab.config.compose import compose as reftlab_compose

    return reftlab_compose(list(overrides))


def arc_rows(folder: Path, split: str, n: int) -> list[dict]:
    """The first n questions of an LLM-Adapters ARC file: the instruction, the option texts, the answer."""
    rows = []
    for row in json.loads((folder / f"{split}.json").read_text())[:n]:
        options = [text.strip() for _, text in OPTION.findall(row["instruction"])]
        rows.append({"text": row["instruction"], "options": options, "answer": row["answer"]})
    return rows


class Bench:
    def __init__(self, args):
        import torch

        from reftlab import models

        self.args, self.torch = args, torch
        torch.set_num_threads(args.threads)
        cfg = compose(f"model={args.model}", f"model.dtype={args.dtype}")
        self.model, self.tok, self.device, self.dtype = models.load_model_and_tokenizer(cfg.model)
        self.n_layers = self.model.config.num_hidden_layers

    def builder(self, system: str, answers):
        from reftlab.tasks.chat import PromptBuilder

        return PromptBuilder(self.tok, system, self.args.max_length, answers=tuple(answers))

    def ids(self, text: str) -> list[int]:
        return self.tok(text, add_special_tokens=False)["input_ids"]

    def requests(self):
        """The prompts and, by name, the continuations each is scored with."""
        args = self.args
        if args.data == "arc_easy":
            rows = arc_rows(Path(args.arc), "test", args.prompts)
            keywords = [f"the correct answer is answer{k}" for k in range(1, 6)]
            builder = self.builder(ARC_SYSTEM, ("Yes", "No", *keywords))
            prompts = builder.prompts([r["text"] for r in rows])
            k = round(sum(len(r["options"]) for r in rows) / len(rows), 1)
            conts = {
                f"keywords{k}": [[builder.answer_ids[keywords[j]] for j in range(len(r["options"]))] for r in rows],
                f"options{k}": [[self.ids(" " + o) for o in r["options"]] for r in rows],
            }  # fmt: skip
        else:
            from reftlab.data import recipes

            dcfg = compose(f"data={args.data}", f"data.max_eval={args.prompts}").data
            dcfg.path = str(ROOT / dcfg.path)
            prepared = recipes.prepare(dcfg)
            builder = self.builder(dcfg.system_prompt, ("Yes", "No", *CLASSES))
            prompts = builder.prompts(list(prepared.eval["text"])[: args.prompts])
            conts = {"keywords4": [[builder.answer_ids[c] for c in CLASSES]] * len(prompts)}
        two = [[builder.answer_ids["Yes"], builder.answer_ids["No"]]] * len(prompts)
        return builder, prompts, {"answers2": two, **conts}

    def settings(self, positions: str) -> dict:
        return dict(method="loreft", layer=self.args.layer, component="block_output", rank=self.args.rank,
                    positions=positions, share_weights=False, dropout=0.0, num_layers=self.n_layers)  # fmt: skip

    def engine(self, positions: str, store=None, answers=()):
        from reftlab import methods, reft
        from reftlab.engine import Engine

        trainer = compose(f"trainer.batch_size={self.args.batch_size}", "trainer.lr=4e-3", "trainer.cache_max_gb=64",
                          f"trainer.eval_batch_size={self.args.eval_batch_size}",
                          f"trainer.max_length={self.args.max_length}").trainer  # fmt: skip
        self.torch.manual_seed(0)
        trained = reft.build(self.model, self.settings(positions))
        return Engine(trained, methods.get("loreft"), self.settings(positions), trainer, self.tok.pad_token_id,
                      self.device, store=store, progress=False, answers=answers)  # fmt: skip

    def stock(self):
        from reftlab import methods
        from reftlab.engine import StockScorer

        return StockScorer(self.model, methods.get("none"), {"method": "none"}, self.tok.pad_token_id, self.device,
                           progress=False)  # fmt: skip

    def sync(self):
        if str(self.device).startswith("cuda"):
            self.torch.cuda.synchronize()

    def timed(self, fn) -> tuple[float, float, object]:
        """This process's CPU seconds and the wall-clock seconds of `fn()`, and what it returned."""
        from reftlab.engine import clear_caches

        clear_caches()  # from nothing: the prompt pass is part of scoring
        self.sync()
        t0, c0 = time.perf_counter(), time.process_time()
        out = fn()
        self.sync()
        return time.process_time() - c0, time.perf_counter() - t0, out

    def scoring(self) -> list[dict]:
        builder, prompts, conts = self.requests()
        batch = self.args.eval_batch_size
        paths = {"cached": self.engine(self.args.positions), "stock": self.stock()}
        yes_id, no_id = builder.answer_ids["Yes"][0], builder.answer_ids["No"][0]
        kinds = {"yes_no": lambda s: s.yes_no(prompts, yes_id, no_id, batch)}
        kinds |= {name: (lambda s, c=c: s.loglik(prompts, c, batch)) for name, c in conts.items()}
        best: dict[tuple, tuple] = {}
        for _ in range(self.args.repeat):  # interleaved: a busy moment of a shared machine hits all alike
            for path, scorer in paths.items():
                for kind, fn in kinds.items():
                    cpu, wall, _ = self.timed(lambda fn=fn, scorer=scorer: fn(scorer))
                    if path == "cached":
                        assert scorer.eval_path == "cached", scorer.eval_path
                    if (path, kind) not in best or cpu < best[path, kind][0]:
                        best[path, kind] = (cpu, wall)
        tokens = sum(map(len, prompts))
        rows = []
        for (path, kind), (cpu, wall) in best.items():
            n = sum(map(len, conts[kind])) if kind in conts else 2 * len(prompts)
            rows.append({"path": path, "kind": kind, "prompts": len(prompts), "prompt_tokens": tokens,
                         "continuation_tokens": sum(len(c) for cs in conts.get(kind, ()) for c in cs),
                         "continuations": n, "cpu_s": cpu, "wall_s": wall,
                         "vs_yes_no": cpu / best[path, "yes_no"][0],
                         "vs_answers2": cpu / best[path, "answers2"][0]})  # fmt: skip
        return rows

    def training(self) -> list[dict]:
        """Step time of a choice task and of a Yes/No task on the same ARC-Easy training prompts."""
        rows = arc_rows(Path(self.args.arc), "train", self.args.steps * self.args.batch_size)
        keywords = {f"answer{k}": f"the correct answer is answer{k}" for k in range(1, 6)}
        builder = self.builder(ARC_SYSTEM, ("Yes", "No", *keywords.values()))
        prompts = builder.prompts([r["text"] for r in rows])
        tasks = {
            "yes_no": [(p, builder.answer_ids["Yes" if i % 2 else "No"]) for i, p in enumerate(prompts)],
            "choice": [(p, builder.answer_ids[keywords[r["answer"]]]) for p, r in zip(prompts, rows, strict=True)],
        }  # fmt: skip
        known = {"cached": (self.args.positions, "auto"), "residual": ("f7+l7", "auto"),
                 "stock": (self.args.positions, "off")}  # fmt: skip
        configs = [known[name] for name in self.args.train_paths.split(",") if name]
        with tempfile.TemporaryDirectory(prefix="reftlab-bench-tasks-") as folder:
            from reftlab.engine.store import DiskStore

            store = DiskStore(Path(folder), 64 * 2**30)  # the prompts' pass once for both tasks
            cpu: dict[tuple, float] = {}
            wall: dict[tuple, float] = {}
            paths: dict[str, str] = {}
            for config in configs:  # untimed: the stored prefix of the prompts with every answer
                self.train(config, store, builder, tasks["yes_no"], 0)
            for _ in range(self.args.repeat):
                for config in configs:
                    for task, examples in tasks.items():
                        for epochs in (1, 2):
                            c0 = time.process_time()
                            res = self.train(config, store, builder, examples, epochs)
                            key = (config, task, epochs)
                            cpu[key] = min(cpu.get(key, float("inf")), time.process_time() - c0)
                            wall[key] = min(wall.get(key, float("inf")), res.step_seconds / res.steps)
                            paths[config] = res.path
        out = []
        for config in configs:
            # one epoch's steps: two epochs less one (the cache pass, the same in both, cancels)
            step = {task: (cpu[config, task, 2] - cpu[config, task, 1]) / self.args.steps for task in tasks}
            for task, examples in tasks.items():
                out.append({"positions": config[0], "path": paths[config], "task": task, "steps": self.args.steps,
                            "cpu_step_s": step[task], "wall_step_s": wall[config, task, 2],
                            "vs_yes_no": step[task] / step["yes_no"],
                            "answer_tokens": sum(len(a) for _, a in examples) / len(examples),
                            "prompt_tokens": sum(len(p) for p, _ in examples) / len(examples)})  # fmt: skip
        return out

    def train(self, config: tuple, store, builder, examples, epochs: int):
        from reftlab.engine import clear_caches

        clear_caches()  # a job's own process: its cache from disk
        positions, cache = config
        engine = self.engine(positions, store, builder.tails)
        engine.ctx.trainer.epochs, engine.ctx.trainer.cache = epochs, cache
        return engine.train(examples, seed=0)


def machine() -> str:
    import subprocess

    import torch

    try:
        cpu = subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout
        name = re.search(r"Model name:\s*(.+)", cpu)[1].strip()
    except (OSError, TypeError):
        name = platform.processor() or "unknown CPU"
    return f"{name}, {torch.get_num_threads()} threads, torch {torch.__version__}, {platform.platform()}"


def main(argv=None):
    args = parse_args(argv)
    bench = Bench(args)
    print(f"machine: {machine()}; model {args.model} ({bench.dtype}); {time.strftime('%Y-%m-%d %H:%M')}")
    scoring = bench.scoring()
    print(f"\nscoring {scoring[0]['prompts']} {args.data} prompts ({scoring[0]['prompt_tokens']} tokens), "
          f"fastest of {args.repeat}, prompt pass included:")  # fmt: skip
    print(f"{'path':<8} {'scoring':<14} {'continuations':>13} {'cont. tokens':>12} {'CPU s':>8} {'wall s':>8} "
          f"{'vs yes_no':>10} {'vs answers2':>12}")  # fmt: skip
    for r in scoring:
        print(f"{r['path']:<8} {r['kind']:<14} {r['continuations']:>13} {r['continuation_tokens']:>12} "
              f"{r['cpu_s']:>8.2f} {r['wall_s']:>8.2f} {r['vs_yes_no']:>10.2f} {r['vs_answers2']:>12.2f}")  # fmt: skip
    training = [] if args.skip_training else bench.training()
    if training:
        print(f"\ntraining steps on {training[0]['steps'] * args.batch_size} ARC-Easy training prompts (batch "
              f"{args.batch_size}; CPU s per step: two epochs less one, the cache pass apart):")  # fmt: skip
        print(f"{'positions':<10} {'path':<9} {'task':<7} {'prompt tok':>10} {'answer tok':>10} {'CPU s/step':>10} "
              f"{'wall s/step':>11} {'vs yes_no':>10}")  # fmt: skip
        for r in training:
            print(f"{r['positions']:<10} {r['path']:<9} {r['task']:<7} {r['prompt_tokens']:>10.1f} "
                  f"{r['answer_tokens']:>10.1f} {r['cpu_step_s']:>10.3f} {r['wall_step_s']:>11.3f} "
                  f"{r['vs_yes_no']:>10.2f}")  # fmt: skip
    worst = {p: max(r["vs_answers2"] for r in scoring if r["path"] == p and r["kind"] not in ("yes_no", "answers2"))
             for p in ("cached", "stock")}  # fmt: skip
    vs_yes_no = {p: max(r["vs_yes_no"] for r in scoring if r["path"] == p and r["kind"] != "yes_no")
                 for p in ("cached", "stock")}  # fmt: skip
    line = (f"options_vs_answers2 cached={worst['cached']:.2f} stock={worst['stock']:.2f} "
            f"options_vs_yes_no cached={vs_yes_no['cached']:.2f} stock={vs_yes_no['stock']:.2f}")  # fmt: skip
    if training:
        line += " step_choice_vs_yes_no " + " ".join(
            f"{r['path']}({r['positions']})={r['vs_yes_no']:.2f}" for r in training if r["task"] == "choice"
        )
    print("\n" + line)
    if args.json:
        Path(args.json).write_text(json.dumps({"machine": machine(), "scoring": scoring, "training": training,
                                               "args": vars(args)}, indent=1))  # fmt: skip


if __name__ == "__main__":
    main()
