"""One training engine: the execution strategies behind one interface, one typed result.

- ``stock``: the whole sequence through the model at every step (pyreft's IntervenableModel for
  ReFT, the peft model for LoRA): `training.train` / `training.predict`;
- ``cached``: the frozen prefix run once and stored, each step runs only the intervened suffix
  (`cached`, `prefix_cache`), used where it is exact.

`run.py` and `benchmarks/train_speed.py` both train through `Engine`; the choice of strategy and
its reason are part of the result, and so are the timings (cache pass apart from the steps).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field

from . import cached, prefix_cache, training
from .spec import InterventionSpec
from .tracking import PeakMemory

log = logging.getLogger(__name__)
STRATEGIES = ("stock", "cached")


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
        return "cached" if strategy == "cached" else self.stock_name

    def plan(self, examples) -> tuple[str, str | None]:
        """('cached', None) where the stored cache is exact and fits, else ('stock', why)."""
        if "cached" not in self.paths:
            return (
                "stock",
                f"method {self.spec.method} trains the model's weights: nothing below it can be cached",
            )
        if self.trainer_cfg.cache == "off":
            return "stock", "trainer.cache=off"
        seqs, suffix = cached.train_inputs(examples, self.spec.last)
        reason = cached.plan(self.spec, self.trained, seqs, suffix, cached.max_bytes(self.trainer_cfg))
        return ("stock", reason) if reason else ("cached", None)

    def train(self, examples, seed: int) -> TrainResult:
        strategy, reason = self.plan(examples)
        if reason and strategy == "stock" and "cached" in self.paths:
            log.warning("Training with the stock pyreft path: %s", reason)
        elif strategy == "cached":
            log.info("Training with the cached-prefix path (exact for these settings)")
        with PeakMemory(self.device) as memory:
            if strategy == "cached":
                res, info = cached.train(self.trained, self.spec, examples, self.trainer_cfg, self.pad_id, self.device,
                                         seed, {**self.describe}, self.progress, self.store)  # fmt: skip
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
        exact = "cached" in self.paths and self.trainer_cfg.cache != "off"
        if exact and cached.plan_eval(self.spec, self.trained, prompts, self.trainer_cfg) is None:
            scores, _ = cached.evaluate(self.trained, self.spec, prompts, yes_id, no_id, self.pad_id, self.trainer_cfg,
                                        {**self.describe}, self.progress, self.store)  # fmt: skip
            return scores, "cached"
        scores = training.predict(self.trained, self.spec, prompts, yes_id, no_id, self.pad_id, self.device,
                                  self.trainer_cfg.eval_batch_size, self.progress)  # fmt: skip
        return scores, "stock"


def clear_caches() -> None:
    """Forget this process's in-memory prefix caches (a new job of a parallel sweep would)."""
    prefix_cache.clear_memory()
