"""Per-example prefix entries: a request's cache is put together from the stored ones that hold its
examples, and only the examples none holds are run through the model.

An example is named by the model, its prompt's token ids and the number of suffix positions (the
prompt's last n tokens); nothing else goes into its name. A stored shard (one pass's output) holds
each of its examples' prefix keys/values, the stream of its last n prompt tokens and, after them,
the stream of each of its own tails: the answers it may be trained with and the continuations it
was scored with (`prefix.build(tails=...)`). So the same entry serves scoring the prompt and
training on it with its answer, in every fold, cap, split and seed: one pass over a corpus serves
all of them.

A shard's metadata lists the distinct tails of its examples once (`tails`) and, per example, which
of them it holds (`example_tails`, indices into `tails`; format 3). A shard written before
per-example tails (format 2: no `example_tails`) holds every one of `tails` for every example, in
that order: it is read as it is (`example_tails_of`), not rebuilt.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np
import torch

from ..models import head_dim
from .prefix import PrefixCache, offsets


def example_keys(model_id: str, prompts, n: int) -> list[str]:
    """The name of each prompt's entry: the model, n and the prompt's token ids."""
    base = hashlib.sha256(f"{model_id}|{n}|".encode())
    out = []
    for p in prompts:
        h = base.copy()
        h.update(np.asarray(p, dtype=np.int64).tobytes())
        out.append(h.hexdigest()[:24])
    return out


@dataclass
class Source:
    """Where rows of examples are read: a cache in memory, or a stored shard read in slices."""

    start: int
    tails: list[list[tuple]]  # per example: the tails whose stream follows its n suffix rows, in order
    prefix_offset: np.ndarray
    prefix_len: np.ndarray
    suffix_offset: np.ndarray
    get: object  # get(name, a, b): rows a..b of "keys"/"values" (dim 1) or "hidden" (dim 0)
    layers: int
    cache: PrefixCache | None = None  # the cache, for a source in memory

    @classmethod
    def of_cache(cls, cache: PrefixCache, tails) -> Source:
        """A cache in memory whose example i holds `tails[i]` (as `prefix.build` stored them)."""

        def get(name, a, b):
            t = getattr(cache, name)
            return t[a:b] if name == "hidden" else t[:, a:b]

        return cls(cache.start, list(tails), cache.prefix_offset, cache.prefix_len, cache.suffix_offset, get,
                   cache.keys.shape[0], cache)  # fmt: skip

    @classmethod
    def of_file(cls, handle, meta: dict) -> Source:
        """A shard open with safetensors' `safe_open` (its tensors are read only where asked)."""
        slices = {name: handle.get_slice(name) for name in ("keys", "values", "hidden")}

        def get(name, a, b):
            return slices[name][a:b] if name == "hidden" else slices[name][:, a:b]

        arrays = [handle.get_tensor(k).numpy() for k in ("prefix_offset", "prefix_len", "suffix_offset")]
        return cls(int(meta["start"]), example_tails_of(meta), *arrays, get, slices["keys"].get_shape()[0])

    def tail_row(self, pos: int, tail: tuple) -> int:
        """Where `tail`'s stream starts after example `pos`'s n suffix rows."""
        first = 0
        for t in self.tails[pos]:
            if t == tail:
                return first
            first += len(t)
        raise KeyError(tail)


def tails_about(tails: list[list[tuple]]) -> dict:
    """What a shard's metadata says of its examples' tails: the distinct ones once, and each example's
    as indices into them (format 3)."""
    distinct = list(dict.fromkeys(t for ts in tails for t in ts))
    number = {t: k for k, t in enumerate(distinct)}
    return {
        "format": 3,
        "tails": [list(t) for t in distinct],
        "example_tails": [[number[t] for t in ts] for ts in tails],
    }


def example_tails_of(meta: dict) -> list[list[tuple]]:
    """Each example's tails, in the order its rows hold them, from a shard's metadata (format 2, before
    per-example tails: every example holds all of `tails`)."""
    distinct = [tuple(t) for t in meta["tails"]]
    if "example_tails" not in meta:
        return [distinct] * len(meta["examples"])
    return [[distinct[k] for k in ks] for ks in meta["example_tails"]]


def shape_of(model) -> dict:
    """What `assemble` allocates a cache of `model` with: key/value and hidden widths, dtype, device."""
    cfg = model.config
    return {"kv": (cfg.num_key_value_heads, head_dim(cfg)), "hidden": cfg.hidden_size, "dtype": model.dtype,
            "device": next(model.parameters()).device}  # fmt: skip


def assemble(parts, n: int, shape: dict) -> PrefixCache:
    """A cache of `parts` (source, position in it, tail) in this order, all from one point: each
    example's prefix keys/values, its n suffix rows and its tail's rows (scoring: no tail). An
    example that several parts name (one per continuation of its prompt) has its keys/values once;
    where one cache in memory (the pass just built) serves them all, they are shared, not copied."""
    first = parts[0][0]
    p_len = np.asarray([int(src.prefix_len[pos]) for src, pos, _ in parts], dtype=np.int64)
    s_len = np.asarray([n + len(tail) for _, _, tail in parts], dtype=np.int64)
    s_off = offsets(s_len)
    shared = first.cache is not None and all(src is first for src, _, _ in parts)
    copies: dict[tuple, int] = {}  # (source, position) -> where its keys/values start in this cache
    if shared:  # the largest part of a cache stays where the pass put it
        keys, values = first.cache.keys, first.cache.values
        p_off = np.asarray([int(first.prefix_offset[pos]) for _, pos, _ in parts], dtype=np.int64)
    else:
        p_off, row = np.zeros(len(parts), dtype=np.int64), 1
        for i, (src, pos, _) in enumerate(parts):
            if (id(src), pos) not in copies:
                copies[id(src), pos], row = row, row + int(p_len[i])
            p_off[i] = copies[id(src), pos]
        keys = torch.zeros((first.layers, row, *shape["kv"]), dtype=shape["dtype"], device=shape["device"])
        values = torch.zeros_like(keys)
    hidden = torch.zeros(
        (1 + int(s_len.sum()), shape["hidden"]), dtype=shape["dtype"], device=shape["device"]
    )
    for i, (src, pos, tail) in enumerate(parts):
        a, m = int(src.prefix_offset[pos]), int(p_len[i])
        if first.layers and m and copies.pop((id(src), pos), None) is not None:  # each example's once
            keys[:, p_off[i] : p_off[i] + m] = src.get("keys", a, a + m)
            values[:, p_off[i] : p_off[i] + m] = src.get("values", a, a + m)
        h = int(src.suffix_offset[pos])
        hidden[s_off[i] : s_off[i] + n] = src.get("hidden", h, h + n)
        if tail:
            t = h + n + src.tail_row(pos, tail)
            hidden[s_off[i] + n : s_off[i] + n + len(tail)] = src.get("hidden", t, t + len(tail))
    return PrefixCache(first.start, keys, values, hidden, p_off, p_len, s_off, s_len)


def combine(caches: list[PrefixCache], members: list[list[int]], total: int) -> PrefixCache:
    """One cache of `total` examples from caches of one point: caches[j] holds the examples
    members[j] (in its order); rows are concatenated (one cache: kept as they are), offsets point
    each example to its own."""
    first = caches[0]
    if len(caches) == 1 and list(members[0]) == list(range(total)):
        return first
    p_off, p_len = np.zeros(total, np.int64), np.zeros(total, np.int64)
    s_off, s_len = np.zeros(total, np.int64), np.zeros(total, np.int64)
    p_shift = s_shift = 0
    for c, idx in zip(caches, members, strict=True):
        p_off[idx], p_len[idx] = c.prefix_offset + p_shift, c.prefix_len
        s_off[idx], s_len[idx] = c.suffix_offset + s_shift, c.suffix_len
        p_shift += c.keys.shape[1] - 1
        s_shift += c.hidden.shape[0] - 1
    if len(caches) == 1:
        return PrefixCache(first.start, first.keys, first.values, first.hidden, p_off, p_len, s_off, s_len)
    keys = torch.cat([first.keys[:, :1]] + [c.keys[:, 1:] for c in caches], dim=1)
    values = torch.cat([first.values[:, :1]] + [c.values[:, 1:] for c in caches], dim=1)
    hidden = torch.cat([first.hidden[:1]] + [c.hidden[1:] for c in caches], dim=0)
    return PrefixCache(first.start, keys, values, hidden, p_off, p_len, s_off, s_len)


def lookup(index, wanted, build_at: int, start: int) -> list[tuple | None]:
    """For each (example key, tail) wanted: (shard key, position) of a stored entry that serves it
    (from a point in build_at..start, holding that tail), the highest point first; else None.
    `index`: (shard key, meta) pairs."""
    where: dict[str, list] = {}
    for shard, meta in index:
        point = int(meta["start"])
        if not build_at <= point <= start:
            continue
        for pos, (key, tails) in enumerate(zip(meta["examples"], example_tails_of(meta), strict=True)):
            where.setdefault(key, []).append((point, shard, pos, set(tails)))
    out = []
    for key, tail in wanted:
        options = [o for o in where.get(key, ()) if not tail or tail in o[3]]
        best = max(options, key=lambda o: o[0]) if options else None
        out.append(None if best is None else (best[1], best[2]))
    return out
