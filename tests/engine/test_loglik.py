"""Log-likelihoods of continuations (the classify and choice tasks' scores) are exact and cheap on every
path: the cached and streamed paths give the stock path's numbers (tiny model, fp32) with each prompt
run once for all its continuations; a stored example keeps its own continuations only; the stock
path of a model that takes a KV cache runs each prompt once and its continuations from its keys."""

import copy
import json

import numpy as np
import pytest
import torch
from conftest import compose

from reftlab import methods, reft
from reftlab.engine import Engine, StockScorer, clear_caches, prefix, store
from reftlab.engine.strategies import Stock
from reftlab.spec import InterventionSpec
from reftlab.tasks.chat import PromptBuilder

BASE = {"method": "loreft", "rank": 4, "share_weights": False, "dropout": 0.0}
SETTINGS = {  # last-token positions: the stored prefix serves them
    "block_output-L1-l1": {"layer": 1, "component": "block_output", "positions": "l1"},
    "layers-l2": {"layer": [0, 2], "component": "block_output", "positions": "l2"},
    "block_input-L1-l3": {"layer": 1, "component": "block_input", "positions": "l3"},
}
KEYWORDS = tuple(f"the correct answer is answer{k}" for k in range(1, 5))


def choice_request(tiny4, seed: int = 0):
    """The tiny prompts, each with 2-5 continuations: some shared by every prompt (the task's answers),
    some its own (random token runs of 1-4 tokens, as a question's options are)."""
    _, tokenizer, builder, _, prompts = tiny4
    keyword = PromptBuilder(tokenizer, "sys", 64, answers=KEYWORDS).answer_ids
    shared = [builder.answer_ids["Yes"], builder.answer_ids["No"], keyword[KEYWORDS[0]], keyword[KEYWORDS[1]]]
    g = torch.Generator().manual_seed(seed)
    conts = []
    for i in range(len(prompts)):
        own = [torch.randint(5, 4000, (1 + (i + j) % 4,), generator=g).tolist() for j in range(i % 4)]
        conts.append((shared[: 2 + (i % 2)] + own)[:5] if own else shared[: 2 + (i % 3)])
    return prompts, conts


def trainer(mode: str = "auto", *extra: str):
    return compose(f"trainer.cache={mode}", *extra).trainer


def loreft_engine(tiny4, settings, trainer_cfg, disk=None, answers=(), seed: int = 0):
    torch.manual_seed(seed)
    trained = reft.build(tiny4[0], settings)
    return Engine(trained, methods.get("loreft"), settings, trainer_cfg, tiny4[1].pad_token_id, "cpu",
                  store=disk, progress=False, answers=answers)  # fmt: skip


def assert_close(have, want, rtol=1e-5):
    assert [len(h) for h in have] == [len(w) for w in want]
    have, want = np.concatenate(have), np.concatenate(want)
    assert np.isfinite(want).all() and (want < 0).all()
    assert np.max(np.abs(have - want) / np.abs(want)) < rtol


@pytest.mark.parametrize("name", SETTINGS)
def test_engine_loglik_on_a_loreft_job_equals_the_stock_path(tiny4, name):
    """Cached (the planner's choice) and streamed: pyreft's whole sequences' numbers to 1e-5, each
    prompt built once for all its continuations."""
    settings = {**BASE, **SETTINGS[name]}
    prompts, conts = choice_request(tiny4)
    for mode, path in (("auto", "cached"), ("streamed", "streamed")):
        clear_caches()
        engine = loreft_engine(tiny4, settings, trainer(mode))
        want = Stock(engine.ctx).loglik_whole(prompts, conts, 5)
        have = engine.loglik(prompts, conts, 5)
        assert engine.eval_path == path
        assert_close(have, want)
        if path == "cached":  # 16 prompts, 55 continuations: each prompt run once
            assert sum(map(len, conts)) > 3 * len(prompts)
            assert engine.eval_info["built"] == len(prompts) and engine.eval_info["reused"] == 0


@pytest.mark.parametrize("positions", ["l2", "f2+l2", "f3"])
def test_a_loreft_stock_path_runs_each_prompt_once_with_its_interventions(tiny4, positions):
    """pyreft's interventions act on prompt positions only: a prompt's intervened pass leaves the
    keys/values its continuations run on from through the frozen model, equal to whole sequences
    (first-token positions, tied or not, which no stored prefix serves, included)."""
    settings = {**BASE, "layer": [0, 2], "component": "block_output", "positions": positions,
                "share_weights": positions == "f2+l2"}  # fmt: skip
    prompts, conts = choice_request(tiny4, seed=3)
    engine = loreft_engine(tiny4, settings, trainer("off"), seed=3)
    for iv in methods.get("loreft").interventions(engine.ctx.trained):  # weights that change the output
        with torch.no_grad():
            for p in iv.parameters():
                p.add_(0.05 * torch.randn_like(p))
    stock = Stock(engine.ctx)
    have, _ = stock.loglik(prompts, conts, 4)
    assert_close(have, stock.loglik_whole(prompts, conts, 4))
    plain = loreft_engine(tiny4, {**settings, "rank": 1}, trainer("off"), seed=4)  # the interventions matter
    assert (
        np.abs(np.concatenate(have) - np.concatenate(Stock(plain.ctx).loglik_whole(prompts, conts, 4))).max()
        > 1e-3
    )


def test_a_prompt_repeated_for_k_continuations_is_built_once(tiny4):
    model, tokenizer, _, _, prompts = tiny4
    prompts, conts = choice_request(tiny4)
    repeated = [p for p, c in zip(prompts, conts, strict=True) for _ in c]
    tails = [tuple(x[:-1]) for c in conts for x in c]
    store.clear_memory()
    cache, source, _ = store.obtain(model, 2, repeated, 1, tails, tokenizer.pad_token_id, None, 4, False)
    assert (
        source == "built" and cache.meta["built"] == len(prompts) and len(cache.prefix_len) == len(repeated)
    )
    # the keys/values of a prompt are kept once, whatever the number of its continuations
    assert cache.keys.shape[1] == 1 + sum(len(p) - 1 for p in prompts)
    direct = prefix.build(model, 2, [p + list(t) for p, t in zip(repeated, tails, strict=True)],
                          [1 + len(t) for t in tails], tokenizer.pad_token_id, progress=False)  # fmt: skip
    for i in range(len(repeated)):  # each entry: what a pass over exactly its sequence stores
        for got, want in zip(entry(cache, i), entry(direct, i), strict=True):
            assert torch.allclose(got, want, atol=1e-5)


def entry(cache, i):
    p, m = cache.prefix_offset[i], cache.prefix_len[i]
    s, k = cache.suffix_offset[i], cache.suffix_len[i]
    return cache.keys[:, p : p + m], cache.values[:, p : p + m], cache.hidden[s : s + k]


def test_a_shard_stores_each_examples_own_continuations_once(tiny4, tmp_path):
    """Scoring a request whose examples each have their own options stores each example with its own
    (and the task's shared answers only beside examples scored with those alone): not N x N. A new
    job finds every entry on disk and gets the same numbers."""
    model = tiny4[0]
    builder = tiny4[2]
    disk = store.DiskStore(tmp_path, 10**9)
    settings = {**BASE, **SETTINGS["block_output-L1-l1"]}
    prompts, conts = choice_request(tiny4)
    answers = [tuple(a[:-1]) for a in (builder.answer_ids["Yes"], builder.answer_ids["No"])]
    clear_caches()
    engine = loreft_engine(tiny4, settings, trainer(), disk, answers)
    first = engine.loglik(prompts, conts, 4)
    model_id = store.model_identity(model)
    with disk.lock(store.builder_lock(model_id, 1, 2)):  # its background save is done
        ((_, meta),) = disk.shards(model_id)
    assert meta["format"] == 3
    stored = [[tuple(meta["tails"][k]) for k in ks] for ks in meta["example_tails"]]
    for own, conts_i in zip(stored, conts, strict=True):
        asked = list(dict.fromkeys(tuple(c[:-1]) for c in conts_i if len(c) > 1))  # a 1-token one: no rows
        assert own == (
            asked if not set(asked) <= set(answers) else asked + [a for a in answers if a not in asked]
        )
    with disk.reading(disk.shards(model_id)[0][0], meta) as handle:
        rows = handle.get_slice("hidden").get_shape()[0]
    assert rows == 1 + sum(1 + sum(map(len, own)) for own in stored)
    everything = len({t for own in stored for t in own})
    assert rows < 1 + len(prompts) * (1 + everything)  # what every example with every tail would take
    clear_caches()
    again = loreft_engine(tiny4, settings, trainer(), disk, answers)
    assert_close(again.loglik(prompts, conts, 4), first, rtol=1e-6)
    assert again.eval_info["source"] == "disk" and again.eval_info["built"] == 0


def test_a_shard_written_before_per_example_tails_is_read_as_it_is(tiny4, tmp_path):
    """Format 2 (every example holds every tail of the shard, no `example_tails`): still served."""
    model, tokenizer, builder, _, prompts = tiny4
    disk, pad = store.DiskStore(tmp_path, 10**9), tokenizer.pad_token_id
    shared = [tuple(a[:-1]) for a in builder.answer_ids.values()]
    old = prefix.build(
        model, 2, prompts, [1] * len(prompts), pad, tails=[shared] * len(prompts), progress=False
    )
    model_id = store.model_identity(model)
    about = {"model": model_id, "n": 1, "tails": [list(t) for t in shared],
             "examples": store.example_keys(model_id, prompts, 1)}  # fmt: skip
    assert disk.save("0" * 24, old, about)
    assert json.loads(disk.meta_path("0" * 24).read_text())["format"] == 2
    store.clear_memory()
    wanted = [shared[i % 2] for i in range(len(prompts))]
    cache, source, _ = store.obtain(model, 2, prompts, 1, wanted, pad, disk, 4, False)
    assert source == "disk" and cache.meta["built"] == 0
    direct = prefix.build(model, 2, [p + list(t) for p, t in zip(prompts, wanted, strict=True)],
                          [1 + len(t) for t in wanted], pad, progress=False)  # fmt: skip
    for i in range(len(prompts)):
        for got, want in zip(entry(cache, i), entry(direct, i), strict=True):
            assert torch.allclose(got, want, atol=1e-5)


def whole_sequences(stock, prompts, conts):
    """Each (prompt, continuation) run as one whole sequence through the stock path's model."""
    from reftlab.engine.strategies import continuation_logprobs

    with torch.no_grad():
        return [continuation_logprobs(stock.logits, [(p, c) for c in cs]).numpy()
                for p, cs in zip(prompts, conts, strict=True)]  # fmt: skip


def embedded_tokens(model, run) -> int:
    """How many token positions the model embedded while `run()` ran."""
    seen = []
    hook = model.get_input_embeddings().register_forward_hook(
        lambda m, args, out: seen.append(args[0].numel())
    )
    try:
        run()
    finally:
        hook.remove()
    return sum(seen)


def tree_tokens(conts) -> int:
    """The tokens of a prompt's continuations but their last ones, each shared first part once."""
    return len({tuple(c[:k]) for c in conts for k in range(1, len(c))})


def test_the_stock_path_of_the_plain_model_runs_each_prompt_once(tiny4):
    """Zero-shot: each prompt once, then its continuations from its keys/values; the numbers of whole
    sequences to 1e-5."""
    model, tokenizer = tiny4[:2]
    prompts, conts = choice_request(tiny4)
    scorer = StockScorer(
        model, methods.get("none"), {"method": "none"}, tokenizer.pad_token_id, progress=False
    )
    want = whole_sequences(scorer.stock, prompts, conts)
    have = []
    tokens = embedded_tokens(model, lambda: have.extend(scorer.loglik(prompts, conts, 1)))
    assert_close(have, want)
    # batches of one: the prompt's tokens once, then its continuations but their last tokens, the
    # first tokens several share ("the correct answer is answer") once
    assert tokens == sum(map(len, prompts)) + sum(map(tree_tokens, conts))
    assert sum(map(tree_tokens, conts)) < sum(max(len(c) - 1, 0) for cs in conts for c in cs)
    batched = scorer.loglik(prompts, conts, 5)  # left-padded batches, right-padded continuations
    assert_close(batched, want)


@pytest.mark.slow  # importing peft alone takes ~3 s, and no other fast test needs it
def test_the_stock_path_of_lora_runs_each_prompt_once(tiny4):
    """LoRA through peft takes the model's KV cache too: the same numbers as whole sequences."""
    model = copy.deepcopy(tiny4[0])  # peft changes the model it wraps
    tokenizer = tiny4[1]
    settings = {"method": "lora", "rank": 4, "alpha": 8.0, "dropout": 0.0, "target_modules": ["q_proj", "v_proj"],
                "layer": None}  # fmt: skip
    method = methods.get("lora")
    trained = method.build(model, settings, InterventionSpec.of(settings, 4))
    torch.manual_seed(0)
    for name, p in trained.named_parameters():
        if "lora_B" in name:  # peft starts B at zero: give the adapters an effect
            p.data.normal_(0, 0.05)
    engine = Engine(trained, method, settings, trainer(), tokenizer.pad_token_id, store=None, progress=False)
    prompts, conts = choice_request(tiny4)
    want = whole_sequences(Stock(engine.ctx), prompts, conts)
    have = []
    tokens = embedded_tokens(trained, lambda: have.extend(engine.loglik(prompts, conts, 1)))
    assert engine.eval_path == "stock"
    assert_close(have, want)
    assert tokens == sum(map(len, prompts)) + sum(map(tree_tokens, conts))
    unchanged = whole_sequences(StockScorer(tiny4[0], methods.get("none"), {"method": "none"},
                                            tokenizer.pad_token_id, progress=False).stock, prompts, conts)  # fmt: skip
    assert np.max(np.abs(np.concatenate(want) - np.concatenate(unchanged))) > 1e-3  # the adapters acted


@pytest.mark.parametrize("answers", [KEYWORDS, ("deceptive", "truthful", "half-true", "mostly-true")])
def test_training_on_a_choice_or_k_class_task_takes_the_cached_path_exactly(tiny4, answers):
    """Multi-token answers (the paper's "the correct answer is answerN", k labels): planned on the
    stored prefix as Yes/No is, with the stock path's per-step losses and trained weights."""
    model, tokenizer, _, examples, _ = tiny4
    builder = PromptBuilder(tokenizer, "sys", 64, answers=answers)
    ids = list(builder.answer_ids.values())
    data = [(p, ids[i % len(ids)]) for i, (p, _) in enumerate(examples)]
    settings = {**BASE, **SETTINGS["layers-l2"]}
    runs = {}
    for mode in ("auto", "off"):
        clear_caches()
        engine = loreft_engine(tiny4, settings, trainer(mode, "trainer.epochs=1", "trainer.lr=0.02",
                                                        "trainer.batch_size=4"), answers=builder.tails)  # fmt: skip
        if mode == "auto":
            assert engine.plan_training(data).strategy == "cached"
        runs[mode] = (engine.train(data, seed=0), engine)
    (cached, fast), (stock, slow) = runs["auto"], runs["off"]
    assert cached.path == "cached" and stock.path == "stock" and cached.steps == stock.steps == 6
    assert np.max(np.abs(np.array(cached.losses) - stock.losses) / np.abs(stock.losses)) < 1e-4
    fast, slow = (torch.cat([p.detach().flatten() for p in reft.trainable_parameters(e.ctx.trained)])
                  for e in (fast, slow))  # fmt: skip
    assert ((fast - slow).norm() / slow.norm()).item() < 1e-4
