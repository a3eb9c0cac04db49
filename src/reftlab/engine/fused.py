"""Fused training: several jobs that share one stored prefix train together, one pass per step.

Members are ReFT jobs on the same frozen model and the same training examples (same tokens, so one
prefix cache serves them all), each with its own interventions (any layers at or above the cache's
point, any rank, variant, seed, learning rate, number of epochs). Each step stacks the suffix rows
of every member's batches and runs the frozen layers over them once; each member's interventions
act on its own rows at its own points (a member whose lowest layer is higher gets none below it:
the frozen layers there compute what `suffix.advance` would). One backward serves all members
(their parameters are disjoint); each keeps its own batches, optimizer and schedule (`loop.Schedule`)
and drops out when its steps are done. A member whose loss stops being a number fails alone.

Scoring is fused too, for any task: `GroupScorer` is the scorer a task scores through (`yes_no`,
`loglik`), each call one pass over the stored prompts for every member; each member's answers are
replayed to its own job's engine (`Recorded`), which asks the same questions.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass, field

import numpy as np
import torch
from tqdm.auto import tqdm

from .loop import Schedule, answer_loss, answer_targets, check_batch_size, step_means
from .plan import POINT_OFFSET, start_point
from .prefix import as_trees
from .suffix import (
    attention_implementation,
    continuation_sums,
    intervene,
    last_prompt_tokens,
    points,
    suffix_states,
)


@dataclass
class Member:
    """One job of a fused group: its context (trained interventions, method, spec, trainer settings)
    and its seed; after training, its losses and steps, or the error that stopped it."""

    ctx: object  # strategies.Context
    seed: int
    losses: list = field(default_factory=list)
    steps: int = 0
    error: BaseException | None = None

    def __post_init__(self):
        spec = self.ctx.spec
        self.at = points(spec, self.ctx.method.interventions(self.ctx.trained))
        self.n_pos, self.start = spec.last, start_point(spec)


def compatible(members) -> str | None:
    """None if these members can train fused on one cache, else why not."""
    first = members[0].ctx
    for m in members:
        spec = m.ctx.spec
        if m.ctx.model is not first.model:
            return "members must share the frozen model"
        if spec.first or spec.component not in POINT_OFFSET:
            return f"positions={spec.positions}, component={spec.component}: not a prefix-cache setting"
        if spec.last != first.spec.last:
            return f"positions={spec.positions}: every member needs the same l<n> as {first.spec.positions}"
    return None


def stacked(members, sizes: list[int], device):
    """`apply(h, point)` for rows stacked member by member (`sizes[j]` rows of member j): each
    member's interventions act on its own rows only; and the rows' bounds."""
    bounds = np.cumsum([0, *sizes])
    wheres = [last_prompt_tokens(m.at, m.n_pos, n, device) for m, n in zip(members, sizes, strict=True)]
    acting = {p for m in members for p in m.at}

    def apply(h, point):
        if point not in acting:
            return h
        return torch.cat([intervene(h[lo:hi], m.at, point, w) if point in m.at else h[lo:hi]
                          for m, w, lo, hi in zip(members, wheres, bounds[:-1], bounds[1:], strict=True)])  # fmt: skip

    return apply, bounds


def step_rows(body, cache, members, groups, answers):
    """One pass over the stacked suffix rows of every member's step: each member's (loss, batch means)."""
    idx = np.concatenate([np.concatenate([np.asarray(g) for g in group]) for group in groups])
    apply, bounds = stacked(members, [sum(len(g) for g in group) for group in groups], cache.hidden.device)
    h, _ = suffix_states(body, cache, idx, len(body.layers), apply)
    first = members[0].n_pos - 1  # the last prompt token predicts the first answer token
    targets = answer_targets([answers[i] for i in idx], h.shape[1] - first, right=False)
    ce = answer_loss(members[0].ctx.model.lm_head, body.norm(h)[:, first:], targets)
    return [step_means(ce[lo:hi], targets[lo:hi], group, m.schedule.denominator)
            for m, group, lo, hi in zip(members, groups, bounds[:-1], bounds[1:], strict=True)]  # fmt: skip


def train(members: list[Member], cache, examples, progress: bool = True) -> float:
    """Train every member on `examples` from `cache` (a PrefixCache at or below every member's point);
    returns the group's wall-clock seconds. Each member's result lands on it (losses, steps, error)."""
    reason = compatible(members)
    if reason:
        raise ValueError(f"these jobs cannot train fused: {reason}")
    if any(m.start < cache.start for m in members):
        raise ValueError(f"the prefix cache starts at point {cache.start}, above a member's interventions")
    model = members[0].ctx.model
    answers = [a for _, a in examples]
    for m in members:
        m.schedule = Schedule(m.ctx.method.trainable(m.ctx.trained), examples, m.ctx.trainer, m.seed)
        m.ctx.method.train_mode(m.ctx.trained, True)
    start = time.perf_counter()
    bar = tqdm(total=max(m.schedule.total for m in members), desc=f"train x{len(members)}", unit="step",
               disable=not progress)  # fmt: skip
    try:
        with attention_implementation(model):
            while True:
                active, groups = [], []
                for m in members:
                    group = m.schedule.next_group() if m.error is None else None
                    if group is not None:
                        active.append(m)
                        groups.append(group)
                if not active:
                    break
                results = step_rows(model.model, cache, active, groups, answers)
                sum(total for total, _ in results).backward()
                for m, (_, per_batch) in zip(active, results, strict=True):
                    try:
                        m.schedule.finish(torch.stack(per_batch).tolist())
                    except Exception as e:  # diverged: this member fails alone
                        m.error = e
                        m.schedule.optimizer.zero_grad(set_to_none=True)
                bar.update(1)
    finally:
        bar.close()
        for m in members:
            m.ctx.method.train_mode(m.ctx.trained, False)
            m.losses, m.steps = m.schedule.losses, m.schedule.done
    return time.perf_counter() - start


@torch.no_grad()
def score(members: list[Member], cache, yes_id: int, no_id: int, batch_size: int = 16) -> list[np.ndarray]:
    """Yes-minus-No scores of every cached prompt for every member, each batch of prompts run once
    for all members (their rows stacked)."""
    batch_size = check_batch_size(batch_size)
    model = members[0].ctx.model
    body = model.model
    n = len(cache.prefix_len)
    order = sorted(range(n), key=lambda i: -int(cache.prefix_len[i]))
    out = [np.zeros(n, dtype=np.float64) for _ in members]
    with attention_implementation(model):
        for b in range(0, n, batch_size):
            idx = np.asarray(order[b : b + batch_size])
            apply, bounds = stacked(members, [len(idx)] * len(members), cache.hidden.device)
            h, s = suffix_states(body, cache, np.tile(idx, len(members)), len(body.layers), apply)
            h = body.norm(h)
            last = torch.from_numpy(s - 1).to(h.device)
            logits = model.lm_head(h[torch.arange(len(last), device=h.device), last]).float()
            for j, (lo, hi) in enumerate(zip(bounds[:-1], bounds[1:], strict=True)):
                out[j][idx] = (logits[lo:hi, yes_id] - logits[lo:hi, no_id]).cpu().numpy()
    return out


@torch.no_grad()
def loglik(members: list[Member], cache, continuations, batch_size: int = 16) -> list[list[np.ndarray]]:
    """For every member, per prompt, the summed log-probability of each of `continuations[i]` after
    it, from `cache` (one entry per (prompt, continuation) pair, as `strategies.Cached.loglik` asks
    for it): each prompt's tree of continuations (`prefix.as_trees`), each batch of prompts run once
    for all members (their rows stacked)."""
    batch_size = check_batch_size(batch_size)
    model = members[0].ctx.model
    body, n = model.model, members[0].n_pos
    asked = [i for i, c in enumerate(continuations) if len(c)]
    ends = np.cumsum([0, *(len(continuations[i]) for i in asked)])
    entries = [list(range(a, b)) for a, b in zip(ends[:-1], ends[1:], strict=True)]
    trees, parents, paths = as_trees(
        cache, entries, [[tuple(c[:-1]) for c in continuations[i]] for i in asked], n
    )
    conts = [[list(c) for c in continuations[i]] for i in asked]
    out = [[np.zeros(len(c)) for c in continuations] for _ in members]
    order = sorted(range(len(asked)), key=lambda k: -int(trees.prefix_len[k] + trees.suffix_len[k]))
    with attention_implementation(model):
        for b in range(0, len(order), batch_size):
            idx = order[b : b + batch_size]
            rows = np.tile(idx, len(members))
            apply, bounds = stacked(members, [len(idx)] * len(members), cache.hidden.device)
            h, _ = suffix_states(body, trees, rows, len(body.layers), apply, [parents[k] for k in rows])
            sums = continuation_sums(model.lm_head, body.norm(h), rows, n, conts, paths)
            for j, lo in enumerate(bounds[:-1]):
                for k, found in zip(idx, sums[lo : lo + len(idx)], strict=True):
                    out[j][asked[k]] = found
    return out


def request_key(kind: str, *parts) -> str:
    """A name for one scoring request (its kind and its token ids), to match a member's recorded
    answer with its job's own request."""
    text = json.dumps([kind, *parts], default=lambda x: np.asarray(x).tolist())
    return hashlib.sha256(text.encode()).hexdigest()[:24]


@dataclass
class Recorded:
    """One member's answers to its group's scoring requests, by request: its job's engine takes each
    when it asks the same request (`Engine.yes_no`, `Engine.loglik`)."""

    answers: dict = field(default_factory=dict)  # request_key -> the answer

    def take(self, key: str):
        return self.answers.pop(key, None)


class GroupScorer:
    """The scorer a task scores a fused group through (`tasks.Task.score`): each request runs once for
    every member, over the prompts' stored prefix (`obtain(prompts, tails)` -> (cache, source)), and
    returns the first member's answer; `recorded(j)` is member j's answers."""

    def __init__(self, members: list[Member], obtain):
        self.members, self.obtain = members, obtain
        self.records = [Recorded() for _ in members]
        self.source, self.built = None, 0  # where the scored prompts' caches came from, how many built

    def keep(self, key: str, answers: list, cache, source: str):
        for record, answer in zip(self.records, answers, strict=True):
            record.answers[key] = answer
        self.source, self.built = source, self.built + int(cache.meta.get("built") or 0)
        return answers[0]

    def yes_no(self, prompts, yes_id: int, no_id: int, batch_size: int = 16):
        cache, source = self.obtain(prompts, [()] * len(prompts))
        answers = score(self.members, cache, yes_id, no_id, batch_size)
        return self.keep(request_key("yes_no", prompts, yes_id, no_id), answers, cache, source)

    def loglik(self, prompts, continuations, batch_size: int = 16):
        pairs = [(i, list(c)) for i, conts in enumerate(continuations) for c in conts]
        cache, source = self.obtain([prompts[i] for i, _ in pairs], [c[:-1] for _, c in pairs])
        answers = loglik(self.members, cache, continuations, batch_size)
        return self.keep(request_key("loglik", prompts, continuations), answers, cache, source)

    def recorded(self, j: int) -> Recorded:
        return self.records[j]


@dataclass
class Costs:
    """What a fused group's pass cost, once for all its members."""

    cache_seconds: float  # obtaining the training cache (built, read from disk, or from memory)
    step_seconds: float  # the fused optimisation steps
    peak_memory_mb: float  # over the cache pass and the steps
    cache_source: str
    cache_built: int | None  # training examples run through the frozen model
    eval_source: str | None  # None: the group did not score (its members score on their own)
    eval_built: int | None  # scored prompts run through the frozen model


@dataclass
class Result:
    """What a fused group hands each member's job: the trained intervention weights, the losses,
    the scores of the job's texts, and the group's costs."""

    state: list  # each intervention's state_dict, in `spec.slots` order
    losses: list
    steps: int
    scores: Recorded | np.ndarray | None  # its answers to the group's scoring (an array: Yes/No scores)
    group: str  # the group's id
    size: int
    costs: Costs
    cache_point: int
    cache_mb: float
    error: BaseException | None = None

    def adopt(self, ctx):
        """Load the weights into the job's freshly built interventions; its TrainResult: its share of
        the group's cache pass and steps (the shares add up to the group's), the group's peak memory
        and cache source."""
        from .result import TrainResult

        if self.error is not None:
            raise type(self.error)(f"{self.error} (trained in fused group {self.group} of {self.size} jobs)")
        for iv, state in zip(ctx.method.interventions(ctx.trained), self.state, strict=True):
            iv.load_state_dict(state)
        c = self.costs
        metrics = {"fused_group_seconds": c.cache_seconds + c.step_seconds, "fused_size": self.size}
        if c.cache_built is not None:
            metrics["cache_built_examples"] = c.cache_built
        return TrainResult(
            losses=self.losses, steps=self.steps, step_seconds=c.step_seconds / self.size,
            cache_seconds=c.cache_seconds / self.size, peak_memory_mb=c.peak_memory_mb, path="cached",
            reason=f"fused with {self.size - 1} other job(s) of the sweep on one prefix cache",
            cache_source=c.cache_source, cache_mb=self.cache_mb, cache_point=self.cache_point,
            tags={"fused_group": self.group, "fused_size": str(self.size)}, metrics=metrics,
        )  # fmt: skip

    def answer(self, kind: str, key: str, prompts):
        """The job's answer to its scoring request `key` (a `kind` request of `prompts`) from the
        group's pass, or None: the job scores on its own."""
        if isinstance(self.scores, Recorded):
            return self.scores.take(key)
        if self.scores is not None and kind == "yes_no" and len(self.scores) == len(prompts):
            return self.scores  # the group's Yes/No scores of the job's prompts
        return None

    @property
    def eval_info(self) -> dict | None:
        """Where the group's scoring cache came from, as `Engine.eval_info` says it for a solo job."""
        if self.costs.eval_source is None:
            return None
        return {"source": self.costs.eval_source, "built": self.costs.eval_built}


_RESULTS: dict[str, Result] = {}  # a fused group's results, by job key, until each job takes its own
_MODELS: dict[str, tuple] = {}  # the group's loaded frozen model, by job key, until each job has taken it


def offer(key: str, result: Result, loaded: tuple | None = None) -> None:
    """Hand the job `key` its fused result and, if given, the group's loaded (model, tokenizer,
    device, dtype): a ReFT job only wraps the frozen model, so its job needs no load of its own."""
    _RESULTS[key] = result
    if loaded is not None:
        _MODELS[key] = loaded


def take(key: str) -> Result | None:
    """The fused result of the job `key` (once), or None: the job trains on its own."""
    return _RESULTS.pop(key, None) if key else None


def take_model(key: str) -> tuple | None:
    """The group's loaded model for the job `key` (once), or None: the job loads its own. The last
    member to take it leaves no reference behind, so the group's model is freed with its last job."""
    return _MODELS.pop(key, None) if key else None
