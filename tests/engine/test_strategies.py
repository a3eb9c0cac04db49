"""Every strategy is exact: on the tiny fp32 model the cached, streamed and residual paths give the
stock pyreft path's per-step losses, trained weights and predictions."""

import numpy as np
import pytest
import torch
from conftest import compose

from reftlab import methods, reft
from reftlab.engine import Engine, clear_caches

BASE = {"method": "loreft", "rank": 4, "share_weights": False, "dropout": 0.0}
CASES = {  # settings, grad_accum, the strategies that must equal the stock path
    "block_output-L1-l1": (
        {"layer": 1, "component": "block_output", "positions": "l1"},
        1,
        ("cached", "streamed"),
    ),
    "layers-l2-accum3": (
        {"layer": [0, 2], "component": "block_output", "positions": "l2"},
        3,
        ("cached", "streamed"),
    ),
    "block_input-L1-l3": ({"layer": 1, "component": "block_input", "positions": "l3"}, 1, ("cached",)),
    "last-layer-l1": (
        {"layer": 3, "component": "block_output", "positions": "l1"},
        1,
        ("cached",),
    ),  # none above
    "f1+l1": ({"layer": 1, "component": "block_output", "positions": "f1+l1"}, 1, ("residual",)),
    "tied-f2+l2": (
        {"layer": [0, 2], "component": "block_output", "positions": "f2+l2", "share_weights": True},
        1,
        ("residual",),
    ),  # fmt: skip
    "block_input-f3": ({"layer": 2, "component": "block_input", "positions": "f3"}, 1, ("residual",)),
}
MODE = {"cached": "auto", "streamed": "streamed", "residual": "auto"}


def flat(reft_model):
    return torch.cat([p.detach().flatten() for p in reft.trainable_parameters(reft_model)])


def trainer(mode: str, accum: int = 1, *extra: str):
    return compose("trainer.epochs=2", "trainer.lr=0.02", f"trainer.batch_size={4 if accum == 1 else 2}",
                   f"trainer.grad_accum={accum}", f"trainer.cache={mode}", *extra).trainer  # fmt: skip


def engine(tiny4, trained, settings, trainer_cfg):
    return Engine(trained, methods.get(settings["method"]), settings, trainer_cfg, tiny4[1].pad_token_id, "cpu",
                  store=None, progress=False)  # fmt: skip


def trained_with(tiny4, settings, trainer_cfg):
    torch.manual_seed(0)
    trained = reft.build(tiny4[0], settings)
    clear_caches()
    return trained, engine(tiny4, trained, settings, trainer_cfg).train(tiny4[3], seed=0)


@pytest.mark.parametrize("name", CASES)
def test_every_strategy_matches_stock_pyreft(tiny4, name):
    case, accum, strategies = CASES[name]
    settings = {**BASE, **case}
    model, tokenizer, builder, examples, prompts = tiny4
    torch.manual_seed(0)
    initial = flat(reft.build(model, settings))
    stock, ref = trained_with(tiny4, settings, trainer("off", accum))
    assert ref.path == "stock" and ref.reason == "trainer.cache=off"
    # 24 examples, 2 epochs: 6 batches of 4 per epoch, or 12 batches of 2 in steps of 3
    assert ref.steps == (12 if accum == 1 else 8)
    assert (flat(stock) - initial).norm() > 0.1  # training moved the weights ...
    want, _ = engine(tiny4, stock, settings, trainer("off")).predict(prompts, builder.yes_id, builder.no_id)
    for strategy in strategies:
        fast, got = trained_with(tiny4, settings, trainer(MODE[strategy], accum))
        assert got.path == strategy and got.steps == ref.steps
        assert got.cache_source == {"cached": "built", "streamed": "streamed", "residual": "built"}[strategy]
        assert np.max(np.abs(np.array(ref.losses) - got.losses) / np.abs(ref.losses)) < 1e-4
        assert ((flat(stock) - flat(fast)).norm() / flat(stock).norm()).item() < 1e-4  # ... to the same place
        # the same trained intervention scored by this strategy: the stock predictions
        scorer = engine(tiny4, stock, settings, trainer(MODE[strategy]))
        have, path = scorer.predict(prompts, builder.yes_id, builder.no_id)
        assert path == strategy
        assert np.max(np.abs(want - have)) < 1e-4 * max(1.0, np.abs(want).max())
        if strategy == "residual":  # built at the lowest intervention's point
            layers = case["layer"] if isinstance(case["layer"], list) else [case["layer"]]
            assert got.cache_point == min(layers) + (case["component"] == "block_output")


def test_training_from_a_shared_lower_cache_is_the_same(tiny4):
    model, tokenizer, builder, examples, prompts = tiny4
    settings = {**BASE, **CASES["block_output-L1-l1"][0]}  # layer 1, block_output: point 2
    results = {}
    for name, extra in [("own", ()), ("shared", ("trainer.cache_from=0",))]:
        trained, result = trained_with(tiny4, settings, trainer("auto", 1, *extra))
        scorer = engine(tiny4, trained, settings, trainer("auto", 1, *extra))
        scores, _ = scorer.predict(prompts, builder.yes_id, builder.no_id)  # through the same (lower) cache
        results[name] = (result, flat(trained), scores, scorer.eval_info)
    (own, own_w, own_s, _), (got, got_w, got_s, got_e) = results["own"], results["shared"]
    assert own.cache_point == 2 and got.cache_point == 0 and got_e["from_point"] == 0
    assert np.allclose(own.losses, got.losses, rtol=1e-4)
    assert ((own_w - got_w).norm() / own_w.norm()).item() < 1e-4
    assert np.max(np.abs(own_s - got_s)) < 1e-4 * max(1.0, np.abs(own_s).max())


def test_the_model_is_left_as_it_was(tiny4):
    model = tiny4[0]
    before = model.config._attn_implementation
    settings = {**BASE, **CASES["block_output-L1-l1"][0]}
    trained_with(tiny4, settings, compose("trainer.batch_size=8").trainer)
    assert model.config._attn_implementation == before
    assert all(not p.requires_grad for p in model.parameters())
