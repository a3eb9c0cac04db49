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

from .loop import answer_targets, left_pad
from .loop import score as score_prompts
from .loop import train as train_loop
from .plan import Plan, max_bytes, train_inputs
from .prefix import build, build_residual, own_tails
from .shards import Source, assemble, shape_of
from .store import obtain
from .suffix import FullRunner, SuffixRunner, advance, attention_implementation


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
            return train_loop(
                self.method.trainable(self.trained), examples, self.trainer, seed, step, self.progress
            )


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


def continues_from_keys(method) -> bool:
    """Whether a method's stock forward is the model's own (the plain model zero-shot, LoRA through
    peft: `LanguageModelMethod.logits` as it is), so that a prompt's keys/values serve each of its
    continuations. pyreft's IntervenableModel places its interventions by positions counted from
    the sequence it is given: its continuations run as whole sequences."""
    from ..methods.base import LanguageModelMethod

    return getattr(type(method), "logits", None) is LanguageModelMethod.logits


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
        if continues_from_keys(self.ctx.method):
            return self.loglik_from_keys(prompts, continuations, batch_size), None
        pairs = pairs_of(continuations)

        def sums(idx):
            batch = [(prompts[i], continuations[i][j]) for i, j in (pairs[k] for k in idx)]
            return continuation_logprobs(self.logits, batch)

        return loglik_loop(pairs, continuations, [len(prompts[i]) + len(continuations[i][j]) for i, j in pairs],
                           sums, batch_size, self.ctx.progress), None  # fmt: skip

    def loglik_from_keys(self, prompts, continuations, batch_size: int) -> list[np.ndarray]:
        """Per prompt, the log-likelihood of each of its continuations: batches of prompts of similar
        length (longest first), each run once through the trained model with a KV cache; then the
        j-th continuation (but its last token) of every prompt of the batch in one short pass from
        those keys/values, which are cut back after it."""
        from tqdm.auto import tqdm

        from .. import hf_compat
        from .loop import check_batch_size

        ctx, batch_size = self.ctx, check_batch_size(batch_size)
        base = ctx.trained.get_base_model() if hasattr(ctx.trained, "get_base_model") else ctx.trained
        cache_arg = hf_compat.cache_kwarg(base.forward)
        out = [np.full(len(c), np.nan) for c in continuations]
        order = sorted(range(len(prompts)), key=lambda i: -len(prompts[i]))
        for b in tqdm(range(0, len(order), batch_size), desc="eval (options)", unit="batch",
                      disable=not ctx.progress):  # fmt: skip
            idx = order[b : b + batch_size]
            enc = left_pad([prompts[i] for i in idx], ctx.pad_id, ctx.device)
            kv_cache = hf_compat.new_kv_cache(ctx.model.config)
            first = ctx.trained(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"],
                                position_ids=enc["position_ids"], use_cache=True, logits_to_keep=1,
                                **{cache_arg: kv_cache}).logits[:, -1:]  # fmt: skip
            for j in range(max(len(continuations[i]) for i in idx)):
                conts = [continuations[i][j] if j < len(continuations[i]) else [] for i in idx]
                sums = self.continue_from_keys(enc, kv_cache, cache_arg, first, conts)
                for i, value in zip(idx, sums.cpu().numpy(), strict=True):
                    if j < len(continuations[i]):
                        out[i][j] = value
        return out

    def continue_from_keys(self, enc, kv_cache, cache_arg, first, conts) -> torch.Tensor:
        """The summed log-probability of `conts[r]` after row r of the prompt batch `enc`, whose pass
        filled `kv_cache` and gave the logits `first` [B, 1, vocab] of its last tokens."""
        ctx, width = self.ctx, max(len(c) for c in conts)
        logits = first
        if width > 1:  # the continuations but their last tokens, right-padded (a causal model's real
            ids = torch.full((len(conts), width - 1), ctx.pad_id, dtype=torch.long)  # tokens never see it)
            for r, c in enumerate(conts):
                ids[r, : max(len(c) - 1, 0)] = torch.tensor(list(c[:-1]), dtype=torch.long)
            ids = ids.to(ctx.device)
            mask = torch.cat([enc["attention_mask"], torch.ones_like(ids)], dim=1)
            positions = enc["position_ids"][:, -1:] + 1 + torch.arange(width - 1, device=ctx.device)
            more = ctx.trained(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=True,
                               **{cache_arg: kv_cache}).logits  # fmt: skip
            kv_cache.crop(-(width - 1))  # a negative count removes tokens in transformers 4.x and 5.x alike
            logits = torch.cat([first, more], dim=1)
        targets = answer_targets([list(c) for c in conts], width, right=False).to(logits.device)
        logp = torch.log_softmax(logits.float(), dim=-1).gather(-1, targets.clamp(min=0)[..., None])[..., 0]
        return torch.where(targets != -100, logp, 0.0).sum(-1)


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
        """One cache entry per (prompt, continuation) pair: the prompt's stored prefix (each prompt
        built once, its keys/values not copied per continuation) and the continuation's stream."""
        pairs = pairs_of(continuations)
        if not pairs:
            return [np.zeros(0) for _ in continuations], None
        conts = [list(continuations[i][j]) for i, j in pairs]
        runner, cache, info = self.prepare(
            [prompts[i] for i, _ in pairs], [c[:-1] for c in conts], batch_size
        )
        with attention_implementation(self.ctx.model):
            sums = lambda idx: runner.loglik(cache, idx, [conts[k] for k in idx])  # noqa: E731
            lengths = list(cache.prefix_len + cache.suffix_len)
            return loglik_loop(pairs, continuations, lengths, sums, batch_size, progress=False), info


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
        every (prompt, continuation) pair of the batch from that pass, as `Cached.loglik` does."""
        from tqdm.auto import tqdm

        from .loop import check_batch_size

        runner, n, batch_size = self.runner(), self.ctx.spec.last, check_batch_size(batch_size)
        out = [np.full(len(c), np.nan) for c in continuations]
        order = sorted(range(len(prompts)), key=lambda i: -len(prompts[i]))
        for b in tqdm(range(0, len(order), batch_size), desc="eval (streamed options)", unit="batch",
                      disable=not self.ctx.progress):  # fmt: skip
            idx = order[b : b + batch_size]
            tails = [[tuple(c[:-1]) for c in continuations[i]] for i in idx]
            mini = self.mini_cache([prompts[i] for i in idx], [n] * len(idx), tails)
            source = Source.of_cache(mini, own_tails(tails, len(idx)))
            parts = [(source, pos, tuple(c[:-1])) for pos, i in enumerate(idx) for c in continuations[i]]
            if not parts:
                continue
            cache = assemble(parts, n, shape_of(self.ctx.model))
            with attention_implementation(self.ctx.model):
                sums = runner.loglik(
                    cache, np.arange(len(parts)), [list(c) for i in idx for c in continuations[i]]
                )
            values = iter(sums.cpu().numpy())
            for i in idx:
                out[i][:] = [next(values) for _ in continuations[i]]
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
