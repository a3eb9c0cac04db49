"""The one decision of the engine: which strategy computes a job exactly, whether it fits, and why.

`plan` looks at the intervention (parsed once), the frozen model, the sequences and the trainer
settings, and returns a `Plan`: the strategy (one of `STRATEGIES`, the names runs record), the
reason (None: the stored prefix cache, exact here and it fits), the residual-stream point the steps
start from, where a stored cache is built (lower lets the other layers of a sweep share it) and
how many bytes it takes.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch

from ..models import head_dim

log = logging.getLogger(__name__)

# The execution strategies, by the names runs record (tags train_path / eval_path):
# stock: the whole sequence through the model (pyreft or peft); cached: the frozen prefix stored
# once, each step runs the intervened suffix; streamed: exact like cached, each step runs its own
# prefixes without grad first; residual: first-token positions, the stream entering the lowest
# intervened layer stored, each step runs the layers from there up.
STRATEGIES = ("stock", "cached", "streamed", "residual")
PREFIX_PATHS = STRATEGIES[1:]  # what a method that only adds interventions to the frozen model allows
# Decoder layers whose forward is (hidden, attention_mask, position_ids, cache, position_embeddings).
SUPPORTED = ("LlamaDecoderLayer", "MistralDecoderLayer")
POINT_OFFSET = {"block_input": 0, "block_output": 1}  # residual-stream point = layer + offset


@dataclass(frozen=True)
class Plan:
    strategy: str  # one of STRATEGIES
    reason: str | None = None  # why this strategy (None: the stored cache, exact and it fits)
    point: int | None = None  # the residual-stream point the steps start from (not on the stock path)
    build_at: int | None = None  # where a stored cache is built (<= point)
    bytes: int = 0  # what the stored cache takes (estimated from the lengths)


def start_point(spec) -> int:
    """The residual-stream point of the lowest intervention."""
    return min(layer + POINT_OFFSET[spec.component] for layer in spec.layers)


def unsupported(spec, model=None) -> str | None:
    """The one exactness check: None where the intervention leaves everything below its lowest point
    unchanged and the layers above can be run on their own (this model's, when given), else why not."""
    from ..reft import PYREFT_CLASSES

    if spec.method not in PYREFT_CLASSES:
        return f"method {spec.method} is not a ReFT intervention"
    if spec.component not in POINT_OFFSET:
        return f"component={spec.component}: the cached paths support {', '.join(POINT_OFFSET)}"
    if model is not None:
        kind = type(model.model.layers[0]).__name__
        if kind not in SUPPORTED:
            return f"{kind} layers: the cached paths support {', '.join(SUPPORTED)}"
    return None


def first_token(spec) -> str:
    return f"positions={spec.positions}: a first-token intervention changes every later token"


def max_bytes(trainer_cfg) -> int:
    return int(float(trainer_cfg.cache_max_gb) * 2**30)


def prefix_bytes(model, start: int, seqs, suffix_lens) -> int:
    """Size of the prefix cache from point `start`: keys/values of the prefixes at the layers from
    `start` up, and the suffixes' residual stream (each with a zero pad row)."""
    cfg = model.config
    itemsize = torch.finfo(model.dtype).bits // 8
    prefix = sum(len(s) - n for s, n in zip(seqs, suffix_lens, strict=True))
    kv = 2 * (cfg.num_hidden_layers - start) * (prefix + 1) * cfg.num_key_value_heads * head_dim(cfg)
    return (kv + (sum(suffix_lens) + 1) * cfg.hidden_size) * itemsize


def residual_bytes(model, seqs) -> int:
    """Size of the residual stream of every token (and a zero pad row)."""
    itemsize = torch.finfo(model.dtype).bits // 8
    return (1 + sum(len(s) for s in seqs)) * model.config.hidden_size * itemsize


def train_inputs(examples, n_pos: int) -> tuple[list[list[int]], list[int]]:
    """What a training pass stores: prompt + answer but its last token, and the suffix lengths
    (the last n_pos prompt tokens and the answer tokens but the last)."""
    return [p + a[:-1] for p, a in examples], [n_pos + len(a) - 1 for _, a in examples]


def shared_point(spec, model, seqs, suffix_lens, bound: int, lowest: int | None) -> int:
    """Where to build a stored cache: `lowest` (trainer.cache_from) if it is below the job's point
    and the cache from there fits `bound`; else the job's own point."""
    start = start_point(spec)
    if lowest is None or lowest >= start:
        return start
    lowest = max(0, int(lowest))
    need = prefix_bytes(model, lowest, seqs, suffix_lens)
    if need > bound:
        log.warning(
            "A prefix cache from point %d (shared by the sweep's layers) needs %.2f GB, more than "
            "trainer.cache_max_gb: building from this job's point %d", lowest, need / 2**30, start)  # fmt: skip
        return start
    return lowest


def choose(spec, model, seqs, suffix_lens, trainer_cfg, paths=STRATEGIES) -> Plan:
    """The strategy for running `seqs` (whose last `suffix_lens` tokens the steps recompute) on the
    frozen `model` with the intervention `spec`, for a method that allows `paths`.

    Stock where nothing below the intervention can be kept (a method that changes the weights,
    trainer.cache=off, or settings where a cache is not exact); first-token positions take the
    residual path where its cache fits trainer.cache_max_gb; otherwise the stored prefix cache
    where it fits, else streamed prefixes: size alone never sends a run to the stock path."""
    if "cached" not in paths:
        return Plan(
            "stock", f"method {spec.method} trains the model's weights: nothing below it can be cached"
        )
    mode = trainer_cfg.cache
    if mode == "off":
        return Plan("stock", "trainer.cache=off")
    reason = unsupported(spec, model)
    if reason:
        return Plan("stock", reason)
    point, bound = start_point(spec), max_bytes(trainer_cfg)
    if spec.first:
        need = residual_bytes(model, seqs)
        if need > bound:
            return Plan("stock", f"{first_token(spec)}; its residual cache needs {need / 2**30:.2f} GB, "
                                 "over trainer.cache_max_gb")  # fmt: skip
        return Plan("residual", f"{first_token(spec)}: the layers from the lowest intervention up run at each step",
                    point, point, need)  # fmt: skip
    if min(len(s) - n for s, n in zip(seqs, suffix_lens, strict=True)) < 1:
        return Plan(
            "stock", f"a prompt is not longer than positions={spec.positions}: nothing to cache before it"
        )
    if mode == "streamed":
        return Plan("streamed", "trainer.cache=streamed", point, point)
    need = prefix_bytes(model, point, seqs, suffix_lens)
    if need > bound:
        return Plan("streamed", f"the prefix cache needs {need / 2**30:.2f} GB, more than trainer.cache_max_gb="
                                f"{bound / 2**30:.2f} (raise it, or lower trainer.max_length / data.max_train)",
                    point, point)  # fmt: skip
    build_at = shared_point(spec, model, seqs, suffix_lens, bound, trainer_cfg.get("cache_from"))
    return Plan("cached", None, point, build_at, need)
