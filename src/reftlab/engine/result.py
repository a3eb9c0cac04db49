"""What training returns, whichever strategy ran it (solo, or a fused group's member)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field


@dataclass
class TrainResult:
    losses: list[float]
    steps: int
    step_seconds: float  # the optimisation steps
    cache_seconds: float = 0.0  # building or loading the stored cache (0 on the stock path)
    peak_memory_mb: float = math.nan
    path: str = "stock"  # the strategy that ran (one of STRATEGIES)
    reason: str | None = None  # why that strategy (None: the cached path, exact here)
    cache_source: str | None = None  # built, disk, memory or streamed
    cache_mb: float | None = None
    cache_point: int | None = None  # the residual-stream point the cache was built from (<= the job's)
    tags: dict = field(default_factory=dict)  # what else a run records (a fused group's id and size)
    metrics: dict = field(default_factory=dict)

    @property
    def train_seconds(self) -> float:
        """Training wall-clock: the cache pass plus the steps (evaluation excluded)."""
        return self.cache_seconds + self.step_seconds
