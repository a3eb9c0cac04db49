"""First-token positions (`f<n>`, `f<n>+l<n>`) without the stock path's cost below the intervention.

An intervention on the first prompt tokens at layer L changes every later token above L, so no
keys/values above L can be stored; but nothing below L changes. One no-grad pass that stops at
the lowest intervention point stores the residual stream there for every token; each training
step then runs the whole sequence through the layers from that point up only (with grad, the
model's own attention: sdpa), with pyreft's intervention modules applied where pyvene applies
them (the same first/last positions).
The layers below L never run again, in training nor in evaluation.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import torch
from tqdm.auto import tqdm

from . import hf_compat, reft
from .spec import InterventionSpec, unit_locations


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


def estimate_bytes(model, seqs) -> int:
    return (1 + sum(len(s) for s in seqs)) * model.config.hidden_size * (torch.finfo(model.dtype).bits // 8)


class _Reached(Exception):
    """Raised by the capture hook: the pass has reached the point, the layers above are not needed."""


@torch.no_grad()
def build(model, start: int, seqs, pad_id: int, batch_size: int = 16, progress: bool = True) -> ResidualCache:
    """One no-grad pass over `seqs` (left-padded, longest first) up to point `start` only."""
    from .training import left_pad

    device = next(model.parameters()).device
    lengths = np.asarray([len(s) for s in seqs], dtype=np.int64)
    offset = 1 + np.concatenate([[0], np.cumsum(lengths)[:-1]])
    hidden = torch.zeros((1 + int(lengths.sum()), model.config.hidden_size), dtype=model.dtype, device=device)
    layers = model.model.layers
    captured = []

    def pre(module, args, kwargs):
        captured.append(args[0] if args else kwargs["hidden_states"])
        raise _Reached

    def post(module, args, output):
        captured.append(hf_compat.layer_output(output))

    hook = (layers[start].register_forward_pre_hook(pre, with_kwargs=True) if start < len(layers)
            else layers[-1].register_forward_hook(post))  # fmt: skip
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
            except _Reached:
                pass
            h = captured[-1]
            width = h.shape[1]
            src = np.concatenate(
                [row * width + width - lengths[i] + np.arange(lengths[i]) for row, i in enumerate(idx)]
            )
            dst = np.concatenate([offset[i] + np.arange(lengths[i]) for i in idx])
            hidden.index_copy_(0, torch.from_numpy(dst).to(device),
                               h.reshape(-1, h.shape[-1]).index_select(0, torch.from_numpy(src).to(device)))  # fmt: skip
    finally:
        hook.remove()
    return ResidualCache(start, hidden, offset, lengths)


class FullRunner:
    """Runs whole cached sequences from the lowest intervention point up, with the interventions."""

    def __init__(self, reft_model, spec):
        from .cached import POINT_OFFSET

        self.base = reft_model.model
        self.body = self.base.model
        self.spec = InterventionSpec.of(spec, self.base.config.num_hidden_layers)
        offset = POINT_OFFSET[self.spec.component]
        self.at: dict[int, list] = {}
        for slot, ((layer, _), iv) in enumerate(
            zip(self.spec.slots, reft.interventions(reft_model), strict=True)
        ):
            self.at.setdefault(layer + offset, []).append((slot, iv))
        self.start = min(self.at)

    def hidden(self, cache: ResidualCache, idx, prompt_lens) -> torch.Tensor:
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
        rows = unit_locations(self.spec, list(prompt_lens), starts.tolist())["sources->base"][1]
        where = [self._index(r, device) for r in rows]
        embeddings = hf_compat.rotary(self.body, h, positions)
        for j in range(self.start, len(self.body.layers)):
            h = self._intervene(h, j, where)
            out = self.body.layers[j](h, attention_mask=mask, position_ids=positions,
                                      position_embeddings=embeddings)  # fmt: skip
            h = hf_compat.layer_output(out)
        h = self._intervene(h, len(self.body.layers), where)
        return self.body.norm(h)

    @staticmethod
    def _index(rows, device):
        width = max(len(r) for r in rows)
        # a short prompt has fewer positions: repeat its last one (the same token, intervened once)
        return torch.tensor([r + [r[-1]] * (width - len(r)) for r in rows], dtype=torch.long, device=device)

    def _intervene(self, h, point, where):
        for slot, iv in self.at.get(point, ()):
            index = where[slot][..., None].expand(-1, -1, h.shape[-1])
            h = h.scatter(1, index, iv(h.gather(1, index)))
        return h

    def step_loss(self, cache, groups, examples, denominator):
        """As `cached.SuffixRunner.step_loss`: all batches of a step in one pass."""
        idx = [i for g in groups for i in g]
        answers = [examples[i][1] for i in idx]
        h = self.hidden(cache, idx, [len(examples[i][0]) for i in idx])
        k = max(len(a) for a in answers)  # the last k positions predict the (right-aligned) answers
        logits = self.base.lm_head(h[:, -k:].contiguous()).float()
        targets = torch.full((len(idx), k), -100, dtype=torch.long)
        for row, a in enumerate(answers):
            targets[row, k - len(a) :] = torch.tensor(a)
        from .cached import step_means

        return step_means(logits, targets, groups, denominator)


def or_stock(spec, model, seqs, trainer_cfg, reason) -> tuple[str, str]:
    """For settings the prefix paths cannot serve (`reason`): this path where it applies (first-token
    positions) and its cache fits trainer.cache_max_gb, else the stock path."""
    from .cached import max_bytes

    spec = InterventionSpec.of(spec, model.config.num_hidden_layers)
    if not spec.first or applies(spec, model):
        return "stock", reason
    need = estimate_bytes(model, seqs)
    if need > max_bytes(trainer_cfg):
        return "stock", f"{reason}; its residual cache needs {need / 2**30:.2f} GB, over trainer.cache_max_gb"
    return "residual", f"{reason}: the layers from the lowest intervention up run at each step"


def applies(spec, model) -> str | None:
    """None where this path is exact for `spec` (first-token positions on supported layers), else why not."""
    from .cached import POINT_OFFSET, SUPPORTED

    spec = InterventionSpec.of(spec, model.config.num_hidden_layers)
    if spec.method not in reft.PYREFT_CLASSES:
        return f"method {spec.method} is not a ReFT intervention"
    if spec.component not in POINT_OFFSET:
        return f"component={spec.component}: the residual path supports {', '.join(POINT_OFFSET)}"
    kind = type(model.model.layers[0]).__name__
    if kind not in SUPPORTED:
        return f"{kind} layers: the residual path supports {', '.join(SUPPORTED)}"
    return None


def train(reft_model, spec, examples, trainer_cfg, pad_id, device, seed, progress=True):
    """`training.train` with whole sequences run from the lowest intervention point up."""
    from . import training

    spec = InterventionSpec.of(spec, reft_model.model.config.num_hidden_layers)
    runner = FullRunner(reft_model, spec)
    t0 = time.perf_counter()
    seqs = [p + a[:-1] for p, a in examples]
    cache = build(reft_model.model, runner.start, seqs, pad_id, trainer_cfg.eval_batch_size, progress)
    seconds = time.perf_counter() - t0

    def step_loss(groups, denominator):
        return runner.step_loss(cache, groups, examples, denominator)

    result = training.train(
        reft_model, spec, examples, trainer_cfg, pad_id, device, seed, progress, step_loss
    )
    info = {"source": "built", "seconds": seconds, "mb": cache.nbytes / 2**20, "from_point": runner.start}
    return result, info


@torch.no_grad()
def evaluate(reft_model, spec, prompts, yes_id, no_id, pad_id, batch_size, progress=True):
    """Yes-minus-No logit at the last prompt position, the layers below the interventions run once."""
    spec = InterventionSpec.of(spec, reft_model.model.config.num_hidden_layers)
    runner = FullRunner(reft_model, spec)
    cache = build(reft_model.model, runner.start, prompts, pad_id, batch_size, progress)
    order = sorted(range(len(prompts)), key=lambda i: -len(prompts[i]))
    scores = np.zeros(len(prompts), dtype=np.float64)
    for b in range(0, len(order), batch_size):
        idx = order[b : b + batch_size]
        h = runner.hidden(cache, idx, [len(prompts[i]) for i in idx])
        last = runner.base.lm_head(h[:, -1]).float()
        scores[idx] = (last[:, yes_id] - last[:, no_id]).cpu().numpy()
    return scores
