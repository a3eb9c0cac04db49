"""The execution strategies: each trains on examples and scores prompts over one shared `Context`.

- `Stock`: the whole sequence through the model at every step (pyreft's IntervenableModel for
  ReFT, the peft model for LoRA, the plain model zero-shot), one backward per batch;
- `Cached`: the frozen prefix run once and stored (`prefix`, `store`), each step runs only the
  intervened suffix (`suffix.SuffixRunner`); a cache from a lower point serves a higher one;
- `Streamed`: exact like `Cached`, but each step runs its own examples' prefixes without grad
  first: memory of one step, no stored cache;
- `Residual`: first-token positions: the residual stream entering the lowest intervened layer is
  stored for every token and each step runs the whole sequence from there up.

`plan.choose` chooses among them; `Engine` runs the one it chose.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass

import numpy as np
import torch

from .. import hf_compat
from .loop import answer_targets, left_pad
from .loop import score as score_prompts
from .loop import train as train_loop
from .plan import SUPPORTED, Plan, max_bytes, train_inputs
from .prefix import Tree, as_trees, build, build_residual, own_tails
from .shards import Source, assemble, shape_of
from .store import obtain
from .suffix import FullRunner, SuffixRunner, advance, attention_implementation, continuation_sums


@dataclass
class Context:
    """What every strategy works on: the trained object and the method that built it (which says
    what trains, how a batch runs through it, where the frozen model and the interventions are),
    the intervention spec (parsed once), the trainer settings, and where caches go."""

    trained: object  # a pyreft ReftModel, a peft model, or the plain model
    method: object  # a methods.LanguageModelMethod
    spec: object  # spec.InterventionSpec
    trainer: object  # the trainer config
    pad_id: int
    device: object = "cpu"
    store: object = None  # a store.DiskStore, or None: memory only
    progress: bool = True
    answers: tuple = ()  # the task's answers but their last token: a scoring pass stores their stream too
    on_epoch: object = (
        None  # called with the epoch number after each epoch but the last (a search trial's report)
    )

    def __post_init__(self):
        # the attention the frozen model uses outside a strategy's own (which fits its steps only)
        self.attention = hf_compat.attention_in_use(self.model)

    @property
    def model(self):
        """The frozen causal LM under the interventions."""
        return self.method.frozen(self.trained)

    @contextlib.contextmanager
    def training(self):
        """Train mode for what trains (the frozen model itself stays in eval mode), eval mode after."""
        self.method.train_mode(self.trained, True)
        try:
            yield
        finally:
            self.method.train_mode(self.trained, False)

    def fit(self, examples, seed: int, step) -> dict:
        with self.training():
            return train_loop(self.method.trainable(self.trained), examples, self.trainer, seed, step,
                              self.progress, self.between_epochs if self.on_epoch else None)  # fmt: skip

    def between_epochs(self, epoch: int) -> None:
        """`on_epoch` in eval mode (it scores the validation split) and with the model's own attention
        (a strategy's attention for its steps, `suffix.grouped_attention`, is no causal full pass: a
        prefix built under it would be wrong), then train mode and the strategy's attention again."""
        import contextlib

        self.method.train_mode(self.trained, False)
        own = (hf_compat.attention_implementation(self.model, self.attention)
               if self.attention and hf_compat.attention_in_use(self.model) != self.attention
               else contextlib.nullcontext())  # fmt: skip
        try:
            with torch.no_grad(), own:
                self.on_epoch(epoch)
        finally:
            self.method.train_mode(self.trained, True)


def backward(loss_and_means) -> list[float]:
    total, per_batch = loss_and_means
    total.backward()
    return torch.stack(per_batch).tolist()


class Strategy:
    name = ""
    own_loglik = False  # whether `loglik` runs on this strategy (else on the stock path)

    def __init__(self, ctx: Context, plan: Plan | None = None):
        self.ctx, self.plan = ctx, plan or Plan(self.name)

    def train(self, examples, seed: int) -> tuple[dict, dict | None]:
        """Train on (prompt ids, answer ids) pairs: the loop's result and where a cache came from."""
        raise NotImplementedError

    def score(self, prompts, yes_id: int, no_id: int, batch_size: int) -> tuple[np.ndarray, dict | None]:
        """Yes-minus-No scores of `prompts` and where a cache came from."""
        raise NotImplementedError

    def loglik(self, prompts, continuations, batch_size: int) -> tuple[list[np.ndarray], dict | None]:
        """The log-likelihood of each of `continuations[i]` (token id lists) after `prompts[i]` (the sum
        over its tokens), and where a cache came from. Where a strategy has none of its own: the
        stock path's (exact for every method)."""
        return Stock(self.ctx).loglik(prompts, continuations, batch_size)


def pairs_of(continuations) -> list[tuple[int, int]]:
    """(prompt, continuation) index pairs of a loglik request, prompt by prompt."""
    return [(i, j) for i, conts in enumerate(continuations) for j in range(len(conts))]


def continues_from_keys(ctx) -> bool:
    """Whether the stock path's forward is the model's own (the plain model zero-shot, LoRA through
    peft: the method says so, `continues_from_keys`) and its decoder one the engine runs
    (plan.SUPPORTED), so that a prompt's keys/values serve each of its continuations. pyreft's
    IntervenableModel places its interventions by positions counted from the sequence it is given:
    its continuations run as whole sequences."""
    if not getattr(ctx.method, "continues_from_keys", False):
        return False
    base = hf_compat.base_model(ctx.model)
    layers = getattr(getattr(base, "model", None), "layers", None)
    return bool(layers) and type(layers[0]).__name__ in SUPPORTED and hasattr(base, "lm_head")


class Stock(Strategy):
    name = "stock"

    def logits(self, seqs, prompt_lens, k: int):
        ctx = self.ctx
        enc = left_pad(seqs, ctx.pad_id, ctx.device)
        return ctx.method.logits(ctx.trained, ctx.spec, enc, prompt_lens, k)

    def batch_loss(self, batch):
        """Mean cross-entropy of the answer tokens that follow each prompt."""
        k = max(len(a) for _, a in batch) + 1  # logits needed: last prompt token .. last answer token
        logits = self.logits([p + a for p, a in batch], [len(p) for p, _ in batch], k)[:, -k:-1].float()
        targets = answer_targets([a for _, a in batch], k - 1, right=True).to(logits.device)
        return torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1))

    def train(self, examples, seed):
        def step(group, denominator):
            out = []
            for idx in group:  # one backward per batch: memory of one batch at a time
                loss = self.batch_loss([examples[i] for i in idx])
                (loss * len(idx) / denominator).backward()
                out.append(loss.item())
            return out

        return self.ctx.fit(examples, seed, step), None

    def score(self, prompts, yes_id, no_id, batch_size):
        def last(idx):
            return self.logits([prompts[i] for i in idx], [len(prompts[i]) for i in idx], 1)[:, -1]

        lengths = [len(p) for p in prompts]
        return score_prompts(lengths, last, yes_id, no_id, batch_size, self.ctx.progress), None

    @torch.no_grad()
    def loglik(self, prompts, continuations, batch_size):
        """Each prompt run once and its continuations from its keys/values where the method's forward
        takes a KV cache (`continues_from_keys`); else each (prompt, continuation) a whole sequence."""
        if continues_from_keys(self.ctx):
            return self.loglik_from_keys(prompts, continuations, batch_size), None
        return self.loglik_whole(prompts, continuations, batch_size), None

    @torch.no_grad()
    def loglik_whole(self, prompts, continuations, batch_size: int) -> list[np.ndarray]:
        """Per prompt, the log-likelihood of each of its continuations, each (prompt, continuation)
        run as a whole sequence through the method's forward."""
        pairs = pairs_of(continuations)

        def sums(idx):
            batch = [(prompts[i], continuations[i][j]) for i, j in (pairs[k] for k in idx)]
            return continuation_logprobs(self.logits, batch)

        return loglik_loop(pairs, continuations, [len(prompts[i]) + len(continuations[i][j]) for i, j in pairs],
                           sums, batch_size, self.ctx.progress)  # fmt: skip

    def loglik_from_keys(self, prompts, continuations, batch_size: int) -> list[np.ndarray]:
        """Per prompt, the log-likelihood of each of its continuations: batches of prompts of similar
        length (longest first), each run once through the model's body with a KV cache, then every
        continuation (but its last token) of every prompt of the batch in one pass from those keys
        and values (`prefix.Tree`: the tokens continuations share computed once); the output layer
        only where a token is predicted (`suffix.continuation_sums`)."""
        from tqdm.auto import tqdm

        from .loop import check_batch_size

        ctx, batch_size = self.ctx, check_batch_size(batch_size)
        # the continuations run through the causal LM (LoRA's adapters sit inside it)
        base = hf_compat.base_model(ctx.model)
        body, cache_arg = base.model, hf_compat.cache_kwarg(base.model.forward)
        n = 1  # the suffix of a prompt here: its last token, then its continuations' tree
        out = [np.zeros(len(c)) for c in continuations]
        asked = sorted((i for i, c in enumerate(continuations) if len(c)), key=lambda i: -len(prompts[i]))
        for b in tqdm(range(0, len(asked), batch_size), desc="eval (options)", unit="batch",
                      disable=not ctx.progress):  # fmt: skip
            idx = asked[b : b + batch_size]
            enc = left_pad([prompts[i] for i in idx], ctx.pad_id, ctx.device)
            kv_cache = hf_compat.new_kv_cache(ctx.model.config)
            lens = [len(prompts[i]) for i in idx]  # the method's own pass (a ReFT's intervenes on the prompt)
            last = ctx.method.prompt_states(ctx.trained, ctx.spec, enc, lens, kv_cache, cache_arg)
            tree = Tree.of([[tuple(c[:-1]) for c in continuations[i]] for i in idx], ctx.pad_id)
            h = last
            if any(tree.paths[r][j] for r in range(len(idx)) for j in range(len(tree.paths[r]))):
                nodes = body(**tree.inputs(enc, ctx.model.dtype), use_cache=True, **{cache_arg: kv_cache})
                h = torch.cat([last, nodes.last_hidden_state], dim=1)
            paths = [[[n + u for u in path] for path in row] for row in tree.paths]
            conts = [[list(c) for c in continuations[i]] for i in idx]
            for i, sums in zip(
                idx, continuation_sums(base.lm_head, h, range(len(idx)), n, conts, paths), strict=True
            ):
                out[i] = sums
        return out


def continuation_logprobs(logits_of, batch) -> torch.Tensor:
    """Each (prompt, continuation) pair's summed log-probability of the continuation's tokens, from
    `logits_of(seqs, prompt_lens, k)`: the logits of the last k positions of the left-padded batch."""
    k = max(len(c) for _, c in batch) + 1  # the last prompt token predicts the first continuation token
    logits = logits_of([p + c for p, c in batch], [len(p) for p, _ in batch], k)[:, -k:-1].float()
    targets = answer_targets([c for _, c in batch], k - 1, right=True).to(logits.device)
    logp = torch.log_softmax(logits, dim=-1).gather(-1, targets.clamp(min=0)[..., None])[..., 0]
    return torch.where(targets != -100, logp, 0.0).sum(-1)


def loglik_loop(pairs, continuations, lengths, sums, batch_size: int, progress: bool) -> list[np.ndarray]:
    """Per prompt, the log-likelihood of each of its continuations: `sums(indices into pairs)` for
    batches of pairs of similar length, longest first."""
    from tqdm.auto import tqdm

    from .loop import check_batch_size

    batch_size = check_batch_size(batch_size)
    out = [np.full(len(c), np.nan) for c in continuations]
    order = sorted(range(len(pairs)), key=lambda k: -lengths[k])
    for b in tqdm(
        range(0, len(order), batch_size), desc="eval (options)", unit="batch", disable=not progress
    ):
        idx = order[b : b + batch_size]
        for k, value in zip(idx, sums(idx).cpu().numpy(), strict=True):
            i, j = pairs[k]
            out[i][j] = value
    return out


class Cached(Strategy):
    name = "cached"
    own_loglik = True

    def prepare(self, prompts, tails, batch_size: int):
        """A SuffixRunner and the cache for these prompts, each followed by its tail (training: the
        answer but its last token; scoring: none): from memory, the store, or built, then advanced
        to the job's point when a lower one served it; and where it came from."""
        ctx, plan = self.ctx, self.plan
        runner = SuffixRunner(ctx.model, ctx.spec, ctx.method.interventions(ctx.trained))
        cache, source, seconds = obtain(
            ctx.model, runner.start, prompts, ctx.spec.last, tails, ctx.pad_id, ctx.store, batch_size, ctx.progress,
            build_at=plan.build_at, answers=ctx.answers, max_bytes=max_bytes(ctx.trainer),
        )  # fmt: skip
        info = {"source": source, "mb": cache.nbytes / 2**20, "from_point": cache.start,
                "built": cache.meta.get("built"), "reused": cache.meta.get("reused")}  # fmt: skip
        if cache.start != runner.start:
            t0 = time.perf_counter()
            cache = advance(ctx.model, cache, runner.start, batch_size)
            seconds += time.perf_counter() - t0
        return runner, cache, {**info, "seconds": seconds}

    def train(self, examples, seed):
        prompts, tails = [p for p, _ in examples], [a[:-1] for _, a in examples]
        runner, cache, info = self.prepare(prompts, tails, self.ctx.trainer.eval_batch_size)
        answers = [a for _, a in examples]

        def step(group, denominator):
            return backward(runner.step_loss(cache, group, answers, denominator))

        with attention_implementation(self.ctx.model):
            return self.ctx.fit(examples, seed, step), info

    def score(self, prompts, yes_id, no_id, batch_size):
        runner, cache, info = self.prepare(prompts, [()] * len(prompts), batch_size)
        with attention_implementation(self.ctx.model):
            last = lambda idx: runner.last_logits(cache, np.asarray(idx))  # noqa: E731
            scores = score_prompts(list(cache.prefix_len), last, yes_id, no_id, batch_size, progress=False)
        return scores, info

    @torch.no_grad()
    def loglik(self, prompts, continuations, batch_size):
        """From the prompts' stored prefix (each prompt built once, with the stream of each of its
        continuations but their last tokens), each prompt's last n tokens and the tree of its
        continuations run once (`prefix.as_trees`)."""
        pairs = pairs_of(continuations)
        if not pairs:
            return [np.zeros(0) for _ in continuations], None
        runner, cache, info = self.prepare([prompts[i] for i, _ in pairs],
                                           [continuations[i][j][:-1] for i, j in pairs], batch_size)  # fmt: skip
        return tree_loglik(self.ctx, runner, cache, continuations, batch_size), info


def tree_loglik(ctx, runner, cache, continuations, batch_size: int) -> list[np.ndarray]:
    """Per prompt, the log-likelihood of each of its continuations from `cache`, which holds one entry
    per (prompt, continuation) pair in `pairs_of` order (its last n tokens, then the continuation but
    its last token): one tree per prompt (`prefix.as_trees`), batches of prompts of similar length."""
    from .loop import check_batch_size

    batch_size = check_batch_size(batch_size)
    asked = [i for i, c in enumerate(continuations) if len(c)]
    ends = np.cumsum([0, *(len(continuations[i]) for i in asked)])
    entries = [list(range(a, b)) for a, b in zip(ends[:-1], ends[1:], strict=True)]
    runs = [[tuple(c[:-1]) for c in continuations[i]] for i in asked]
    trees, parents, paths = as_trees(cache, entries, runs, ctx.spec.last)
    conts = [[list(c) for c in continuations[i]] for i in asked]
    out = [np.zeros(len(c)) for c in continuations]
    order = sorted(range(len(asked)), key=lambda k: -int(trees.prefix_len[k] + trees.suffix_len[k]))
    with attention_implementation(ctx.model):
        for b in range(0, len(order), batch_size):
            idx = order[b : b + batch_size]
            for k, sums in zip(idx, runner.loglik(trees, idx, parents, conts, paths), strict=True):
                out[asked[k]] = sums
    return out


class Streamed(Strategy):
    name = "streamed"
    own_loglik = True

    def mini_cache(self, seqs, suffix_lens, tails=()):
        """A prefix cache for one step's (or one eval batch's) sequences: one no-grad pass over them."""
        ctx = self.ctx
        return build(ctx.model, self.plan.point, seqs, suffix_lens, ctx.pad_id, len(seqs), False, tails)

    def runner(self) -> SuffixRunner:
        return SuffixRunner(self.ctx.model, self.ctx.spec, self.ctx.method.interventions(self.ctx.trained))

    def train(self, examples, seed):
        seqs, suffix = train_inputs(examples, self.ctx.spec.last)
        runner, prefix_seconds = self.runner(), [0.0]

        def step(group, denominator):
            idx = [i for g in group for i in g]
            t0 = time.perf_counter()
            mini = self.mini_cache([seqs[i] for i in idx], [suffix[i] for i in idx])
            prefix_seconds[0] += time.perf_counter() - t0
            local, first = [], 0
            for g in group:
                local.append(list(range(first, first + len(g))))
                first += len(g)
            with attention_implementation(self.ctx.model):
                return backward(runner.step_loss(mini, local, [examples[i][1] for i in idx], denominator))

        result = self.ctx.fit(examples, seed, step)
        return result, {"source": "streamed", "seconds": 0.0, "mb": 0.0, "from_point": runner.start,
                        "prefix_seconds": prefix_seconds[0]}  # fmt: skip

    def score(self, prompts, yes_id, no_id, batch_size):
        runner, n = self.runner(), self.ctx.spec.last

        def last(idx):
            mini = self.mini_cache([prompts[i] for i in idx], [n] * len(idx))
            with attention_implementation(self.ctx.model):
                return runner.last_logits(mini, np.arange(len(idx)))

        lengths = [len(p) for p in prompts]
        return score_prompts(
            lengths, last, yes_id, no_id, batch_size, self.ctx.progress, "eval (streamed)"
        ), None

    @torch.no_grad()
    def loglik(self, prompts, continuations, batch_size):
        """Batches of prompts, each run once without grad with the streams of its continuations; then
        the prompts' trees of continuations from that pass, as `Cached.loglik` does."""
        from tqdm.auto import tqdm

        from .loop import check_batch_size

        runner, n, batch_size = self.runner(), self.ctx.spec.last, check_batch_size(batch_size)
        out = [np.zeros(len(c)) for c in continuations]
        order = sorted((i for i, c in enumerate(continuations) if len(c)), key=lambda i: -len(prompts[i]))
        for b in tqdm(range(0, len(order), batch_size), desc="eval (streamed options)", unit="batch",
                      disable=not self.ctx.progress):  # fmt: skip
            idx = order[b : b + batch_size]
            tails = [[tuple(c[:-1]) for c in continuations[i]] for i in idx]
            mini = self.mini_cache([prompts[i] for i in idx], [n] * len(idx), tails)
            source = Source.of_cache(mini, own_tails(tails, len(idx)))
            parts = [(source, pos, tail) for pos, row in enumerate(tails) for tail in row]
            pairs = assemble(parts, n, shape_of(self.ctx.model))
            found = tree_loglik(self.ctx, runner, pairs, [continuations[i] for i in idx], batch_size)
            for i, sums in zip(idx, found, strict=True):
                out[i] = sums
        return out, None


class Residual(Strategy):
    name = "residual"

    def prepare(self, seqs, batch_size):
        ctx = self.ctx
        runner = FullRunner(ctx.model, ctx.spec, ctx.method.interventions(ctx.trained))
        t0 = time.perf_counter()
        cache = build_residual(ctx.model, runner.start, seqs, ctx.pad_id, batch_size, ctx.progress)
        info = {"source": "built", "seconds": time.perf_counter() - t0, "mb": cache.nbytes / 2**20,
                "from_point": runner.start}  # fmt: skip
        return runner, cache, info

    def train(self, examples, seed):
        seqs = [p + a[:-1] for p, a in examples]
        runner, cache, info = self.prepare(seqs, self.ctx.trainer.eval_batch_size)

        def step(group, denominator):
            return backward(runner.step_loss(cache, group, examples, denominator))

        return self.ctx.fit(examples, seed, step), info

    def score(self, prompts, yes_id, no_id, batch_size):
        runner, cache, info = self.prepare(prompts, batch_size)
        last = lambda idx: runner.last_logits(cache, idx, [len(prompts[i]) for i in idx])  # noqa: E731
        return score_prompts([len(p) for p in prompts], last, yes_id, no_id, batch_size, progress=False), info


BY_NAME = {cls.name: cls for cls in (Stock, Cached, Streamed, Residual)}
