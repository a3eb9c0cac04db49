"""Decoding with the intervention where it was trained: on the prompt, never on a generated token.

Each batch of prompts (left-padded, similar lengths together, longest first) runs once through the
method's own pass (`method.prompt_states`: a ReFT's interventions at the prompt positions it was
trained on, LoRA's adapters inside the model, the frozen model zero-shot), its keys and values kept
in a KV cache; then each new token runs alone through the model's body from that cache (LoRA's
adapters are in it; a ReFT's frozen model is under its interventions, which the generated tokens
never meet: pyreft's `intervene_on_prompt=True`). Greedy by default; sampling (temperature, top-k,
top-p: transformers' logits warpers) is seeded. A row stops at an end-of-turn / end-of-sequence
token or after `max_new_tokens`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import torch

from .. import hf_compat
from .loop import check_batch_size, left_pad


@dataclass(frozen=True)
class Decoding:
    max_new_tokens: int = 256
    stop_ids: tuple[int, ...] = ()  # a row ends after generating one of these (not kept in its text)
    do_sample: bool = False
    temperature: float = 1.0
    top_k: int = 0  # 0: off
    top_p: float = 1.0
    seed: int = 0

    def check(self) -> None:
        from ..config import ConfigError

        if int(self.max_new_tokens) <= 0:
            raise ConfigError(
                f"task.max_new_tokens={self.max_new_tokens} is not valid: give a number of tokens >= 1"
            )
        if self.do_sample and not float(self.temperature) > 0:
            raise ConfigError(
                f"task.temperature={self.temperature} is not valid with task.do_sample=true: give a value > 0"
            )
        if not 0 < float(self.top_p) <= 1:
            raise ConfigError(f"task.top_p={self.top_p} is not valid: give a value in (0, 1]")
        if int(self.top_k) < 0:
            raise ConfigError(
                f"task.top_k={self.top_k} is not valid: give 0 (off) or a number of tokens >= 1"
            )


@dataclass
class Generated:
    tokens: list[list[int]]  # per prompt, the generated tokens (its stop token left out)
    stopped: np.ndarray  # per prompt: it ended with a stop token (else it ran out of max_new_tokens)
    seconds: float = 0.0

    @property
    def new_tokens(self) -> int:
        """Tokens generated in all (each row's stop token counted: it was computed too)."""
        return int(sum(map(len, self.tokens)) + self.stopped.sum())

    @property
    def tokens_per_second(self) -> float:
        return self.new_tokens / self.seconds if self.seconds > 0 else float("nan")


def warpers(decoding: Decoding):
    """transformers' logits warpers for the sampling settings (none when greedy)."""
    from transformers import LogitsProcessorList, TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper

    out = LogitsProcessorList()
    if not decoding.do_sample:
        return out
    if float(decoding.temperature) != 1.0:
        out.append(TemperatureLogitsWarper(float(decoding.temperature)))
    if int(decoding.top_k) > 0:
        out.append(TopKLogitsWarper(int(decoding.top_k)))
    if float(decoding.top_p) < 1.0:
        out.append(TopPLogitsWarper(float(decoding.top_p)))
    return out


@torch.no_grad()
def generate(ctx, prompts, decoding: Decoding, batch_size: int, on_tokens=None) -> Generated:
    """The tokens the trained model (`ctx`: an engine Context) generates after each of `prompts`
    (token id lists). `on_tokens(prompt_indices, new_token_ids)` is called after each step (a
    terminal streams them)."""
    from tqdm.auto import tqdm

    batch_size = check_batch_size(batch_size)
    decoding.check()
    base = hf_compat.base_model(ctx.model)
    body, head, cache_arg = base.model, base.lm_head, hf_compat.cache_kwarg(base.model.forward)
    warp = warpers(decoding)
    generator = torch.Generator(device=ctx.device).manual_seed(int(decoding.seed))
    stops = torch.tensor(sorted(set(decoding.stop_ids)) or [-1], device=ctx.device)
    out: list[list[int]] = [[] for _ in prompts]
    stopped = np.zeros(len(prompts), dtype=bool)
    order = sorted(range(len(prompts)), key=lambda i: -len(prompts[i]))
    start, made = time.perf_counter(), 0
    bar = tqdm(total=len(prompts), desc="generate", unit="prompt", disable=not ctx.progress)
    for b in range(0, len(order), batch_size):
        idx = order[b : b + batch_size]
        enc = left_pad([prompts[i] for i in idx], ctx.pad_id, ctx.device)
        kv_cache = hf_compat.new_kv_cache(ctx.model.config)
        lens = [len(prompts[i]) for i in idx]
        h = ctx.method.prompt_states(ctx.trained, ctx.spec, enc, lens, kv_cache, cache_arg)  # [B, 1, H]
        mask, positions, ids = enc["attention_mask"], enc["position_ids"][:, -1:], enc["input_ids"]
        done = torch.zeros(len(idx), dtype=torch.bool, device=ctx.device)
        for step in range(int(decoding.max_new_tokens)):
            logits = head(h[:, -1]).float()
            if decoding.do_sample:
                probs = torch.softmax(warp(ids, logits), dim=-1)
                chosen = torch.multinomial(probs, 1, generator=generator)[:, 0]
            else:
                chosen = logits.argmax(-1)
            chosen = torch.where(done, ctx.pad_id, chosen)
            ends = torch.isin(chosen, stops) & ~done
            # per row: its new token, None where it ended now (its stop token) or before
            new = [
                None if f or e else t
                for t, e, f in zip(chosen.tolist(), ends.tolist(), done.tolist(), strict=True)
            ]
            for r, (token, end) in enumerate(zip(new, ends.tolist(), strict=True)):
                if token is not None:
                    out[idx[r]].append(token)
                elif end:
                    stopped[idx[r]] = True
            made += int((~done).sum())
            if on_tokens is not None:
                on_tokens(idx, new)
            done |= ends
            if bool(done.all()) or step == int(decoding.max_new_tokens) - 1:
                break
            if decoding.do_sample:  # the warpers see the sequence so far; greedy needs none of it
                ids = torch.cat([ids, chosen[:, None]], dim=1)
            mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
            positions = positions + 1
            h = body(input_ids=chosen[:, None], attention_mask=mask, position_ids=positions, use_cache=True,
                     **{cache_arg: kv_cache}).last_hidden_state  # fmt: skip
        bar.update(len(idx))
        bar.set_postfix(tok_s=f"{made / max(time.perf_counter() - start, 1e-9):.1f}")
    bar.close()
    return Generated(out, stopped, time.perf_counter() - start)
