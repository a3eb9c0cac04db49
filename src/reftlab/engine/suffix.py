"""The runners: the frozen model's own decoder layers from a stored point up, with the interventions.

- `SuffixRunner` (cached, streamed): only the suffix tokens (see `prefix`), each layer's attention
  reading the stored prefix keys/values through a one-step cache object and a grouped-query
  attention registered with transformers that does not copy the keys per query head;
- `FullRunner` (residual): whole sequences from the stored residual stream, the model's own attention.

Both apply pyreft's intervention modules where pyvene applies them (`points`: one map from
residual-stream point to interventions, one `intervene`). `advance` derives a cache for a higher
point from a lower one without a new pass over the data.
"""

from __future__ import annotations

import numpy as np
import torch
from torch.nn.utils import parametrize

from .. import hf_compat
from ..spec import unit_locations
from .loop import answer_loss, answer_targets, step_means
from .plan import POINT_OFFSET, start_point
from .prefix import PrefixCache

ATTENTION = "reftlab_grouped"


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


def attention_implementation(model):
    """Context: the frozen model's layers use the grouped attention inside, then the old one."""
    hf_compat.register_attention(ATTENTION, grouped_attention)
    return hf_compat.attention_implementation(model, ATTENTION)


def points(spec, interventions) -> dict[int, list[tuple[int, torch.nn.Module]]]:
    """The one intervention map: residual-stream point -> [(slot, intervention)] (slots as `spec.slots`)."""
    offset = POINT_OFFSET[spec.component]
    at: dict[int, list] = {}
    for slot, ((layer, _), iv) in enumerate(zip(spec.slots, interventions, strict=True)):
        at.setdefault(layer + offset, []).append((slot, iv))
    return at


def last_prompt_tokens(at: dict, n_pos: int, rows: int, device) -> list[torch.Tensor]:
    """`where` for suffix rows: every intervention acts on the first `n_pos` suffix columns (the last
    prompt tokens), in each of `rows` rows."""
    return [torch.arange(n_pos, device=device).expand(rows, -1)] * sum(map(len, at.values()))


def intervene(h, at: dict, point: int, where: list[torch.Tensor]):
    """`h` with each intervention of `point` applied at its positions (`where[slot]`: [B, k] columns)."""
    for slot, iv in at.get(point, ()):
        index = where[slot][..., None].expand(-1, -1, h.shape[-1])
        h = h.scatter(1, index, iv(h.gather(1, index)))
    return h


def within(parents, s: np.ndarray, slen: int) -> tuple[np.ndarray, np.ndarray]:
    """Which suffix rows each suffix row may attend [B, S, S] and each row's offset after its prefix
    [B, S]: every earlier row of its own suffix (a chain), or with `parents` (each example's suffix
    rows' parents, -1 for the first: `prefix.as_trees`) its ancestors; padding rows as a chain."""
    allowed = np.tril(np.ones((slen, slen), bool)) & (np.arange(slen)[None, :] < s[:, None])[:, None, :]
    depth = np.broadcast_to(np.arange(slen), (len(s), slen)).copy()
    for b, rows_ in enumerate(parents or ()):
        for u, q in enumerate(rows_):  # parents come before their children
            allowed[b, u] = allowed[b, q] if q >= 0 else False
            allowed[b, u, u] = True
            depth[b, u] = depth[b, q] + 1 if q >= 0 else 0
    return allowed, depth


def suffix_states(
    body, cache: PrefixCache, idx, stop: int, apply=None, parents=None
) -> tuple[torch.Tensor, np.ndarray]:
    """Residual stream [B, S, H] at point `stop` of the suffixes of examples `idx` (right-padded),
    run from the cache's point through the decoder layers `body.layers` attending to the stored
    prefix, with `apply(h, point)` at every point; and the suffix lengths. A suffix is a chain of
    tokens, or with `parents` (per example of `idx`) a tree: a prompt's last tokens and its continuations."""
    apply = apply or (lambda h, point: h)
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
    chain, depth = within(parents, s, slen)
    positions = p[:, None] + depth  # true positions: the suffix follows its own prefix
    # keys a suffix token may attend to: its prefix (not the padding) and the suffix up to itself
    allowed = np.concatenate([np.broadcast_to(~pad[:, None, :], (b, slen, width)), chain], axis=2)
    parts = (gather, sgather, positions, allowed)  # one host-to-device copy per step
    packed = torch.from_numpy(np.concatenate([a.reshape(-1).astype(np.int64) for a in parts])).to(device)
    g, sg, positions, allowed = torch.split(packed, [a.size for a in parts])
    kv, d = cache.keys.shape[2:]
    # rows of a layer's keys viewed [tokens * kv, d], in [b, kv, width] order: gathered straight
    # into the layout the attention reads (no copy of a transposed view per layer)
    g = (g.view(b, 1, width) * kv + torch.arange(kv, device=device).view(1, kv, 1)).reshape(-1)
    h = cache.hidden.index_select(0, sg).view(b, slen, -1)
    mask = torch.zeros((b, 1, slen, width + slen), dtype=torch.float32, device=device)
    mask.masked_fill_(allowed.view(b, 1, slen, width + slen) == 0, float("-inf"))
    positions = positions.view(b, slen)
    position_embeddings = hf_compat.rotary(body, h, positions)
    with parametrize.cached():  # LoReFT reads its orthogonal R twice a call: one Householder product
        h = apply(h, cache.start)
        for j in range(cache.start, stop):
            # one layer's stored prefix at a time: a fused step's batch is large, its layers' keys more so
            keys = cache.keys[j - cache.start].reshape(-1, d).index_select(0, g).view(b, kv, width, d)
            values = cache.values[j - cache.start].reshape(-1, d).index_select(0, g).view(b, kv, width, d)
            stored = _StoredPrefix(keys, values)
            out = body.layers[j](h, attention_mask=mask, position_ids=positions,
                                 position_embeddings=position_embeddings, **{cache_arg: stored})  # fmt: skip
            h = apply(hf_compat.layer_output(out), j + 1)
    return h, s


class SuffixRunner:
    """Runs the suffixes of cached examples through the frozen model with the interventions (on the
    first `spec.last` suffix tokens: the last prompt tokens)."""

    def __init__(self, model, spec, interventions):
        self.base, self.body = model, model.model
        self.n_pos = spec.last
        self.at = points(spec, interventions)
        self.start = start_point(spec)

    def hidden(self, cache, idx, parents=None) -> tuple[torch.Tensor, np.ndarray]:
        """Final hidden states [B, S, H] of the suffixes of examples `idx` (right-padded; trees with
        `parents`), and their lengths."""
        device = cache.hidden.device
        where = last_prompt_tokens(self.at, self.n_pos, len(idx), device)

        def apply(h, point):
            return intervene(h, self.at, point, where)

        h, s = suffix_states(self.body, cache, idx, len(self.body.layers), apply, parents)
        return self.body.norm(h), s

    def step_loss(self, cache, groups: list[list[int]], answers: list[list[int]], denominator: int):
        """One suffix pass over all batches of an optimizer step: (sum of each batch's mean answer
        cross-entropy x len(batch) / denominator, the batch means); `answers[i]` of example i."""
        idx = np.concatenate([np.asarray(g) for g in groups])
        h, _ = self.hidden(cache, idx)
        first = self.n_pos - 1  # the last prompt token predicts the first answer token
        targets = answer_targets([answers[i] for i in idx], h.shape[1] - first, right=False)
        ce = answer_loss(self.base.lm_head, h[:, first:], targets)
        return step_means(ce, targets, groups, denominator)

    def last_logits(self, cache, idx) -> torch.Tensor:
        h, s = self.hidden(cache, idx)
        last = torch.from_numpy(s - 1).to(h.device)
        return self.base.lm_head(h[torch.arange(len(idx), device=h.device), last])

    def loglik(self, cache, idx, parents, continuations, paths) -> list[np.ndarray]:
        """For each entry of `idx` (a prompt's last n tokens, then the tree of its continuations but
        their last tokens: `prefix.as_trees`), the summed log-probability of each of
        `continuations[k]` (`continuation_sums`): the training computation of each example (prompt,
        continuation), without a backward, the rows continuations share computed once."""
        h, _ = self.hidden(cache, idx, [parents[k] for k in idx])
        return continuation_sums(self.base.lm_head, h, idx, self.n_pos, continuations, paths)


def continuation_sums(head, h, idx, n_pos: int, continuations, paths) -> list[np.ndarray]:
    """Row b of the final hidden states `h` [B, S, H] is entry idx[b]'s suffix (its prompt's last n_pos
    tokens, then the tree of its continuations): the summed log-probability under the output layer
    `head` of each of `continuations[idx[b]]`, its first token from the last prompt row, each next one
    from the row of the token before it (`paths[idx[b]][j]`: those rows)."""
    width = h.shape[1]
    rows, targets, owner = [], [], []
    for b, k in enumerate(idx):
        for j, (c, path) in enumerate(zip(continuations[k], paths[k], strict=True)):
            at = [n_pos - 1, *path][: len(c)]  # the row that predicts each token of c
            rows.extend(b * width + np.asarray(at, dtype=np.int64))
            targets.extend(c)
            owner.extend([(b, j)] * len(c))
    flat = h.reshape(-1, h.shape[-1])[torch.from_numpy(np.asarray(rows, dtype=np.int64)).to(h.device)]
    ce = answer_loss(head, flat[None], torch.tensor([targets]))[0].double().cpu().numpy()
    out = [np.zeros(len(continuations[k])) for k in idx]
    for (b, j), value in zip(owner, ce, strict=True):
        out[b][j] -= value
    return out


class FullRunner:
    """Runs whole stored sequences from the lowest intervention point up, with the interventions."""

    def __init__(self, model, spec, interventions):
        self.base, self.body, self.spec = model, model.model, spec
        self.at = points(spec, interventions)
        self.start = start_point(spec)

    def hidden(self, cache, idx, prompt_lens) -> torch.Tensor:
        """Final hidden states [B, W, H] of sequences `idx` (left-padded to the longest), whose
        prompts are `prompt_lens` long (the rest of each sequence is answer tokens)."""
        device = cache.hidden.device
        idx = np.asarray(idx)
        lens = cache.length[idx]
        b, width = len(idx), int(lens.max())
        starts = width - lens
        cols = np.arange(width)
        real = cols[None, :] >= starts[:, None]
        gather = np.where(real, cache.offset[idx][:, None] + cols[None, :] - starts[:, None], 0)
        h = cache.hidden.index_select(0, torch.from_numpy(gather.reshape(-1)).to(device)).view(b, width, -1)
        positions = torch.from_numpy(np.maximum(cols[None, :] - starts[:, None], 0)).to(device)
        # causal attention over real tokens; a padding row attends to itself only (never read)
        allowed = np.tril(np.ones((width, width), bool))[None] & real[:, None, :]
        allowed |= np.eye(width, dtype=bool)[None] & ~real[:, :, None]
        mask = torch.from_numpy(allowed).to(device)[:, None]  # boolean, True = may attend (sdpa, eager)
        slots = unit_locations(self.spec, list(prompt_lens), starts.tolist())["sources->base"][1]
        # a short prompt has fewer positions: repeat its last one (the same token, intervened once)
        where = [
            torch.tensor([r + [r[-1]] * (max(map(len, s)) - len(r)) for r in s], device=device) for s in slots
        ]
        embeddings = hf_compat.rotary(self.body, h, positions)
        with parametrize.cached():
            for j in range(self.start, len(self.body.layers)):
                h = intervene(h, self.at, j, where)
                out = self.body.layers[j](
                    h, attention_mask=mask, position_ids=positions, position_embeddings=embeddings
                )
                h = hf_compat.layer_output(out)
            return self.body.norm(intervene(h, self.at, len(self.body.layers), where))

    def step_loss(self, cache, groups, examples, denominator):
        """As `SuffixRunner.step_loss`: all batches of a step in one pass."""
        idx = [i for g in groups for i in g]
        answers = [examples[i][1] for i in idx]
        h = self.hidden(cache, idx, [len(examples[i][0]) for i in idx])
        k = max(len(a) for a in answers)  # the last k positions predict the (right-aligned) answers
        targets = answer_targets(answers, k, right=True)
        return step_means(answer_loss(self.base.lm_head, h[:, -k:], targets), targets, groups, denominator)

    def last_logits(self, cache, idx, prompt_lens) -> torch.Tensor:
        return self.base.lm_head(self.hidden(cache, idx, prompt_lens)[:, -1])


@torch.no_grad()
def advance(model, cache: PrefixCache, start: int, batch_size: int = 32) -> PrefixCache:
    """The cache from point `start` (>= cache.start), derived from `cache` without a new pass over
    the data: the stored keys/values from `start` up are the same tensors, and the suffix residual
    stream is run on from cache.start to `start` through the frozen layers (no intervention below
    the lowest one, so it is what a pass from `start` would store). A few tokens per example."""
    if start < cache.start:
        raise ValueError(f"a cache from point {cache.start} cannot serve point {start} below it")
    if start == cache.start:
        return cache
    hidden = cache.hidden.clone()
    n = len(cache.prefix_len)
    order = sorted(range(n), key=lambda i: -int(cache.prefix_len[i]))  # similar widths: little padding
    with attention_implementation(model):
        for b in range(0, n, batch_size):
            idx = np.asarray(order[b : b + batch_size])
            h, s = suffix_states(model.model, cache, idx, start)
            valid = torch.from_numpy(np.arange(h.shape[1])[None, :] < s[:, None])
            rows = np.concatenate(
                [cache.suffix_offset[i] + np.arange(k) for i, k in zip(idx, s, strict=True)]
            )
            hidden[torch.from_numpy(rows).to(hidden.device)] = h[valid.to(h.device)]
    skip = start - cache.start
    return PrefixCache(start, cache.keys[skip:], cache.values[skip:], hidden, cache.prefix_offset,
                       cache.prefix_len, cache.suffix_offset, cache.suffix_len,
                       {**cache.meta, "from_point": cache.start})  # fmt: skip
