"""Cached-prefix ReFT is exact: on a tiny fp32 model it gives the stock pyreft path's per-step loss,
trained weights and predictions; it is used only where exact, is bounded, and is reused from disk."""

import numpy as np
import pytest
import torch
from conftest import ROOT, compose, runs, tiny_overrides

from reftlab import cached, data, engine, models, prefix_cache, reft, training
from reftlab.prompts import PromptBuilder

BASE = {"method": "loreft", "rank": 4, "share_weights": False, "dropout": 0.0}
CASES = [
    {"layer": 1, "component": "block_output", "positions": "l1"},  # the default shape
    {"layer": [0, 2], "component": "block_output", "positions": "l2"},  # a set of layers, two positions
    {"layer": 1, "component": "block_input", "positions": "l3"},
    {"layer": 3, "component": "block_output", "positions": "l1"},  # the last layer: no layer above it
]


@pytest.fixture(scope="module")
def tiny():
    # 4 layers, so the suffix pass runs through real decoder layers with a stored prefix (GQA: 4 q / 2 kv heads).
    cfg = compose("model=tiny_random", "model.num_layers=4")
    model, tokenizer, device, dtype = models.load_model_and_tokenizer(cfg.model)
    assert dtype == torch.float32
    dcfg = compose("data.max_train=24", "data.max_eval=16").data
    dcfg.path = str(ROOT / dcfg.path)
    prepared = data.prepare(dcfg)
    builder = PromptBuilder(tokenizer, dcfg.system_prompt, 64)
    examples = builder.examples(prepared.train["text"], prepared.train["label"])
    prompts = builder.prompts(prepared.eval["text"])
    return model, tokenizer, builder, examples, prompts


def flat(reft_model):
    return torch.cat([p.detach().flatten() for p in reft.trainable_parameters(reft_model)])


@pytest.mark.parametrize(
    "case, accum",
    [(c, 1) for c in CASES] + [(CASES[0], 3)],  # with accumulation the cached path runs a step in one pass
    ids=lambda c: f"{c['component']}-L{c['layer']}-{c['positions']}" if isinstance(c, dict) else f"accum{c}",
)
def test_cached_path_matches_stock_pyreft(tiny, case, accum):
    model, tokenizer, builder, examples, prompts = tiny
    settings = {**BASE, **case}
    trainer = compose("trainer.epochs=2", "trainer.lr=0.02", f"trainer.batch_size={4 if accum == 1 else 2}",
                      f"trainer.grad_accum={accum}").trainer  # fmt: skip
    torch.manual_seed(0)
    stock = reft.build(model, settings)
    torch.manual_seed(0)
    fast = reft.build(model, settings)
    initial = flat(fast).clone()
    pad = tokenizer.pad_token_id
    ref = training.train(stock, settings, examples, trainer, pad, "cpu", seed=0, progress=False)
    prefix_cache.clear_memory()
    got, info = cached.train(fast, settings, examples, trainer, pad, "cpu", 0, {}, progress=False, store=None)
    assert info["source"] == "built"
    # 24 examples, 2 epochs: 6 batches of 4 per epoch, or 12 batches of 2 in steps of 3
    assert got["steps"] == ref["steps"] == (12 if accum == 1 else 8)
    ref_loss, got_loss = np.array(ref["losses"]), np.array(got["losses"])
    assert np.max(np.abs(ref_loss - got_loss) / np.abs(ref_loss)) < 1e-4
    w_ref, w_got = flat(stock), flat(fast)
    assert (w_ref - initial).norm() > 0.1  # training moved the weights ...
    assert ((w_ref - w_got).norm() / w_ref.norm()).item() < 1e-4  # ... to the same place
    # predictions of the cached evaluation equal the stock ones (same trained intervention)
    want = training.predict(
        stock, settings, prompts, builder.yes_id, builder.no_id, pad, "cpu", progress=False
    )
    have, _ = cached.evaluate(stock, settings, prompts, builder.yes_id, builder.no_id, pad, trainer, {},
                              progress=False, store=None)  # fmt: skip
    assert np.max(np.abs(want - have)) < 1e-4 * max(1.0, np.abs(want).max())


@pytest.mark.parametrize("case, accum", [(CASES[0], 1), (CASES[1], 3)], ids=["default", "layers-accum3"])
def test_streamed_prefixes_match_stock_pyreft(tiny, case, accum):
    """Streamed: each step runs its own prefixes without grad, then the suffix with grad."""
    model, tokenizer, builder, examples, prompts = tiny
    settings = {**BASE, **case}
    trainer = compose("trainer.epochs=2", "trainer.lr=0.02", f"trainer.batch_size={4 if accum == 1 else 2}",
                      f"trainer.grad_accum={accum}", "trainer.cache=streamed").trainer  # fmt: skip
    torch.manual_seed(0)
    stock = reft.build(model, settings)
    torch.manual_seed(0)
    fast = reft.build(model, settings)
    pad = tokenizer.pad_token_id
    ref = training.train(stock, settings, examples, trainer, pad, "cpu", seed=0, progress=False)
    got, info = cached.train_streamed(fast, settings, examples, trainer, pad, "cpu", 0, progress=False)
    assert info["source"] == "streamed" and info["prefix_seconds"] > 0
    assert got["steps"] == ref["steps"]
    assert np.max(np.abs(np.array(ref["losses"]) - got["losses"]) / np.abs(ref["losses"])) < 1e-4
    assert ((flat(stock) - flat(fast)).norm() / flat(stock).norm()).item() < 1e-4
    want = training.predict(
        stock, settings, prompts, builder.yes_id, builder.no_id, pad, "cpu", progress=False
    )
    have = cached.evaluate_streamed(
        stock, settings, prompts, builder.yes_id, builder.no_id, pad, 5, progress=False
    )
    assert np.max(np.abs(want - have)) < 1e-4 * max(1.0, np.abs(want).max())


FIRST = [
    {"layer": 1, "component": "block_output", "positions": "f1+l1"},  # two interventions per layer
    {"layer": [0, 2], "component": "block_output", "positions": "f2+l2", "share_weights": True},  # tied
    {"layer": 2, "component": "block_input", "positions": "f3"},
]


@pytest.mark.parametrize("case", FIRST, ids=lambda c: f"{c['component']}-L{c['layer']}-{c['positions']}")
def test_first_token_positions_residual_path_matches_stock_pyreft(tiny, case):
    """First-token positions: the stored residual stream below the interventions, the rest per step."""
    from reftlab import residual

    model, tokenizer, builder, examples, prompts = tiny
    settings = {**BASE, **case}
    trainer = compose("trainer.epochs=2", "trainer.lr=0.02", "trainer.batch_size=4").trainer
    torch.manual_seed(0)
    stock = reft.build(model, settings)
    torch.manual_seed(0)
    fast = reft.build(model, settings)
    pad = tokenizer.pad_token_id
    seqs, _ = cached.train_inputs(examples, 1)
    assert engine.choose(settings, fast, seqs, [1] * len(seqs), trainer)[0] == "residual"
    ref = training.train(stock, settings, examples, trainer, pad, "cpu", seed=0, progress=False)
    got, info = residual.train(fast, settings, examples, trainer, pad, "cpu", 0, progress=False)
    assert info["from_point"] == min(
        settings["layer"] if isinstance(settings["layer"], list) else [settings["layer"]]
    ) + (1 if case["component"] == "block_output" else 0)
    assert got["steps"] == ref["steps"]
    assert np.max(np.abs(np.array(ref["losses"]) - got["losses"]) / np.abs(ref["losses"])) < 1e-4
    moved = (flat(stock) - flat(reft.build(model, settings))).norm()
    assert moved > 0.1 and ((flat(stock) - flat(fast)).norm() / flat(stock).norm()).item() < 1e-4
    want = training.predict(
        stock, settings, prompts, builder.yes_id, builder.no_id, pad, "cpu", progress=False
    )
    have = residual.evaluate(stock, settings, prompts, builder.yes_id, builder.no_id, pad, 5, progress=False)
    assert np.max(np.abs(want - have)) < 1e-4 * max(1.0, np.abs(want).max())


def test_the_strategy_is_chosen_and_size_alone_never_means_stock(tiny):
    model, tokenizer, builder, examples, _ = tiny
    settings = {**BASE, **CASES[0]}
    seqs, suffix = cached.train_inputs(examples, 1)
    trained = reft.build(model, settings)
    assert cached.choose(settings, trained, seqs, suffix, compose().trainer) == ("stored", None)
    strategy, why = cached.choose(
        settings, trained, seqs, suffix, compose("trainer.cache_max_gb=0.000001").trainer
    )
    assert strategy == "streamed" and "trainer.cache_max_gb" in why
    assert (
        cached.choose(settings, trained, seqs, suffix, compose("trainer.cache=streamed").trainer)[0]
        == "streamed"
    )
    assert cached.choose(settings, trained, seqs, suffix, compose("trainer.cache=off").trainer)[0] == "stock"
    first = {**settings, "positions": "f1+l1"}
    assert engine.choose(first, reft.build(model, first), seqs, suffix, compose().trainer)[0] == "residual"
    tight = compose("trainer.cache_max_gb=0.000001").trainer
    strategy, why = engine.choose(first, reft.build(model, first), seqs, suffix, tight)
    assert strategy == "stock" and "first-token" in why and "residual cache" in why


def test_the_model_is_left_as_it_was(tiny):
    model, tokenizer, builder, examples, prompts = tiny
    before = model.config._attn_implementation
    settings = {**BASE, **CASES[0]}
    trainer = compose("trainer.batch_size=8").trainer
    cached.train(reft.build(model, settings), settings, examples, trainer, tokenizer.pad_token_id, "cpu", 0, {},
                 progress=False, store=None)  # fmt: skip
    assert model.config._attn_implementation == before
    assert all(not p.requires_grad for p in model.parameters())


@pytest.mark.parametrize(
    "change, words",
    [
        ({"positions": "f1+l1"}, "first-token"),
        ({"positions": "f2"}, "first-token"),
        ({"component": "mlp_output"}, "component=mlp_output"),
        ({"method": "lora"}, "not a ReFT"),
    ],
)
def test_stock_path_where_caching_is_not_exact(change, words):
    assert words in cached.why_not({**BASE, **CASES[0], **change})


def test_exact_settings_are_cached(tiny):
    model, *_ = tiny
    for case in CASES:
        assert cached.why_not({**BASE, **case}, model) is None


def test_cache_bound_falls_back_with_the_size_named(tiny):
    model, tokenizer, builder, examples, _ = tiny
    settings = {**BASE, **CASES[0]}
    seqs, suffix = cached.train_inputs(examples, 1)
    need = prefix_cache.estimate_bytes(model, 2, seqs, suffix)
    assert cached.plan(settings, reft.build(model, settings), seqs, suffix, need) is None
    reason = cached.plan(settings, reft.build(model, settings), seqs, suffix, need - 1)
    assert "trainer.cache_max_gb" in reason and "GB" in reason
    built = prefix_cache.build(model, 2, seqs, suffix, tokenizer.pad_token_id, progress=False)
    assert built.nbytes == need  # the estimate is the real size


def test_disk_store_round_trip_key_and_bound(tiny, tmp_path):
    model, tokenizer, builder, examples, _ = tiny
    seqs, suffix = cached.train_inputs(examples, 1)
    a = prefix_cache.build(model, 2, seqs, suffix, tokenizer.pad_token_id, progress=False)
    key = prefix_cache.cache_key(model, seqs, suffix, {})
    # other tokens (another max length, prompt or data version): another key; the layer is not in it
    assert key != prefix_cache.cache_key(model, [s[1:] for s in seqs], suffix, {})
    assert key != prefix_cache.cache_key(model, seqs, suffix, {"role": "eval"})
    store = prefix_cache.DiskStore(tmp_path, int(a.nbytes * 1.5))
    assert store.save(key, a)
    b = store.load(key, "cpu")
    assert torch.equal(a.keys, b.keys) and torch.equal(a.hidden, b.hidden)
    assert np.array_equal(a.prefix_len, b.prefix_len)
    # an entry from point 2 serves points 2 and above, not 1; nor a job whose memory bound it exceeds
    assert store.load(key, "cpu", start=3) is not None and store.load(key, "cpu", start=1) is None
    assert store.load(key, "cpu", max_bytes=a.nbytes // 2) is None
    # a second entry does not fit beside the first: the older one is removed
    other = prefix_cache.cache_key(model, seqs, suffix, {"role": "other"})
    assert store.save(other, a)
    assert store.load(key, "cpu") is None and store.load(other, "cpu") is not None
    # larger than the whole bound: not written
    assert not prefix_cache.DiskStore(tmp_path / "small", a.nbytes // 2).save(key, a)


def test_a_cache_from_a_lower_point_serves_a_higher_one(tiny):
    model, tokenizer, builder, examples, _ = tiny
    seqs, suffix = cached.train_inputs(examples, 2)
    pad = tokenizer.pad_token_id
    low = prefix_cache.build(model, 1, seqs, suffix, pad, batch_size=5, progress=False)
    for point in (1, 3, 4):  # the same point, one in the middle, after the last layer
        direct = prefix_cache.build(model, point, seqs, suffix, pad, batch_size=5, progress=False)
        derived = cached.advance(model, low, point, batch_size=7)
        assert derived.start == point and derived.keys.shape == direct.keys.shape
        assert torch.equal(derived.keys, direct.keys) and torch.equal(derived.values, direct.values)
        assert torch.allclose(derived.hidden, direct.hidden, rtol=1e-4, atol=1e-5)
        assert (direct.hidden - low.hidden).abs().max() > 1e-2 or point == 1  # it was run on, not copied
    with pytest.raises(ValueError, match="cannot serve point 0"):
        cached.advance(model, low, 0)


def test_training_from_a_shared_lower_cache_is_the_same(tiny):
    model, tokenizer, builder, examples, prompts = tiny
    settings = {**BASE, **CASES[0]}  # layer 1, block_output: point 2
    pad = tokenizer.pad_token_id
    results = {}
    for name, extra in [("own", []), ("shared", ["trainer.cache_from=0"])]:
        trainer = compose("trainer.epochs=2", "trainer.lr=0.02", "trainer.batch_size=4", *extra).trainer
        torch.manual_seed(0)
        trained = reft.build(model, settings)
        prefix_cache.clear_memory()
        results[name] = cached.train(trained, settings, examples, trainer, pad, "cpu", 0, {}, progress=False,
                                     store=None) + (flat(trained),)  # fmt: skip
        # evaluation through the same (lower) shared cache
        scores, info = cached.evaluate(trained, settings, prompts, builder.yes_id,
                                       builder.no_id, pad, trainer, {}, progress=False, store=None)  # fmt: skip
        results[name] += (scores, info)
    (own, own_info, own_w, own_s, _), (got, got_info, got_w, got_s, got_e) = results["own"], results["shared"]
    assert own_info["from_point"] == 2 and got_info["from_point"] == 0 and got_e["from_point"] == 0
    assert np.allclose(own["losses"], got["losses"], rtol=1e-4)
    assert ((own_w - got_w).norm() / own_w.norm()).item() < 1e-4
    assert np.max(np.abs(own_s - got_s)) < 1e-4 * max(1.0, np.abs(own_s).max())


def test_a_lower_shared_point_that_does_not_fit_falls_back_to_the_jobs_own(tiny):
    model, tokenizer, builder, examples, _ = tiny
    settings = {**BASE, **CASES[0]}
    seqs, suffix = cached.train_inputs(examples, 1)
    own = prefix_cache.estimate_bytes(model, 2, seqs, suffix)
    spec = cached.InterventionSpec.of(settings, 4)
    trained = reft.build(model, settings)
    assert cached.build_point(spec, trained, seqs, suffix, own * 10, 0) == 0
    assert cached.build_point(spec, trained, seqs, suffix, own, 0) == 2  # from 0 it would not fit
    assert cached.build_point(spec, trained, seqs, suffix, own * 10, 3) == 2  # above the job's: ignored
    assert cached.build_point(spec, trained, seqs, suffix, own * 10, None) == 2


def test_runs_log_their_path_and_reuse_the_cache(in_root, mlflow_uri, tmp_path):
    from reftlab import run

    common = tiny_overrides("model.num_layers=3", f"mlflow.tracking_uri={mlflow_uri}", "save_intervention=false",
                            f"trainer.cache_dir={tmp_path / 'prefix'}")  # fmt: skip
    metrics = {}
    for name, extra in [
        ("auto", []),
        ("again", ["seed=1"]),
        ("off", ["trainer.cache=off"]),
        ("first", ["intervention.positions=f1+l1"]),
        ("first_off", ["intervention.positions=f1+l1", "trainer.cache=off"]),
        ("small", ["trainer.cache_max_gb=0.000001"]),
    ]:
        prefix_cache.clear_memory()  # a new job: the training cache must come from disk
        cfg = compose(*common, f"run_name={name}", *extra)
        metrics[name] = run.run(cfg, tmp_path / name)
    df = runs(mlflow_uri).set_index("tags.mlflow.runName")
    assert (df["status"] == "FINISHED").all()
    assert df.loc["auto", "tags.train_path"] == "cached" and df.loc["auto", "tags.eval_path"] == "cached"
    assert df.loc["auto", "tags.cache_source"] == "built"
    assert df.loc["again", "tags.cache_source"] == "disk"
    assert (
        df.loc["off", "tags.train_path"] == "pyreft"
        and df.loc["off", "tags.train_path_reason"] == "trainer.cache=off"
    )
    # first-token positions: the residual path, with the stock path's result
    assert (
        df.loc["first", "tags.train_path"] == "residual" and df.loc["first", "tags.eval_path"] == "residual"
    )
    assert "first-token" in df.loc["first", "tags.train_path_reason"]
    assert df.loc["first_off", "tags.train_path"] == "pyreft"
    assert metrics["first"]["accuracy"] == metrics["first_off"]["accuracy"]
    assert abs(metrics["first"]["train_loss_last"] - metrics["first_off"]["train_loss_last"]) < 1e-4 * abs(
        metrics["first_off"]["train_loss_last"]
    )
    assert df.loc["auto", "metrics.cache_mb"] > 0
    # a cache over the bound: streamed prefixes (exact), not the stock path
    assert (
        df.loc["small", "tags.train_path"] == "streamed" and df.loc["small", "tags.eval_path"] == "streamed"
    )
    assert "trainer.cache_max_gb" in df.loc["small", "tags.train_path_reason"]
    assert metrics["small"]["accuracy"] == metrics["auto"]["accuracy"]
    # the same job with and without the cache: same result (fp32)
    assert metrics["auto"]["accuracy"] == metrics["off"]["accuracy"]
    assert abs(metrics["auto"]["train_loss_last"] - metrics["off"]["train_loss_last"]) < 1e-4 * abs(
        metrics["off"]["train_loss_last"]
    )


@pytest.mark.parametrize(
    "bad, words",
    [
        ("trainer.cache=maybe", "['auto', 'streamed', 'off']"),
        ("trainer.cache_max_gb=-1", ">= 0"),
        ("trainer.cache_from=-2", "layer >= 0"),
    ],
)
def test_bad_cache_settings_are_named(bad, words):  # a non-integer cache_from: test_lose_nothing (schema)
    from reftlab import validate

    with pytest.raises(validate.ConfigError, match="trainer.cache") as e:
        validate.check_trainer(compose(bad).trainer)
    assert words in str(e.value)
