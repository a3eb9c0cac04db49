"""Batching, the training loop and the constrained Yes/No evaluation for a pyreft model."""

from __future__ import annotations

import math
import random
import time

import numpy as np
import torch
from tqdm.auto import tqdm

from . import reft
from .spec import unit_locations


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


def is_reft(model) -> bool:
    return hasattr(model, "interventions")


def forward_logits(model, settings: dict, enc: dict, prompt_lens: list[int], k: int):
    """Logits of the last k positions: through pyreft (interventions on the prompt positions) or a
    plain/peft causal LM."""
    starts = enc.pop("starts")
    base = {**enc, "logits_to_keep": k}
    if is_reft(model):
        _, out = model(base, unit_locations=unit_locations(settings, prompt_lens, starts))
    else:
        out = model(**base)
    return out.logits


def trainable(model) -> list[torch.nn.Parameter]:
    if is_reft(model):
        return reft.trainable_parameters(model)
    return [p for p in model.parameters() if p.requires_grad]


def set_training(model, on: bool) -> None:
    """Train mode for what trains; the frozen model itself stays in eval mode."""
    if is_reft(model):
        model.model.eval()
        for iv in reft.interventions(model):
            iv.train(on)
    else:
        model.train(on)


def batch_loss(model, settings: dict, examples: list[tuple[list[int], list[int]]], pad_id: int, device):
    """Mean cross-entropy of the answer tokens that follow each prompt."""
    seqs = [p + a for p, a in examples]
    enc = left_pad(seqs, pad_id, device)
    k = max(len(a) for _, a in examples) + 1  # logits needed: last prompt token .. last answer token
    logits = forward_logits(model, settings, enc, [len(p) for p, _ in examples], k)[:, -k:-1].float()
    targets = torch.full((len(examples), k - 1), -100, dtype=torch.long, device=device)
    for i, (_, a) in enumerate(examples):
        targets[i, k - 1 - len(a) :] = torch.tensor(a, device=device)
    return torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1))


def train(
    model,
    settings: dict,
    examples,
    trainer_cfg,
    pad_id: int,
    device,
    seed: int,
    progress=True,
    step_loss=None,
) -> dict:
    """Train the interventions; returns the per-batch losses and the training wall-clock seconds.

    Each optimizer step covers `grad_accum` batches. `step_loss(batches, denominator)` returns
    (sum over its batches of loss x len(batch) / denominator, the batch losses); the default runs
    each batch through the full pyreft forward (`batch_loss`) and backpropagates it on its own; the
    cached path passes one that runs all batches of a step in one pass. Batches, optimizer and
    schedule are the same for both.
    """
    from transformers import get_linear_schedule_with_warmup

    params = trainable(model)
    optimizer = torch.optim.AdamW(params, lr=trainer_cfg.lr, weight_decay=trainer_cfg.weight_decay)
    rng = random.Random(seed)
    lengths = [len(p) + len(a) for p, a in examples]
    accum = trainer_cfg.grad_accum
    denominator = trainer_cfg.batch_size * accum
    steps_per_epoch = math.ceil(math.ceil(len(examples) / trainer_cfg.batch_size) / accum)
    total = steps_per_epoch * trainer_cfg.epochs
    scheduler = get_linear_schedule_with_warmup(optimizer, int(trainer_cfg.warmup_ratio * total), total)
    set_training(model, True)
    losses, step = [], 0
    start = time.perf_counter()
    bar = tqdm(total=total, desc="train", unit="step", disable=not progress)
    for _epoch in range(trainer_cfg.epochs):
        epoch_batches = batches(lengths, trainer_cfg.batch_size, rng, trainer_cfg.group_by_length)
        for first in range(0, len(epoch_batches), accum):
            group = epoch_batches[first : first + accum]
            if step_loss is None:
                for idx in group:  # one backward per batch: memory of one batch at a time
                    loss = batch_loss(model, settings, [examples[i] for i in idx], pad_id, device)
                    (loss * len(idx) / denominator).backward()
                    losses.append(loss.item())
            else:
                total_loss, per_batch = step_loss(group, denominator)
                total_loss.backward()
                losses.extend(torch.stack(per_batch).tolist())
            check_finite(losses[-len(group) :], step + 1, total, trainer_cfg)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            bar.update(1)
            bar.set_postfix(loss=f"{np.mean(losses[-accum * 10 :]):.4f}")
    bar.close()
    set_training(model, False)
    return {"losses": losses, "steps": step, "train_seconds": time.perf_counter() - start}


def check_finite(recent: list[float], step: int, total: int, trainer_cfg) -> None:
    """Stop a diverged run at the step where its loss stopped being a number (NaN or inf): its
    scores would be meaningless and an untrained-looking 50% would be recorded as a result."""
    from .validate import DivergedError

    bad = [x for x in recent if not math.isfinite(x)]
    if bad:
        raise DivergedError(
            f"training diverged at step {step} of {total}: the loss is {bad[0]}. Lower trainer.lr "
            f"(now {trainer_cfg.lr}) or run the model in float32 (model.dtype=float32); nothing was "
            "recorded as a result"
        )


@torch.no_grad()
def predict(
    model,
    settings,
    prompts: list[list[int]],
    yes_id: int,
    no_id: int,
    pad_id: int,
    device,
    batch_size: int = 16,
    progress=True,
) -> np.ndarray:
    """Yes-minus-No logit at the answer position for each prompt (constrained to the two answers).

    `model` is a pyreft ReftModel, a peft model, or a plain causal LM (zero-shot).
    """
    order = sorted(range(len(prompts)), key=lambda i: -len(prompts[i]))
    scores = np.zeros(len(prompts), dtype=np.float64)
    for b in tqdm(range(0, len(order), batch_size), desc="eval", unit="batch", disable=not progress):
        idx = order[b : b + batch_size]
        enc = left_pad([prompts[i] for i in idx], pad_id, device)
        last = forward_logits(model, settings, enc, [len(prompts[i]) for i in idx], 1)[:, -1].float()
        scores[idx] = (last[:, yes_id] - last[:, no_id]).cpu().numpy()
    return scores


def metrics(labels: list[str], scores: np.ndarray) -> dict:
    """Accuracy, F1 and the confusion counts at the Yes/No decision (score > 0), and the
    threshold-free ROC AUC (both labels present) and log loss of P(Yes) = sigmoid(score), which
    compare fairly on imbalanced data."""
    from sklearn.metrics import accuracy_score, confusion_matrix, f1_score, log_loss, roc_auc_score

    y_true = np.array([lab == "Yes" for lab in labels])
    scores = np.asarray(scores, dtype=np.float64)
    y_pred = scores > 0
    tn, fp, fn, tp = confusion_matrix(y_true, y_pred, labels=[False, True]).ravel()
    out = {
        "accuracy": float(accuracy_score(y_true, y_pred)),
        "f1": float(f1_score(y_true, y_pred, zero_division=0)),
        "yes_rate": float(y_pred.mean()),
        "tp": int(tp),
        "fp": int(fp),
        "tn": int(tn),
        "fn": int(fn),
        "log_loss": float(log_loss(y_true, 1 / (1 + np.exp(-scores)), labels=[False, True])),
    }
    if len(set(y_true)) == 2:
        out["roc_auc"] = float(roc_auc_score(y_true, scores))
    return out
