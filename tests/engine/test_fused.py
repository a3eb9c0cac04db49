"""Fused training is exact: each member of a fused group gets its solo run's per-step losses,
trained weights and predictions (tiny model, fp32); a member that diverges fails alone."""

import numpy as np
import pytest
import torch
from conftest import compose

from reftlab import methods, reft
from reftlab.engine import Engine, clear_caches, fused, store
from reftlab.engine.plan import train_inputs
from reftlab.engine.prefix import build
from reftlab.engine.strategies import Context
from reftlab.spec import InterventionSpec

BASE = {"method": "loreft", "rank": 4, "share_weights": False, "dropout": 0.0, "component": "block_output",
        "positions": "l2"}  # fmt: skip
MEMBERS = [  # settings, seed, trainer overrides
    ({"layer": 1}, 0, ("trainer.lr=0.02",)),
    ({"layer": 2, "rank": 2}, 1, ("trainer.lr=0.01", "trainer.epochs=1")),  # fewer steps: drops out early
    ({"layer": [0, 2], "method": "noreft"}, 2, ("trainer.lr=0.02", "trainer.grad_accum=2")),
]


def flat(trained):
    return torch.cat([p.detach().flatten() for p in reft.trainable_parameters(trained)])


def member(tiny4, settings, seed, overrides):
    model, tokenizer = tiny4[:2]
    trainer = compose("trainer.epochs=2", "trainer.batch_size=4", *overrides).trainer
    torch.manual_seed(seed)
    trained = reft.build(model, settings)
    spec = InterventionSpec.of(settings, 4)
    ctx = Context(
        trained, methods.get(settings["method"]), spec, trainer, tokenizer.pad_token_id, progress=False
    )
    return fused.Member(ctx, seed)


@pytest.mark.slow  # three fused members and their three solo runs
def test_each_fused_member_equals_its_solo_run(tiny4):
    model, tokenizer, builder, examples, prompts = tiny4
    settings = [{**BASE, **s} for s, _, _ in MEMBERS]
    group = [
        member(tiny4, s, seed, overrides) for s, (_, seed, overrides) in zip(settings, MEMBERS, strict=True)
    ]
    seqs, suffix = train_inputs(examples, 2)
    cache = build(model, min(m.start for m in group), seqs, suffix, tokenizer.pad_token_id, progress=False)
    seconds = fused.train(group, cache, examples, progress=False)
    assert seconds > 0 and all(m.error is None for m in group)
    eval_cache = build(
        model, cache.start, prompts, [2] * len(prompts), tokenizer.pad_token_id, progress=False
    )
    fused_scores = fused.score(group, eval_cache, builder.yes_id, builder.no_id, batch_size=5)
    assert group[1].steps < group[0].steps  # one epoch against two: it dropped out, the others went on
    for s, (_, seed, overrides), m, have in zip(settings, MEMBERS, group, fused_scores, strict=True):
        torch.manual_seed(seed)
        solo = reft.build(model, s)
        trainer = compose("trainer.epochs=2", "trainer.batch_size=4", *overrides).trainer
        clear_caches()
        engine = Engine(solo, methods.get(s["method"]), s, trainer, tokenizer.pad_token_id, store=None,
                        progress=False)  # fmt: skip
        result = engine.train(examples, seed)
        assert result.path == "cached" and m.steps == result.steps
        assert np.max(np.abs(np.array(result.losses) - m.losses) / np.abs(result.losses)) < 1e-4
        assert ((flat(solo) - flat(m.ctx.trained)).norm() / flat(solo).norm()).item() < 1e-4
        want, _ = engine.predict(prompts, builder.yes_id, builder.no_id)
        assert np.max(np.abs(want - have)) < 1e-4 * max(1.0, np.abs(want).max())


def test_a_member_that_diverges_fails_alone(tiny4):
    model, tokenizer, builder, examples, _ = tiny4
    good = member(tiny4, {**BASE, "layer": 1}, 0, ("trainer.lr=0.02",))
    bad = member(tiny4, {**BASE, "layer": 2}, 1, ("trainer.lr=1e30",))
    group = [good, bad]
    seqs, suffix = train_inputs(examples, 2)
    cache = build(model, 2, seqs, suffix, tokenizer.pad_token_id, progress=False)
    fused.train(group, cache, examples, progress=False)
    assert group[0].error is None and group[0].steps == 12 and np.isfinite(group[0].losses).all()
    assert "diverged" in str(group[1].error) and group[1].steps < 12


def test_a_fused_group_scores_any_task_once_for_all_members(tiny4):
    """Through `GroupScorer` a task's requests (Yes/No scores, log-likelihoods of each prompt's own
    continuations) run once for every member; each member's answers equal its solo engine's (cached,
    to 1e-5) and its job's engine takes them for the same request, else scores on its own."""
    model, tokenizer, builder, _, prompts = tiny4
    group = [member(tiny4, {**BASE, **s}, seed, ()) for s, seed, _ in MEMBERS]
    g = torch.Generator().manual_seed(0)
    conts = [[builder.answer_ids["Yes"], builder.answer_ids["No"]]
             + [torch.randint(5, 4000, (1 + j,), generator=g).tolist() for j in range(i % 3)]
             for i in range(len(prompts))]  # fmt: skip
    lowest, asked = min(m.start for m in group), []

    def stored(seqs, tails):
        asked.append(len(seqs))
        cache, source, _ = store.obtain(model, lowest, seqs, 2, tails, tokenizer.pad_token_id, None, 4, False)
        return cache, source

    clear_caches()
    scorer = fused.GroupScorer(group, stored)
    first = scorer.loglik(prompts, conts, 5)
    scorer.yes_no(prompts, builder.yes_id, builder.no_id, 5)
    assert asked == [sum(map(len, conts)), len(prompts)] and scorer.built == 2 * len(prompts)
    for j, m in enumerate(group):
        solo = Engine(m.ctx.trained, m.ctx.method, m.ctx.spec, m.ctx.trainer, tokenizer.pad_token_id, store=None,
                      progress=False)  # fmt: skip
        want, want_yes = (
            solo.loglik(prompts, conts, 5),
            solo.predict(prompts, builder.yes_id, builder.no_id)[0],
        )
        assert solo.eval_path == "cached"
        costs = fused.Costs(0.0, 0.0, 0.0, "built", 0, scorer.source, scorer.built)
        given = fused.Result([], [], 0, scorer.recorded(j), "g", len(group), costs, lowest, 0.0)
        job = Engine(m.ctx.trained, m.ctx.method, m.ctx.spec, m.ctx.trainer, tokenizer.pad_token_id, store=None,
                     progress=False, given=given)  # fmt: skip
        have = job.loglik(prompts, conts, 5)
        assert job.eval_path == "cached" and job.eval_info == {"source": "built", "built": 2 * len(prompts)}
        if j == 0:
            assert all(np.array_equal(a, b) for a, b in zip(have, first, strict=True))
        flat_have, flat_want = np.concatenate(have), np.concatenate(want)
        assert np.max(np.abs(flat_have - flat_want) / np.abs(flat_want)) < 1e-5
        assert np.max(np.abs(job.predict(prompts, builder.yes_id, builder.no_id)[0] - want_yes)) < 1e-4
        other = job.loglik(prompts[:3], conts[:3], 5)  # a request the group did not answer: scored here
        assert np.allclose(np.concatenate(other), np.concatenate(want[:3]), rtol=1e-5)
