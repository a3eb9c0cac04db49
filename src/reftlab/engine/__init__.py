"""The training engine: one planner, four exact strategies behind one interface, one typed result.

- `plan.py`: the one decision (which strategy is exact here, whether its cache fits, and why);
- `strategies.py`: stock, cached, streamed, residual: each trains on examples and scores prompts
  over one shared `Context`;
- `loop.py`: batching, the one training loop and the one scoring loop;
- `prefix.py`: what a no-grad pass stores (prefix keys/values and suffix stream, or the residual
  stream); `store.py`: where it is kept (disk and memory, keys, eviction); `suffix.py`: the
  runners of the layers above the stored point, with the interventions.

`methods/` and `benchmarks/train_speed.py` train through `Engine`; the strategy that ran and why
are part of the result, and so are the timings (the cache pass apart from the steps).
"""

from __future__ import annotations

import logging

from ..spec import InterventionSpec
from ..tracking import PeakMemory
from .plan import STRATEGIES, Plan, choose, train_inputs
from .result import TrainResult
from .store import clear_memory, store_for
from .strategies import BY_NAME, Context, Stock

log = logging.getLogger(__name__)
__all__ = ["STRATEGIES", "Engine", "Plan", "StockScorer", "TrainResult", "clear_caches", "score"]


class Engine:
    """Trains and scores `trained` (what `method` built on the frozen model) with the strategy the
    planner chooses among those the method allows (`method.paths`)."""

    def __init__(self, trained, method, spec, trainer_cfg, pad_id: int, device="cpu", store="config",
                 progress: bool = True, given=None, answers=()):  # fmt: skip
        model = method.frozen(trained)
        spec = InterventionSpec.of(spec, model.config.num_hidden_layers)
        disk = store_for(trainer_cfg) if store == "config" else store
        self.ctx = Context(trained, method, spec, trainer_cfg, pad_id, device, disk, progress,
                           tuple(tuple(a) for a in answers))  # fmt: skip
        self.eval_info: dict | None = None  # where the last scoring's cache came from
        self.eval_path = "stock"  # the strategy the last scoring ran on
        self.given = given  # a fused.Result: this job was trained (and scored) in a fused group

    def plan(self, seqs, suffix_lens) -> Plan:
        ctx = self.ctx
        return choose(ctx.spec, ctx.model, seqs, suffix_lens, ctx.trainer, ctx.method.paths)

    def plan_training(self, examples) -> Plan:
        return self.plan(*train_inputs(examples, self.ctx.spec.last))

    def train(self, examples, seed: int) -> TrainResult:
        if self.given is not None:  # trained in its fused group: take its weights and record
            return self.given.adopt(self.ctx)
        chosen = self.plan_training(examples)
        if chosen.strategy == "stock" and "cached" in self.ctx.method.paths:
            log.warning("Training with the stock path: %s", chosen.reason)
        elif chosen.strategy != "stock":
            log.info(
                "Training with the %s path: %s", chosen.strategy, chosen.reason or "exact for these settings"
            )
        with PeakMemory(self.ctx.device) as memory:
            res, info = BY_NAME[chosen.strategy](self.ctx, chosen).train(examples, seed)
        info = info or {}
        return TrainResult(
            losses=res["losses"], steps=res["steps"], step_seconds=res["train_seconds"],
            cache_seconds=info.get("seconds", 0.0), peak_memory_mb=memory.peak_mb, path=chosen.strategy,
            reason=chosen.reason, cache_source=info.get("source"), cache_mb=info.get("mb"),
            cache_point=info.get("from_point"),
            metrics=({} if info.get("built") is None else {"cache_built_examples": info["built"]})
            | ({"epoch_eval_seconds": res["epoch_eval_seconds"]} if res.get("epoch_eval_seconds") else {}),
        )  # fmt: skip

    # The scorer a task scores through (`tasks.Task.score`); `eval_path` says which strategy ran.
    def yes_no(self, prompts, yes_id: int, no_id: int, batch_size: int | None = None):
        scores, self.eval_path = self.predict(prompts, yes_id, no_id)
        return scores

    def loglik(self, prompts, continuations, batch_size: int | None = None):
        """Per prompt, the log-likelihood of each of its continuations (token id lists): on the
        planned strategy where it has its own (cached, streamed: each prompt run once for all its
        continuations), else on the stock path; a fused group's answer where it scored them."""
        found = self.from_group("loglik", prompts, continuations)
        if found is not None:
            return found
        batch_size = batch_size or self.ctx.trainer.eval_batch_size
        chosen = self.plan(prompts, [self.ctx.spec.last] * len(prompts))
        strategy = BY_NAME[chosen.strategy](self.ctx, chosen)
        found, info = strategy.loglik(prompts, continuations, batch_size)
        self.eval_path = chosen.strategy if strategy.own_loglik else "stock"
        self.eval_info = info or self.eval_info
        return found

    def generate(self, prompts, decoding, batch_size: int | None = None, on_tokens=None):
        """The tokens the trained model generates after each prompt, the intervention on the prompt
        only (`generate.generate`); a fused member generates with its own adopted weights."""
        from .generate import generate

        return generate(
            self.ctx, prompts, decoding, batch_size or self.ctx.trainer.eval_batch_size, on_tokens
        )

    def from_group(self, kind: str, prompts, *request):
        """This job's answer to a scoring request from its fused group's pass over the same request
        (`fused.GroupScorer`), or None."""
        if self.given is None:
            return None
        from .fused import request_key  # fused imports this module's TrainResult

        found = self.given.answer(kind, request_key(kind, prompts, *request), prompts)
        if found is not None:
            self.eval_info, self.eval_path = self.given.eval_info, "cached"
        return found

    def predict(self, prompts, yes_id: int, no_id: int) -> tuple[object, str]:
        """Yes-minus-No scores for `prompts` and the strategy that computed them."""
        found = self.from_group("yes_no", prompts, yes_id, no_id)
        if found is not None:
            return found, "cached"
        chosen = self.plan(prompts, [self.ctx.spec.last] * len(prompts))
        if chosen.strategy == "streamed":
            log.info("Evaluating with streamed prefixes: %s", chosen.reason)
        strategy = BY_NAME[chosen.strategy](self.ctx, chosen)
        scores, self.eval_info = strategy.score(prompts, yes_id, no_id, self.ctx.trainer.eval_batch_size)
        return scores, chosen.strategy


class StockScorer:
    """A task's scorer on the stock path (a saved model being served, zero-shot): the whole
    sequence through the model."""

    def __init__(self, trained, method, spec, pad_id: int, device="cpu", progress: bool = True):
        model = method.frozen(trained)
        spec = InterventionSpec.of(spec, model.config.num_hidden_layers)
        self.stock = Stock(Context(trained, method, spec, None, pad_id, device, progress=progress))
        self.eval_path = "stock"

    def yes_no(self, prompts, yes_id: int, no_id: int, batch_size: int = 16):
        return self.stock.score(prompts, yes_id, no_id, batch_size)[0]

    def loglik(self, prompts, continuations, batch_size: int = 16):
        return self.stock.loglik(prompts, continuations, batch_size)[0]

    def generate(self, prompts, decoding, batch_size: int = 16, on_tokens=None):
        from .generate import generate

        return generate(self.stock.ctx, prompts, decoding, batch_size, on_tokens)


def score(trained, method, spec, prompts, yes_id: int, no_id: int, pad_id: int, device="cpu", batch_size: int = 16,
          progress: bool = True):  # fmt: skip
    """Yes-minus-No scores of `prompts` on the stock path (a saved model being served, zero-shot)."""
    model = method.frozen(trained)
    spec = InterventionSpec.of(spec, model.config.num_hidden_layers)
    ctx = Context(trained, method, spec, None, pad_id, device, progress=progress)
    return Stock(ctx).score(prompts, yes_id, no_id, batch_size)[0]


def clear_caches() -> None:
    """Forget this process's in-memory prefix caches (a new job of a parallel sweep would)."""
    clear_memory()
