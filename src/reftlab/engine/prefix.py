"""What one no-grad pass of the frozen model stores, so the steps never run it again.

With the model frozen and attention causal, an intervention on the last `n` prompt positions at
layers >= L changes nothing below L, and nothing at the prompt positions before it. So one pass
stores, per example (`PrefixCache`, the cached and streamed strategies):

- the keys/values of the unchanged prefix (prompt minus its last n tokens) at layers L..N-1, with
  rotary embeddings applied (Hugging Face's own KV cache, read out once);
- the residual stream at point L for the suffix (the last n prompt tokens and, when training, the
  answer tokens but the last).

A first-token intervention changes every later token above L, but still nothing below it: then
the residual stream at point L of every token is stored (`ResidualCache`, the residual strategy).

What may follow a prompt (its answers, the options of its question) is stored with it too: each
example's own tails, run in one pass after the prompt's keys/values as a prefix tree (`Tree`: the
first tokens several share computed once), up to point L only. Scoring continuations reads a
prompt's stored rows back as one tree-shaped suffix per prompt (`as_trees`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from tqdm.auto import tqdm

from .. import hf_compat
from ..models import head_dim
from .loop import left_pad


@dataclass
class PrefixCache:
    """Prefix keys/values and suffix hidden states for a list of examples, packed without padding.

    keys/values: [layers, 1 + prefix tokens, kv_heads, head_dim]; row 0 is a zero pad slot.
    hidden: [1 + suffix tokens, hidden size]; row 0 is a zero pad slot.
    """

    start: int  # the residual-stream point the suffix starts from (input of layer `start`)
    keys: torch.Tensor
    values: torch.Tensor
    hidden: torch.Tensor
    prefix_offset: np.ndarray
    prefix_len: np.ndarray
    suffix_offset: np.ndarray
    suffix_len: np.ndarray
    meta: dict = field(default_factory=dict)

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (self.keys, self.values, self.hidden))


@dataclass
class ResidualCache:
    """The residual stream at point `start` of every token of every sequence, packed without padding
    (row 0: a zero pad slot)."""

    start: int
    hidden: torch.Tensor
    offset: np.ndarray
    length: np.ndarray

    @property
    def nbytes(self) -> int:
        return self.hidden.numel() * self.hidden.element_size()


class Reached(Exception):
    """Raised by a capture hook with `stop`: the pass has reached the point, the layers above are not needed."""


def capture(model, point: int, into: list, stop: bool = False):
    """A hook that appends the residual stream at `point` (input of layer `point`, or the last
    layer's output) to `into`; with `stop` it ends the forward pass there (raises `Reached`)."""
    layers = model.model.layers
    if point < len(layers):

        def pre(module, args, kwargs):
            into.append(args[0] if args else kwargs["hidden_states"])
            if stop:
                raise Reached

        return layers[point].register_forward_pre_hook(pre, with_kwargs=True)

    def post(module, args, output):
        into.append(hf_compat.layer_output(output))

    return layers[-1].register_forward_hook(post)


def offsets(lengths: np.ndarray) -> np.ndarray:
    """Where each packed run starts (row 0 is the pad slot)."""
    return 1 + np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)


def rows(idx, width: int, firsts, counts) -> np.ndarray:
    """Flat row numbers of a [B, width] batch: `counts[k]` tokens from column `firsts[k]` of row k."""
    return np.concatenate(
        [r * width + f + np.arange(c) for r, (f, c) in enumerate(zip(firsts, counts, strict=True))]
    )


@dataclass
class Tree:
    """The token runs that follow each row of a batch (its tails, its continuations) packed as one
    prefix tree per row: tokens that runs of a row share (their first ones: "the correct answer is
    answer1" and "... answer2") are one node, so one pass after the rows' keys/values computes every
    run of every row, each node attending to the row's tokens, its ancestors and itself."""

    ids: torch.Tensor  # [B, T]: each node's token (pad where a row has fewer nodes)
    depth: np.ndarray  # [B, T]: how many ancestors each node has (its position after the row's last)
    allowed: np.ndarray  # [B, T, T]: node u may attend node v (v is u or one of its ancestors)
    paths: list  # paths[r][j]: the node of each token of run j of row r
    parents: list  # parents[r][u]: the parent node of node u of row r (-1: a first token)

    @classmethod
    def of(cls, runs: list[list[tuple]], pad_id: int) -> Tree:
        """The trees of `runs[r]` (row r's token runs; empty runs have no nodes)."""
        rows = []
        for row in runs:
            nodes, parent, paths = {}, [], []
            for run in row:
                path, at = [], -1
                for token in run:
                    if (at, token) not in nodes:
                        nodes[at, token] = len(parent)
                        parent.append(at)
                    at = nodes[at, token]
                    path.append(at)
                paths.append(path)
            rows.append(([token for _, token in nodes], parent, paths))
        width = max(1, max(len(parent) for _, parent, _ in rows))
        ids = torch.full((len(runs), width), pad_id, dtype=torch.long)
        depth = np.zeros((len(runs), width), dtype=np.int64)
        allowed = np.broadcast_to(np.eye(width, dtype=bool), (len(runs), width, width)).copy()
        for r, (tokens, parent, _) in enumerate(rows):
            ids[r, : len(tokens)] = torch.tensor(tokens, dtype=torch.long)
            for u, p in enumerate(parent):  # parents come before their children
                if p >= 0:
                    allowed[r, u] |= allowed[r, p]
                    depth[r, u] = depth[r, p] + 1
        return cls(ids, depth, allowed, [paths for _, _, paths in rows], [parent for _, parent, _ in rows])

    def inputs(self, enc: dict, dtype) -> dict:
        """The model's inputs for the trees after the left-padded batch `enc` whose keys/values a
        cache holds: their tokens, true positions and an additive 4-D attention mask [B, 1, T, W + T]
        (the rows' tokens but their padding, then the tree), which transformers takes as it is."""
        device = enc["input_ids"].device
        b, width = self.ids.shape
        prompt = enc["attention_mask"].bool()[:, None, None, :].expand(b, 1, width, -1)
        allowed = torch.cat([prompt, torch.from_numpy(self.allowed)[:, None].to(device)], dim=-1)
        mask = torch.zeros(allowed.shape, dtype=dtype, device=device).masked_fill_(
            ~allowed, torch.finfo(dtype).min
        )
        positions = enc["position_ids"][:, -1:] + 1 + torch.from_numpy(self.depth).to(device)
        return {"input_ids": self.ids.to(device), "attention_mask": mask, "position_ids": positions}


def as_trees(cache: PrefixCache, entries: list[list[int]], runs: list[list[tuple]], n: int):
    """One entry per prompt from a cache of one entry per (prompt, run) (the prompt's last n tokens,
    then the run; `entries[i]`: prompt i's entries, in the order of `runs[i]`): the prompt's n rows,
    then the nodes of its runs' `Tree` (each node's row from a run through it: a causal model's
    stream at a token depends on the tokens before it alone). Returns the cache, each entry's
    suffix rows' parents (-1: the first), and the suffix row of each token of each run."""
    trees = [Tree.of([row], 0) for row in runs]
    owners, sources, parents, paths = [], [], [], []
    for row_entries, tree in zip(entries, trees, strict=True):
        first = int(cache.suffix_offset[row_entries[0]])
        where = {}  # node -> its row in the cache
        for e, path in zip(row_entries, tree.paths[0], strict=True):
            for t, u in enumerate(path):
                where.setdefault(u, int(cache.suffix_offset[e]) + n + t)
        nodes = tree.parents[0]
        sources.append(
            np.concatenate([first + np.arange(n), [where[u] for u in range(len(nodes))]]).astype(np.int64)
        )
        parents.append(
            np.asarray([*range(-1, n - 1), *[n - 1 if q < 0 else n + q for q in nodes]], dtype=np.int64)
        )
        paths.append([[n + u for u in path] for path in tree.paths[0]])
        owners.append(row_entries[0])
    s_len = np.asarray([len(rows_) for rows_ in sources], dtype=np.int64)
    hidden = torch.cat(
        [cache.hidden[:1], cache.hidden[torch.from_numpy(np.concatenate(sources)).to(cache.hidden.device)]]
    )
    owners = np.asarray(owners, dtype=np.int64)
    trees_cache = PrefixCache(cache.start, cache.keys, cache.values, hidden, cache.prefix_offset[owners],
                              cache.prefix_len[owners], offsets(s_len), s_len, dict(cache.meta))  # fmt: skip
    return trees_cache, parents, paths


def own_tails(tails, n_seqs: int) -> list[list[tuple]]:
    """Each sequence's distinct non-empty tails, in order (`tails`: per sequence, or none at all)."""
    if not tails:
        return [[] for _ in range(n_seqs)]
    if len(tails) != n_seqs:
        raise ValueError(f"{len(tails)} lists of tails for {n_seqs} sequences")
    return [list(dict.fromkeys(tuple(t) for t in ts if len(t))) for ts in tails]


@torch.no_grad()
def build(model, start: int, seqs: list[list[int]], suffix_lens: list[int], pad_id: int, batch_size: int = 16,
          progress: bool = True, tails=()) -> PrefixCache:  # fmt: skip
    """One no-grad pass of the frozen causal LM `model` over `seqs` (left-padded, longest first).

    `suffix_lens[i]`: how many trailing tokens of seqs[i] the steps recompute. `tails[i]`: the token
    runs (answers, options) seqs[i] may go on with (`[shared] * len(seqs)` where every sequence has
    the same ones): the stream at point `start` of each is stored after the suffix's own, in order
    (suffix_len counts them), from short continuations of the pass (their keys and values are not
    kept), so one entry serves scoring the sequence and training on it with any of them."""
    device = next(model.parameters()).device
    cfg = model.config
    n_layers = cfg.num_hidden_layers
    tails = own_tails(tails, len(seqs))
    s_len = np.asarray(suffix_lens, dtype=np.int64)
    p_len = np.asarray([len(q) for q in seqs], dtype=np.int64) - s_len
    if (p_len < 0).any():
        raise ValueError("a suffix is longer than its sequence")
    extra = np.asarray([sum(map(len, ts)) for ts in tails], dtype=np.int64)
    p_off, s_off = offsets(p_len), offsets(s_len + extra)
    shape = (n_layers - start, 1 + int(p_len.sum()), cfg.num_key_value_heads, head_dim(cfg))
    keys = torch.zeros(shape, dtype=model.dtype, device=device)
    values = torch.zeros(shape, dtype=model.dtype, device=device)
    hidden = torch.zeros((1 + int((s_len + extra).sum()), cfg.hidden_size), dtype=model.dtype, device=device)
    cache_arg = hf_compat.cache_kwarg(model.model.forward)
    order = sorted(range(len(seqs)), key=lambda i: -len(seqs[i]))
    captured: list[torch.Tensor] = []
    for b in tqdm(range(0, len(order), batch_size), desc="prefix cache", unit="batch", disable=not progress):
        idx = order[b : b + batch_size]
        enc = left_pad([seqs[i] for i in idx], pad_id, device)
        width = enc["input_ids"].shape[1]
        kv_cache = hf_compat.new_kv_cache(cfg)
        captured.clear()
        hook = capture(model, start, captured)
        try:
            model.model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"],
                        position_ids=enc["position_ids"], use_cache=True, **{cache_arg: kv_cache})  # fmt: skip
        finally:
            hook.remove()
        firsts = [width - len(seqs[i]) for i in idx]  # left padding
        src = torch.from_numpy(rows(idx, width, firsts, p_len[idx])).to(device)
        dst = torch.from_numpy(np.concatenate([p_off[i] + np.arange(p_len[i]) for i in idx])).to(device)
        ssrc = torch.from_numpy(rows(idx, width, [f + p_len[i] for f, i in zip(firsts, idx, strict=True)],
                                     s_len[idx])).to(device)  # fmt: skip
        sdst = torch.from_numpy(np.concatenate([s_off[i] + np.arange(s_len[i]) for i in idx])).to(device)
        for store, part in ((keys, 0), (values, 1)):
            if start == n_layers:  # intervention after the last layer: no keys/values to keep
                break
            stacked = torch.stack(
                [hf_compat.cached_keys_values(kv_cache, j)[part] for j in range(start, n_layers)]
            )
            # [layers, B, kv, W, d] -> [layers, B * W, kv, d]
            flat = stacked.transpose(2, 3).reshape(stacked.shape[0], -1, *stacked.shape[2:3], shape[-1])
            store.index_copy_(1, dst, flat.index_select(1, src))
        h = captured[-1]
        hidden.index_copy_(0, sdst, h.reshape(-1, h.shape[-1]).index_select(0, ssrc))
        if any(tails[i] for i in idx):  # every tail of every sequence of the batch: one pass, then gone
            tree = Tree.of([tails[i] for i in idx], pad_id)
            h = continue_with(model, start, tree, enc, kv_cache, cache_arg)
            src_, dst_ = [], []
            for r, i in enumerate(idx):
                after = s_off[i] + s_len[i]
                for path in tree.paths[r]:
                    src_.extend(r * h.shape[1] + np.asarray(path))
                    dst_.extend(after + np.arange(len(path)))
                    after += len(path)
            src_, dst_ = (torch.tensor(np.asarray(x, dtype=np.int64), device=device) for x in (src_, dst_))
            hidden.index_copy_(0, dst_, h.reshape(-1, h.shape[-1]).index_select(0, src_))
    return PrefixCache(start, keys, values, hidden, p_off, p_len, s_off, s_len + extra)


def continue_with(model, start: int, tree: Tree, enc, kv_cache, cache_arg) -> torch.Tensor:
    """The stream at point `start` [batch, nodes, hidden] of `tree`'s nodes after each sequence of the
    batch `enc` whose pass filled `kv_cache`: one pass that stops there (the layers above are not
    needed; the cache is left extended at the layers below, for no further use)."""
    captured: list[torch.Tensor] = []
    hook = capture(model, start, captured, stop=True)
    try:
        model.model(**tree.inputs(enc, model.dtype), use_cache=True, **{cache_arg: kv_cache})
    except Reached:
        pass
    finally:
        hook.remove()
    return captured[-1]


@torch.no_grad()
def build_residual(
    model, start: int, seqs, pad_id: int, batch_size: int = 16, progress: bool = True
) -> ResidualCache:
    """One no-grad pass over `seqs` (left-padded, longest first) up to point `start` only."""
    device = next(model.parameters()).device
    lengths = np.asarray([len(s) for s in seqs], dtype=np.int64)
    offset = offsets(lengths)
    hidden = torch.zeros((1 + int(lengths.sum()), model.config.hidden_size), dtype=model.dtype, device=device)
    captured: list[torch.Tensor] = []
    hook = capture(model, start, captured, stop=True)
    order = sorted(range(len(seqs)), key=lambda i: -len(seqs[i]))
    try:
        for b in tqdm(
            range(0, len(order), batch_size), desc="residual cache", unit="batch", disable=not progress
        ):
            idx = order[b : b + batch_size]
            enc = left_pad([seqs[i] for i in idx], pad_id, device)
            captured.clear()
            try:
                model.model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"],
                            position_ids=enc["position_ids"], use_cache=False)  # fmt: skip
            except Reached:
                pass
            h = captured[-1]
            width = h.shape[1]
            src = torch.from_numpy(rows(idx, width, [width - lengths[i] for i in idx], lengths[idx])).to(
                device
            )
            dst = torch.from_numpy(np.concatenate([offset[i] + np.arange(lengths[i]) for i in idx])).to(
                device
            )
            hidden.index_copy_(0, dst, h.reshape(-1, h.shape[-1]).index_select(0, src))
    finally:
        hook.remove()
    return ResidualCache(start, hidden, offset, lengths)
