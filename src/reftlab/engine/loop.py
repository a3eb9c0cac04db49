"""Batching, the one training loop and the one scoring loop every strategy runs through.

A strategy supplies a `step(batches, denominator)` that computes and backpropagates the loss of
one optimizer step and returns each batch's mean loss, and a `last_logits(indices)` that gives the
logits at the answer position of some prompts; batches, optimizer, schedule and the Yes-minus-No
scores are the same for all of them.
"""

from __future__ import annotations

import math
import numbers
import random
import time

import numpy as np
import torch
from tqdm.auto import tqdm


def left_pad(seqs: list[list[int]], pad_id: int, device) -> dict:
    """Left-padded input_ids, attention_mask and position_ids (positions count real tokens only,
    so an example's result does not depend on how much padding its batch needs)."""
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, width - len(s) :] = torch.tensor(s, dtype=torch.long)
        mask[i, width - len(s) :] = 1
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    starts = [width - len(s) for s in seqs]
    return {
        "input_ids": ids.to(device),
        "attention_mask": mask.to(device),
        "position_ids": positions.to(device),
        "starts": starts,
    }


def batches(
    lengths: list[int], batch_size: int, rng: random.Random, group_by_length: bool
) -> list[list[int]]:
    """Shuffled batches of indices; with group_by_length, similar lengths share a batch."""
    order = list(range(len(lengths)))
    rng.shuffle(order)
    if group_by_length:
        chunk = batch_size * 32
        order = [
            i
            for c in range(0, len(order), chunk)
            for i in sorted(order[c : c + chunk], key=lambda j: -lengths[j])
        ]
    out = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    rng.shuffle(out)
    return out


def answer_targets(answers: list[list[int]], width: int, right: bool) -> torch.Tensor:
    """Target ids [B, width] for answer tokens, -100 elsewhere: right-aligned (`right`, answers end
    the row) or left-aligned (answers start it)."""
    targets = torch.full((len(answers), width), -100, dtype=torch.long)
    for row, a in enumerate(answers):
        if right:
            targets[row, width - len(a) :] = torch.tensor(a)
        else:
            targets[row, : len(a)] = torch.tensor(a)
    return targets


CHUNK = 1024  # answer tokens whose logits are materialised at once (49,152 x 1,024 fp32 = 201 MB)


def answer_loss(head, h, targets) -> torch.Tensor:
    """Cross-entropy [B, K] of each answer token (`targets` [B, K], -100 where none: 0 there) from
    final hidden states `h` [B, K, H] through the output layer `head` (a bias-free linear), as
    F.cross_entropy(head(h)) computes it, on the answer tokens only and `CHUNK` of them at a time:
    a long target (a worked solution of hundreds of tokens) never has its full-vocabulary logits
    all in memory at once; with more than one chunk each chunk's logits are recomputed in the
    backward pass (activation checkpointing) instead of kept. The logits are laid out [vocab, rows]
    (W @ h^T): on a CPU that product runs ~1.8x faster than h @ W^T for the few rows a step has
    (measured here: 61 against 108 GFLOP/s for 96 rows of 49,152 logits), and its backward is
    faster too."""
    t = targets.reshape(-1).to(h.device)
    where = (t != -100).nonzero()[:, 0]
    rows, picked = h.reshape(-1, h.shape[-1])[where], t[where]
    bias = head.bias
    if len(where) <= CHUNK:
        parts = [token_loss(head.weight, bias, rows, picked)]
    else:
        from torch.utils.checkpoint import checkpoint

        parts = [checkpoint(token_loss, head.weight, bias, rows[i : i + CHUNK], picked[i : i + CHUNK], use_reentrant=False)
                 for i in range(0, len(where), CHUNK)]  # fmt: skip
    ce = torch.zeros(t.shape, dtype=torch.float32, device=h.device)
    ce = ce.index_put((where,), torch.cat(parts)) if len(where) else ce
    return ce.view(targets.shape)


def token_loss(weight, bias, rows, picked) -> torch.Tensor:
    """Cross-entropy of each row of final hidden states `rows` [N, H] against its target token."""
    logits = torch.mm(weight, rows.T).float()  # [vocab, rows], contiguous: no strided CE
    if bias is not None:
        logits = logits + bias.float()[:, None]
    return torch.logsumexp(logits, dim=0) - logits.gather(0, picked[None]).squeeze(0)


def step_means(ce, targets, groups, denominator):
    """(sum of each batch's mean answer cross-entropy x len(batch) / denominator, the batch means)
    for one pass over all batches of a step, from the per-token cross-entropy `ce` (`answer_loss`;
    `targets` -100 where no answer token is)."""
    targets = targets.to(ce.device)
    valid = (targets != -100).sum(1)
    per_batch, total, row = [], 0.0, 0
    for g in groups:
        rows = slice(row, row + len(g))
        row += len(g)
        mean = ce[rows].sum() / valid[rows].sum()
        per_batch.append(mean.detach())
        total = total + mean * len(g) / denominator
    return total, per_batch


class Schedule:
    """One training run's steps: its optimizer and learning-rate schedule, and its batches (shuffled
    by its own seed, trainer.grad_accum of them per optimizer step). `train` runs one; a fused
    sweep runs several side by side, each finishing when its own steps are done."""

    def __init__(self, params, examples, trainer_cfg, seed: int):
        from transformers import get_linear_schedule_with_warmup

        self.cfg = trainer_cfg
        self.optimizer = torch.optim.AdamW(params, lr=trainer_cfg.lr, weight_decay=trainer_cfg.weight_decay)
        self.rng = random.Random(seed)
        self.lengths = [len(p) + len(a) for p, a in examples]
        self.accum = trainer_cfg.grad_accum
        self.denominator = trainer_cfg.batch_size * self.accum
        steps_per_epoch = math.ceil(math.ceil(len(examples) / trainer_cfg.batch_size) / self.accum)
        self.total = steps_per_epoch * trainer_cfg.epochs
        self.scheduler = get_linear_schedule_with_warmup(
            self.optimizer, int(trainer_cfg.warmup_ratio * self.total), self.total
        )
        self.losses, self.done, self.epoch, self._queue = [], 0, 0, []

    def next_group(self) -> list[list[int]] | None:
        """The batches of the next optimizer step, or None when the run is done."""
        if not self._queue:
            if self.epoch == self.cfg.epochs:
                return None
            epoch_batches = batches(self.lengths, self.cfg.batch_size, self.rng, self.cfg.group_by_length)
            self._queue = [
                epoch_batches[i : i + self.accum] for i in range(0, len(epoch_batches), self.accum)
            ]
            self.epoch += 1
            if not self._queue:
                return self.next_group()
        return self._queue.pop(0)

    @property
    def between_epochs(self) -> bool:
        """Whether the last step ended an epoch that is not the run's last."""
        return not self._queue and self.epoch < self.cfg.epochs

    def finish(self, group_losses: list[float]) -> None:
        """After the step's backward: record its batch losses (a NaN/inf fails the run here), step."""
        self.losses.extend(group_losses)
        check_finite(group_losses, self.done + 1, self.total, self.cfg)
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.done += 1


def train(params, examples, trainer_cfg, seed: int, step, progress: bool = True, on_epoch=None) -> dict:
    """Train `params` on `examples` ((prompt ids, answer ids) pairs); returns the per-batch losses,
    the number of optimizer steps and the steps' wall-clock seconds (without `on_epoch`'s).

    Each optimizer step covers trainer.grad_accum batches; `step(batches, denominator)` computes and
    backpropagates their loss (sum over batches of mean loss x len(batch) / denominator) and returns
    the batch means as floats. `on_epoch(epoch)` runs after each epoch but the last (a search trial
    scores its validation split there; it may stop the run by raising)."""
    run = Schedule(params, examples, trainer_cfg, seed)
    start, between = time.perf_counter(), 0.0
    bar = tqdm(total=run.total, desc="train", unit="step", disable=not progress)
    while (group := run.next_group()) is not None:
        run.finish(step(group, run.denominator))
        bar.update(1)
        bar.set_postfix(loss=f"{np.mean(run.losses[-run.accum * 10 :]):.4f}")
        if on_epoch is not None and run.between_epochs:
            tic = time.perf_counter()
            on_epoch(run.epoch)
            between += time.perf_counter() - tic
    bar.close()
    return {"losses": run.losses, "steps": run.done, "train_seconds": time.perf_counter() - start - between,
            "epoch_eval_seconds": between}  # fmt: skip


def check_finite(recent: list[float], step: int, total: int, trainer_cfg) -> None:
    """Stop a diverged run at the step where its loss stopped being a number (NaN or inf): its
    scores would be meaningless and an untrained-looking 50% would be recorded as a result."""
    from ..config import DivergedError

    bad = [x for x in recent if not math.isfinite(x)]
    if bad:
        raise DivergedError(
            f"training diverged at step {step} of {total}: the loss is {bad[0]}. Lower trainer.lr "
            f"(now {trainer_cfg.lr}) or run the model in float32 (model.dtype=float32); nothing was "
            "recorded as a result"
        )


def check_batch_size(batch_size) -> int:
    """`batch_size` as an int, or a ValueError naming it unless it is an integer >= 1 (batches of a
    negative size would be no batches: no prompt scored)."""
    if isinstance(batch_size, bool) or not isinstance(batch_size, numbers.Integral) or batch_size < 1:
        raise ValueError(f"batch_size={batch_size!r} is not valid: it must be an integer >= 1")
    return int(batch_size)


@torch.no_grad()
def score(
    lengths, last_logits, yes_id: int, no_id: int, batch_size: int, progress=True, desc="eval"
) -> np.ndarray:
    """Yes-minus-No logit at the answer position of each prompt (constrained to the two answers):
    prompts in batches of similar length, longest first; `last_logits(indices)` gives [B, vocab]."""
    batch_size = check_batch_size(batch_size)
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    scores = np.full(len(lengths), np.nan)  # a prompt left unscored is never a made-up 0
    for b in tqdm(range(0, len(order), batch_size), desc=desc, unit="batch", disable=not progress):
        idx = order[b : b + batch_size]
        last = last_logits(idx).float()
        scores[idx] = (last[:, yes_id] - last[:, no_id]).cpu().numpy()
    return scores
