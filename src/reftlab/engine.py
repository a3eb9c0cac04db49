"""One training engine: the execution strategies behind one interface, one typed result.

- ``stock``: the whole sequence through the model at every step (pyreft's IntervenableModel for
  ReFT, the peft model for LoRA): `training.train` / `training.predict`;
- ``stored`` (recorded as ``cached``): the frozen prefix run once and stored, each step runs only
  the intervened suffix (`cached`, `prefix_cache`), used where it is exact and fits
  `trainer.cache_max_gb`; a cache from a lower layer serves a higher one (one pass per sweep);
- ``streamed``: exact like the stored cache, but each step runs its own examples' prefixes without
  grad first: memory of one step, used where the stored cache does not fit (never the stock path
  for size alone) or with `trainer.cache=streamed`.

- ``residual``: first-token positions (`f<n>`), where no keys/values above the intervention can be
  stored: the residual stream entering the lowest intervened layer is stored for every token and
  each step runs the whole sequence from there up (`residual`).

A method that allows the prefix paths lists ``cached`` in its `paths`.

`run.py` and `benchmarks/train_speed.py` both train through `Engine`; the choice of strategy and
its reason are part of the result, and so are the timings (cache pass apart from the steps).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field

from . import cached, prefix_cache, residual, training
from .spec import InterventionSpec
from .tracking import PeakMemory

log = logging.getLogger(__name__)
STRATEGIES = ("stock", "stored", "streamed", "residual")  # what Engine.plan chooses from


@dataclass
class TrainResult:
    losses: list[float]
    steps: int
    step_seconds: float  # the optimisation steps
    cache_seconds: float = 0.0  # building or loading the prefix cache (0 on the stock path)
    peak_memory_mb: float = math.nan
    path: str = "stock"  # the strategy that ran; its name in runs: see `path_name`
    reason: str | None = None  # why that strategy (None: the cached path, exact here)
    cache_source: str | None = None  # built, disk or memory
    cache_mb: float | None = None
    cache_point: int | None = None  # the residual-stream point the cache was built from (<= the job's)
    extra: dict = field(default_factory=dict)

    @property
    def train_seconds(self) -> float:
        """Training wall-clock: the cache pass plus the steps (evaluation excluded)."""
        return self.cache_seconds + self.step_seconds


class Engine:
    """Trains and evaluates `trained` (a pyreft ReftModel or a peft model) for a method that can use
    the strategies `paths` (`stock` always; `cached` where the method allows it)."""

    def __init__(self, trained, spec, trainer_cfg, pad_id: int, device, describe: dict | None = None,
                 paths=("stock",), stock_name: str = "pyreft", store="config", progress: bool = True):  # fmt: skip
        self.trained, self.trainer_cfg, self.pad_id, self.device = trained, trainer_cfg, pad_id, device
        self.spec = InterventionSpec.of(spec)
        self.describe = describe or {}
        self.paths, self.stock_name = tuple(paths), stock_name
        self.store = cached.store_for(trainer_cfg) if store == "config" else store
        self.progress = progress

    def path_name(self, strategy: str) -> str:
        """The name runs record (tags train_path / eval_path): cached, streamed, or the stock path's."""
        return {"stored": "cached", "streamed": "streamed", "residual": "residual"}.get(
            strategy, self.stock_name
        )

    def plan(self, examples) -> tuple[str, str | None]:
        """The strategy for training on `examples` and why (None: the stored cache, exact and fits)."""
        if "cached" not in self.paths:
            return (
                "stock",
                f"method {self.spec.method} trains the model's weights: nothing below it can be cached",
            )
        seqs, suffix = cached.train_inputs(examples, self.spec.last)
        return choose(self.spec, self.trained, seqs, suffix, self.trainer_cfg)

    def train(self, examples, seed: int) -> TrainResult:
        strategy, reason = self.plan(examples)
        if strategy == "stock" and "cached" in self.paths:
            log.warning("Training with the stock pyreft path: %s", reason)
        elif strategy == "residual":
            log.info("Training with the stored residual stream: %s", reason)
        elif strategy == "streamed":
            log.info("Training with streamed prefixes (exact; no stored cache): %s", reason)
        elif strategy == "stored":
            log.info("Training with the cached-prefix path (exact for these settings)")
        with PeakMemory(self.device) as memory:
            if strategy == "stored":
                res, info = cached.train(self.trained, self.spec, examples, self.trainer_cfg, self.pad_id, self.device,
                                         seed, {**self.describe}, self.progress, self.store)  # fmt: skip
            elif strategy == "residual":
                res, info = residual.train(self.trained, self.spec, examples, self.trainer_cfg, self.pad_id,
                                           self.device, seed, self.progress)  # fmt: skip
            elif strategy == "streamed":
                res, info = cached.train_streamed(self.trained, self.spec, examples, self.trainer_cfg, self.pad_id,
                                                  self.device, seed, self.progress)  # fmt: skip
            else:
                res, info = training.train(self.trained, self.spec, examples, self.trainer_cfg, self.pad_id,
                                           self.device, seed, self.progress), None  # fmt: skip
        return TrainResult(
            losses=res["losses"], steps=res["steps"], step_seconds=res["train_seconds"],
            cache_seconds=info["seconds"] if info else 0.0, peak_memory_mb=memory.peak_mb,
            path=self.path_name(strategy), reason=reason, cache_source=info["source"] if info else None,
            cache_mb=info["mb"] if info else None, cache_point=info["from_point"] if info else None,
        )  # fmt: skip

    def predict(self, prompts, yes_id: int, no_id: int) -> tuple[object, str]:
        """Yes-minus-No scores for `prompts` and the strategy that computed them."""
        strategy = "stock"
        if "cached" in self.paths:
            n = self.spec.last
            strategy, reason = choose(self.spec, self.trained, prompts, [n] * len(prompts), self.trainer_cfg)
            if strategy == "streamed":
                log.info("Evaluating with streamed prefixes: %s", reason)
        if strategy == "stored":
            scores, _ = cached.evaluate(self.trained, self.spec, prompts, yes_id, no_id, self.pad_id, self.trainer_cfg,
                                        {**self.describe}, self.progress, self.store)  # fmt: skip
        elif strategy == "residual":
            scores = residual.evaluate(self.trained, self.spec, prompts, yes_id, no_id, self.pad_id,
                                       self.trainer_cfg.eval_batch_size, self.progress)  # fmt: skip
        elif strategy == "streamed":
            scores = cached.evaluate_streamed(self.trained, self.spec, prompts, yes_id, no_id, self.pad_id,
                                              self.trainer_cfg.eval_batch_size, self.progress)  # fmt: skip
        else:
            scores = training.predict(self.trained, self.spec, prompts, yes_id, no_id, self.pad_id, self.device,
                                      self.trainer_cfg.eval_batch_size, self.progress)  # fmt: skip
        return scores, self.path_name(strategy)


def choose(spec, trained, seqs, suffix_lens, trainer_cfg) -> tuple[str, str | None]:
    """The strategy for these inputs and why: the prefix paths (`cached.choose`: stored where it is
    exact and fits, else streamed), the residual path for first-token positions, else stock."""
    strategy, reason = cached.choose(spec, trained, seqs, suffix_lens, trainer_cfg)
    if strategy == "stock" and trainer_cfg.cache != "off":
        return residual.or_stock(spec, trained.model, seqs, trainer_cfg, reason)
    return strategy, reason


def clear_caches() -> None:
    """Forget this process's in-memory prefix caches (a new job of a parallel sweep would)."""
    prefix_cache.clear_memory()
