"""The suffix pass of cached-prefix ReFT: when it is exact, the training loss and predictions.

A step runs the suffix tokens (see `prefix_cache`) from the intervention point through the
model's own decoder layers. Each layer's attention reads the stored prefix keys/values through a
one-step cache object, and uses a grouped-query attention registered with transformers that does
not copy the keys per query head; the interventions are the ReftModel's pyreft modules, applied
where pyvene applies them.
"""

from __future__ import annotations

import time

import numpy as np
import torch

from . import hf_compat, reft
from .spec import InterventionSpec

ATTENTION = "reftlab_grouped"
# Decoder layers whose forward is (hidden, attention_mask, position_ids, cache, position_embeddings).
SUPPORTED = ("LlamaDecoderLayer", "MistralDecoderLayer")
POINT_OFFSET = {"block_input": 0, "block_output": 1}  # residual-stream point = layer + offset


def grouped_attention(module, query, key, value, attention_mask, scaling, dropout=0.0, **kwargs):
    """Attention for few queries over many keys.

    The query heads of a KV group are stacked, so keys/values are read once (no repeat_kv copy).
    `key`/`value` may be (stored prefix, new tokens) pairs, as `_StoredPrefix` hands them over:
    the prefix is then neither copied nor differentiated (it is a constant). Scores and softmax
    are fp32 and the weighted sum takes the probabilities in the model's dtype, as PyTorch's CPU
    flash attention (the stock path's sdpa) does.
    """
    keys, values = (key, value) if isinstance(key, tuple) else ((key,), (value,))
    b, heads, q_len, d = query.shape
    kv = keys[0].shape[1]
    q = query.reshape(b, kv, (heads // kv) * q_len, d).float()
    scores = torch.cat([torch.matmul(q, k.float().transpose(2, 3)) for k in keys], dim=-1) * scaling
    if attention_mask is not None:
        scores = scores.view(b, kv, heads // kv, q_len, -1) + attention_mask.unsqueeze(2)
    probs = torch.softmax(scores.view(b, kv, (heads // kv) * q_len, -1), dim=-1).to(values[0].dtype)
    out, first = 0, 0
    for v in values:  # sum over the key blocks of probabilities x values
        out = out + torch.matmul(probs[..., first : first + v.shape[2]], v)
        first += v.shape[2]
    return out.view(b, heads, q_len, d).transpose(1, 2).contiguous(), None


class _StoredPrefix:
    """Duck-typed KV cache for one layer: hands the stored prefix and the new keys/values to
    `grouped_attention` as pairs (no concatenated copy), and never grows."""

    def __init__(self, keys, values):
        self.keys, self.values = keys, values

    def update(self, key_states, value_states, layer_idx=None, *args, **kwargs):
        return (self.keys, key_states), (self.values, value_states)


def why_not(spec, model=None) -> str | None:
    """None where the cached path is exact for these settings (and this model, when given), else
    the reason the stock pyreft path is used."""
    spec = InterventionSpec.of(spec)
    if spec.method not in reft.PYREFT_CLASSES:
        return f"method {spec.method} is not a ReFT intervention"
    if spec.first:
        return f"positions={spec.positions}: a first-token intervention changes every later token"
    if spec.component not in POINT_OFFSET:
        return f"component={spec.component}: the cached path supports {', '.join(POINT_OFFSET)}"
    if model is not None:
        kind = type(model.model.layers[0]).__name__
        if kind not in SUPPORTED:
            return f"{kind} layers: the cached path supports {', '.join(SUPPORTED)}"
    return None


def start_point(spec: InterventionSpec) -> int:
    """The residual-stream point the suffix pass starts from: the first intervention's."""
    return min(layer + POINT_OFFSET[spec.component] for layer in spec.layers)


def suffix_states(body, cache, idx, stop: int, intervene=None) -> tuple[torch.Tensor, np.ndarray]:
    """Residual stream [B, S, H] at point `stop` of the suffixes of examples `idx` (right-padded),
    run from the cache's point through the decoder layers `body.layers` attending to the stored
    prefix, with `intervene(h, point)` applied at every point; and the suffix lengths."""
    intervene = intervene or (lambda h, point: h)
    cache_arg = hf_compat.cache_kwarg(body.layers[0].forward)
    device = cache.keys.device
    idx = np.asarray(idx)
    p, s = cache.prefix_len[idx], cache.suffix_len[idx]
    b, width, slen = len(idx), int(p.max()), int(s.max())
    cols, scols = np.arange(width), np.arange(slen)
    pad = cols[None, :] < (width - p)[:, None]  # left padding of the prefix
    gather = np.where(pad, 0, cache.prefix_offset[idx][:, None] + cols[None, :] - (width - p)[:, None])
    svalid = scols[None, :] < s[:, None]
    sgather = np.where(svalid, cache.suffix_offset[idx][:, None] + scols[None, :], 0)
    positions = p[:, None] + scols[None, :]  # true positions: the suffix follows its own prefix
    # keys a suffix token may attend to: its prefix (not the padding) and the suffix up to itself
    allowed = np.concatenate(
        [
            np.broadcast_to(~pad[:, None, :], (b, slen, width)),
            np.tril(np.ones((slen, slen), bool)) & svalid[:, None, :],
        ],
        axis=2,
    )
    # one host-to-device copy per step
    parts = (gather, sgather, positions, allowed)
    packed = torch.from_numpy(np.concatenate([a.reshape(-1).astype(np.int64) for a in parts])).to(device)
    g, sg, positions, allowed = torch.split(packed, [a.size for a in parts])
    n = stop - cache.start  # the stored layers this pass reads
    keys = cache.keys[:n].index_select(1, g).view(n, b, width, *cache.keys.shape[2:])
    values = cache.values[:n].index_select(1, g).view_as(keys)
    h = cache.hidden.index_select(0, sg).view(b, slen, -1)
    mask = torch.zeros((b, 1, slen, width + slen), dtype=torch.float32, device=device)
    mask.masked_fill_(allowed.view(b, 1, slen, width + slen) == 0, float("-inf"))
    positions = positions.view(b, slen)
    position_embeddings = hf_compat.rotary(body, h, positions)

    h = intervene(h, cache.start)
    for j in range(cache.start, stop):
        stored = _StoredPrefix(keys[j - cache.start].transpose(1, 2), values[j - cache.start].transpose(1, 2))
        out = body.layers[j](
            h,
            attention_mask=mask,
            position_ids=positions,
            position_embeddings=position_embeddings,
            **{cache_arg: stored},
        )
        h = intervene(hf_compat.layer_output(out), j + 1)
    return h, s


def step_means(logits, targets, groups, denominator):
    """(sum of each batch's mean answer cross-entropy x len(batch) / denominator, the batch means)
    for one pass over all batches of a step (`targets` -100 where no answer token is)."""
    targets = targets.to(logits.device)
    ce = torch.nn.functional.cross_entropy(  # on [rows, vocab]: a strided layout is slow on CPU
        logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), reduction="none"
    ).view(targets.shape)
    valid = (targets != -100).sum(1)
    per_batch, total, row = [], 0.0, 0
    for g in groups:
        rows = slice(row, row + len(g))
        row += len(g)
        mean = ce[rows].sum() / valid[rows].sum()
        per_batch.append(mean.detach())
        total = total + mean * len(g) / denominator
    return total, per_batch


class SuffixRunner:
    """Runs the suffix of a batch of cached examples through the frozen model with interventions."""

    def __init__(self, reft_model, spec):
        self.base = reft_model.model
        self.body = self.base.model
        spec = InterventionSpec.of(spec, self.base.config.num_hidden_layers)
        self.n_pos = spec.last
        offset = POINT_OFFSET[spec.component]
        self.at: dict[int, list] = {}
        for layer, iv in zip(spec.layers, reft.interventions(reft_model), strict=True):
            self.at.setdefault(layer + offset, []).append(iv)
        self.start = start_point(spec)

    def _intervene(self, h, point):
        for iv in self.at.get(point, ()):
            h = torch.cat([iv(h[:, : self.n_pos]), h[:, self.n_pos :]], dim=1)
        return h

    def hidden(self, cache, idx) -> tuple[torch.Tensor, np.ndarray]:
        """Final hidden states [B, S, H] of the suffixes of examples `idx` (right-padded), and their lengths."""
        h, s = suffix_states(self.body, cache, idx, len(self.body.layers), self._intervene)
        return self.body.norm(h), s

    def step_loss(self, cache, groups: list[list[int]], answers: list[list[int]], denominator: int):
        """One suffix pass over all batches of an optimizer step: (sum of each batch's mean answer
        cross-entropy x len(batch) / denominator, the batch means), as `training.train` wants."""
        idx = np.concatenate([np.asarray(g) for g in groups])
        h, _ = self.hidden(cache, idx)
        first = self.n_pos - 1  # the last prompt token predicts the first answer token
        logits = self.base.lm_head(h[:, first:].contiguous()).float()
        targets = torch.full(logits.shape[:2], -100, dtype=torch.long)
        for row, i in enumerate(idx):
            targets[row, : len(answers[i])] = torch.tensor(answers[i])
        return step_means(logits, targets, groups, denominator)

    @torch.no_grad()
    def last_logits(self, cache, idx) -> torch.Tensor:
        h, s = self.hidden(cache, idx)
        last = torch.from_numpy(s - 1).to(h.device)
        return self.base.lm_head(h[torch.arange(len(idx), device=h.device), last]).float()


@torch.no_grad()
def advance(model, cache, start: int, batch_size: int = 32):
    """The cache from point `start` (>= cache.start), derived from `cache` without a new pass over
    the data: the stored keys/values from `start` up are the same tensors, and the suffix residual
    stream is run on from cache.start to `start` through the frozen layers (no intervention below
    the lowest one, so it is what a pass from `start` would store). A few tokens per example."""
    from .prefix_cache import PrefixCache

    if start < cache.start:
        raise ValueError(f"a cache from point {cache.start} cannot serve point {start} below it")
    if start == cache.start:
        return cache
    body = model.model
    hidden = cache.hidden.clone()
    n = len(cache.prefix_len)
    order = sorted(range(n), key=lambda i: -int(cache.prefix_len[i]))  # similar widths: little padding
    with attention_implementation(model):
        for b in range(0, n, batch_size):
            idx = np.asarray(order[b : b + batch_size])
            h, s = suffix_states(body, cache, idx, start)
            valid = torch.from_numpy(np.arange(h.shape[1])[None, :] < s[:, None])
            rows = np.concatenate(
                [cache.suffix_offset[i] + np.arange(k) for i, k in zip(idx, s, strict=True)]
            )
            hidden[torch.from_numpy(rows).to(hidden.device)] = h[valid.to(h.device)]
    skip = start - cache.start
    return PrefixCache(start, cache.keys[skip:], cache.values[skip:], hidden, cache.prefix_offset,
                       cache.prefix_len, cache.suffix_offset, cache.suffix_len,
                       {**cache.meta, "from_point": cache.start})  # fmt: skip


def cache_from(trainer_cfg) -> int | None:
    """The point to build a prefix cache from when it is built (below the job's own lets the other
    layers of a sweep share it): trainer.cache_from, else the lowest layer of the running sweep."""
    import os

    from .tracking import CACHE_FROM_ENV

    value = trainer_cfg.get("cache_from")
    if value is None:
        value = os.environ.get(CACHE_FROM_ENV)
    return None if value in (None, "") else int(value)


def build_point(spec, reft_model, seqs, suffix_lens, max_bytes: int, lowest: int | None) -> int:
    """Where to build: `lowest` if given, below the job's point, and the cache from there fits
    `max_bytes`; else the job's own point."""
    from . import prefix_cache

    start = start_point(spec)
    if lowest is None or lowest >= start:
        return start
    lowest = max(0, lowest)
    need = prefix_cache.estimate_bytes(reft_model.model, lowest, seqs, suffix_lens)
    if need > max_bytes:
        import logging

        logging.getLogger(__name__).warning(
            "A prefix cache from point %d (shared by the sweep's layers) needs %.2f GB, more than "
            "trainer.cache_max_gb: building from this job's point %d", lowest, need / 2**30, start)  # fmt: skip
        return start
    return lowest


def attention_implementation(model):
    """Context: the frozen model's layers use our grouped attention inside, then the old one."""
    hf_compat.register_attention(ATTENTION, grouped_attention)
    return hf_compat.attention_implementation(model, ATTENTION)


def train_inputs(examples, n_pos: int) -> tuple[list[list[int]], list[int]]:
    """Sequences for the cache pass (prompt + answer but its last token) and their suffix lengths."""
    return [p + a[:-1] for p, a in examples], [n_pos + len(a) - 1 for _, a in examples]


def inexact(spec, model, seqs, suffix_lens) -> str | None:
    """Why neither the stored nor the streamed prefix path is exact for these inputs (None: they are)."""
    spec = InterventionSpec.of(spec, model.config.num_hidden_layers)
    reason = why_not(spec, model)
    if reason:
        return reason
    shortest = min(len(s) - n for s, n in zip(seqs, suffix_lens, strict=True))
    if shortest < 1:
        return f"a prompt is not longer than positions={spec.positions}: nothing to cache before it"
    return None


def plan(spec, reft_model, seqs, suffix_lens, max_bytes: int) -> str | None:
    """None if a stored cache is exact and fits `max_bytes` for these inputs, else why not."""
    from . import prefix_cache

    reason = inexact(spec, reft_model.model, seqs, suffix_lens)
    if reason:
        return reason
    start = start_point(InterventionSpec.of(spec, reft_model.model.config.num_hidden_layers))
    need = prefix_cache.estimate_bytes(reft_model.model, start, seqs, suffix_lens)
    if need > max_bytes:
        return (
            f"the prefix cache needs {need / 2**30:.2f} GB, more than trainer.cache_max_gb={max_bytes / 2**30:.2f} "
            "(raise it, or lower trainer.max_length / data.max_train)"
        )
    return None


def choose(spec, reft_model, seqs, suffix_lens, trainer_cfg) -> tuple[str, str | None]:
    """The strategy for these inputs and why: ``stored`` (one cache pass, kept; None: exact and it
    fits), ``streamed`` (each step runs its own prefixes without grad: exact, memory of one step;
    where the stored cache does not fit, or trainer.cache=streamed), or ``stock`` (not exact, or
    trainer.cache=off). Size alone never sends a run to the stock path."""
    mode = trainer_cfg.cache
    if mode == "off":
        return "stock", "trainer.cache=off"
    reason = inexact(spec, reft_model.model, seqs, suffix_lens)
    if reason:
        return "stock", reason  # first-token positions: engine.choose tries the residual path
    if mode == "streamed":
        return "streamed", "trainer.cache=streamed"
    too_big = plan(spec, reft_model, seqs, suffix_lens, max_bytes(trainer_cfg))
    return ("streamed", too_big) if too_big else ("stored", None)


def max_bytes(trainer_cfg) -> int:
    return int(float(trainer_cfg.cache_max_gb) * 2**30)


def prepare(reft_model, spec, seqs, suffix_lens, pad_id, store, trainer_cfg, describe, progress=True):
    """A SuffixRunner and the cache for these sequences; info says where the cache came from (and
    from which point it was derived, when a lower one served it)."""
    from . import prefix_cache

    runner = SuffixRunner(reft_model, spec)
    bound = max_bytes(trainer_cfg)
    at = build_point(spec, reft_model, seqs, suffix_lens, bound, cache_from(trainer_cfg))
    cache, source, seconds = prefix_cache.obtain(
        reft_model.model, runner.start, seqs, suffix_lens, pad_id, describe, store,
        trainer_cfg.eval_batch_size, progress, build_at=at, max_bytes=bound,
    )  # fmt: skip
    info = {"source": source, "mb": cache.nbytes / 2**20, "from_point": cache.start}
    if cache.start != runner.start:
        t0 = time.perf_counter()
        cache = advance(reft_model.model, cache, runner.start, trainer_cfg.eval_batch_size)
        seconds += time.perf_counter() - t0
    if runner.start != cache.start:
        raise ValueError(f"prefix cache starts at point {cache.start}, the interventions at {runner.start}")
    return runner, cache, {**info, "seconds": seconds}


def predict(runner, cache, yes_id: int, no_id: int, batch_size: int = 16) -> np.ndarray:
    """Yes-minus-No logit at the last prompt position for every cached prompt."""
    n = len(cache.prefix_len)
    order = sorted(range(n), key=lambda i: -int(cache.prefix_len[i]))
    scores = np.zeros(n, dtype=np.float64)
    with attention_implementation(runner.base):
        for b in range(0, n, batch_size):
            idx = order[b : b + batch_size]
            last = runner.last_logits(cache, np.asarray(idx))
            scores[idx] = (last[:, yes_id] - last[:, no_id]).cpu().numpy()
    return scores


def store_for(trainer_cfg):
    """The on-disk store of prefix caches (trainer.cache_dir, default $REFTLAB_CACHE/prefix), or None
    if trainer.cache_disk_gb=0."""
    from pathlib import Path

    from .models import cache_root
    from .prefix_cache import DiskStore

    gb = float(trainer_cfg.cache_disk_gb)
    folder = trainer_cfg.get("cache_dir") or cache_root() / "prefix"
    return DiskStore(Path(folder), int(gb * 2**30)) if gb > 0 else None


def train(
    reft_model, spec, examples, trainer_cfg, pad_id, device, seed, describe, progress=True, store="config"
):
    """`training.train` with the cached loss; `info` says where the cache came from and how long
    obtaining it took (not counted in the result's train_seconds: the steps alone).
    `store`: the DiskStore to use (default: the one trainer_cfg names; None: memory only)."""
    from . import training

    spec = InterventionSpec.of(spec, reft_model.model.config.num_hidden_layers)
    seqs, suffix = train_inputs(examples, spec.last)
    store = store_for(trainer_cfg) if store == "config" else store
    runner, cache, info = prepare(reft_model, spec, seqs, suffix, pad_id, store, trainer_cfg,
                                  {**describe, "role": "train"}, progress)  # fmt: skip
    answers = [a for _, a in examples]

    def step_loss(groups, denominator):
        return runner.step_loss(cache, groups, answers, denominator)

    with attention_implementation(reft_model.model):
        result = training.train(
            reft_model, spec, examples, trainer_cfg, pad_id, device, seed, progress, step_loss
        )
    return result, info


def evaluate(reft_model, spec, prompts, yes_id, no_id, pad_id, trainer_cfg, describe, progress=True,
             store="config"):  # fmt: skip
    """Cached predictions for `prompts` (their cache is stored like the training one)."""
    spec = InterventionSpec.of(spec, reft_model.model.config.num_hidden_layers)
    n = spec.last
    store = store_for(trainer_cfg) if store == "config" else store
    runner, cache, info = prepare(reft_model, spec, prompts, [n] * len(prompts), pad_id, store, trainer_cfg,
                                  {**describe, "role": "eval"}, progress)  # fmt: skip
    return predict(runner, cache, yes_id, no_id, trainer_cfg.eval_batch_size), info


def _mini_cache(model, start, seqs, suffix_lens, pad_id):
    """A prefix cache for one step's (or one eval batch's) sequences: one no-grad pass over them."""
    from . import prefix_cache

    return prefix_cache.build(model, start, seqs, suffix_lens, pad_id, batch_size=len(seqs), progress=False)


def train_streamed(reft_model, spec, examples, trainer_cfg, pad_id, device, seed, progress=True):
    """`training.train` where each step first runs its examples' prefixes without grad, then their
    suffixes with grad: exact like the stored cache, memory bounded by the step. The prefix passes
    are part of the steps' time; info["seconds"] is 0 (no separate cache pass)."""
    from . import training

    spec = InterventionSpec.of(spec, reft_model.model.config.num_hidden_layers)
    seqs, suffix = train_inputs(examples, spec.last)
    runner = SuffixRunner(reft_model, spec)
    model = reft_model.model
    prefix_seconds = 0.0

    def step_loss(groups, denominator):
        nonlocal prefix_seconds
        idx = [i for g in groups for i in g]
        t0 = time.perf_counter()
        mini = _mini_cache(model, runner.start, [seqs[i] for i in idx], [suffix[i] for i in idx], pad_id)
        prefix_seconds += time.perf_counter() - t0
        local, first = [], 0
        for g in groups:
            local.append(list(range(first, first + len(g))))
            first += len(g)
        with attention_implementation(model):
            return runner.step_loss(mini, local, [examples[i][1] for i in idx], denominator)

    result = training.train(
        reft_model, spec, examples, trainer_cfg, pad_id, device, seed, progress, step_loss
    )
    info = {"source": "streamed", "seconds": 0.0, "mb": 0.0, "from_point": runner.start,
            "prefix_seconds": prefix_seconds}  # fmt: skip
    return result, info


@torch.no_grad()
def evaluate_streamed(reft_model, spec, prompts, yes_id, no_id, pad_id, batch_size, progress=True):
    """Yes-minus-No scores like `evaluate`, each batch's prefixes run when the batch comes."""
    from tqdm.auto import tqdm

    spec = InterventionSpec.of(spec, reft_model.model.config.num_hidden_layers)
    runner = SuffixRunner(reft_model, spec)
    n = spec.last
    order = sorted(range(len(prompts)), key=lambda i: -len(prompts[i]))
    scores = np.zeros(len(prompts), dtype=np.float64)
    for b in tqdm(
        range(0, len(order), batch_size), desc="eval (streamed)", unit="batch", disable=not progress
    ):
        idx = order[b : b + batch_size]
        mini = _mini_cache(reft_model.model, runner.start, [prompts[i] for i in idx], [n] * len(idx), pad_id)
        with attention_implementation(runner.base):
            last = runner.last_logits(mini, np.arange(len(idx)))
        scores[idx] = (last[:, yes_id] - last[:, no_id]).cpu().numpy()
    return scores
