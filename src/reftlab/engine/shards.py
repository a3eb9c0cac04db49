"""Per-example prefix entries: a request's cache is put together from the stored ones that hold its
examples, and only the examples none holds are run through the model.

An example is named by the model, its prompt's token ids and the number of suffix positions (the
prompt's last n tokens); nothing else goes into its name. A stored shard (one pass's output) holds
each of its examples' prefix keys/values, the stream of its last n prompt tokens and, after them,
the stream of every answer it may be trained with (`prefix.build(tails=...)`). So the same entry
serves scoring the prompt and training on it with its answer, in every fold, cap, split and seed:
one pass over a corpus serves all of them.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np
import torch

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
    tails: list[tuple]  # the answers whose stream follows each example's n suffix rows
    prefix_offset: np.ndarray
    prefix_len: np.ndarray
    suffix_offset: np.ndarray
    get: object  # get(name, a, b): rows a..b of "keys"/"values" (dim 1) or "hidden" (dim 0)
    layers: int
    cache: PrefixCache | None = None  # the cache, for a source in memory

    @classmethod
    def of_cache(cls, cache: PrefixCache, tails) -> Source:
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
        tails = [tuple(t) for t in meta["tails"]]
        return cls(int(meta["start"]), tails, *arrays, get, slices["keys"].get_shape()[0])

    def tail_row(self, tail: tuple) -> int:
        """Where `tail`'s stream starts after an example's n suffix rows."""
        first = 0
        for t in self.tails:
            if t == tail:
                return first
            first += len(t)
        raise KeyError(tail)


def assemble(parts, n: int, shape: dict) -> PrefixCache:
    """A cache of `parts` (source, position in it, tail) in this order, all from one point: each
    example's prefix keys/values, its n suffix rows and its tail's rows (scoring: no tail). Where one
    cache in memory (the pass just built) serves them all, its keys/values are shared, not copied."""
    first = parts[0][0]
    p_len = np.asarray([int(src.prefix_len[pos]) for src, pos, _ in parts], dtype=np.int64)
    s_len = np.asarray([n + len(tail) for _, _, tail in parts], dtype=np.int64)
    p_off, s_off = offsets(p_len), offsets(s_len)
    shared = first.cache is not None and all(src is first for src, _, _ in parts)
    if shared:  # the largest part of a cache stays where the pass put it
        keys, values = first.cache.keys, first.cache.values
        p_off = np.asarray([int(first.prefix_offset[pos]) for _, pos, _ in parts], dtype=np.int64)
    else:
        size = (first.layers, 1 + int(p_len.sum()), *shape["kv"])
        keys = torch.zeros(size, dtype=shape["dtype"], device=shape["device"])
        values = torch.zeros_like(keys)
    hidden = torch.zeros(
        (1 + int(s_len.sum()), shape["hidden"]), dtype=shape["dtype"], device=shape["device"]
    )
    for i, (src, pos, tail) in enumerate(parts):
        a, m = int(src.prefix_offset[pos]), int(p_len[i])
        if first.layers and m and not shared:
            keys[:, p_off[i] : p_off[i] + m] = src.get("keys", a, a + m)
            values[:, p_off[i] : p_off[i] + m] = src.get("values", a, a + m)
        h = int(src.suffix_offset[pos])
        hidden[s_off[i] : s_off[i] + n] = src.get("hidden", h, h + n)
        if tail:
            t = h + n + src.tail_row(tail)
            hidden[s_off[i] + n : s_off[i] + n + len(tail)] = src.get("hidden", t, t + len(tail))
    return PrefixCache(first.start, keys, values, hidden, p_off, p_len, s_off, s_len)


def combine(caches: list[PrefixCache], members: list[list[int]], total: int) -> PrefixCache:
    """One cache of `total` examples from caches of one point: caches[j] holds the examples
    members[j] (in its order); rows are concatenated, offsets point each example to its own."""
    if len(caches) == 1:
        return caches[0]
    p_off, p_len = np.zeros(total, np.int64), np.zeros(total, np.int64)
    s_off, s_len = np.zeros(total, np.int64), np.zeros(total, np.int64)
    p_shift = s_shift = 0
    for c, idx in zip(caches, members, strict=True):
        p_off[idx], p_len[idx] = c.prefix_offset + p_shift, c.prefix_len
        s_off[idx], s_len[idx] = c.suffix_offset + s_shift, c.suffix_len
        p_shift += c.keys.shape[1] - 1
        s_shift += c.hidden.shape[0] - 1
    first = caches[0]
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
        tails = {tuple(t) for t in meta["tails"]}
        for pos, key in enumerate(meta["examples"]):
            where.setdefault(key, []).append((point, shard, pos, tails))
    out = []
    for key, tail in wanted:
        options = [o for o in where.get(key, ()) if not tail or tail in o[3]]
        best = max(options, key=lambda o: o[0]) if options else None
        out.append(None if best is None else (best[1], best[2]))
    return out
