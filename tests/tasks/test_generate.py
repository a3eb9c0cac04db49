"""Generated answers (`task=generate`) and scoring by generation: extractors, the arithmetic data,
decoding with the intervention on the prompt only (exact against transformers' and pyreft's own
generate on the tiny model), training on long targets (cached = stock, loss and gradients), bad
settings refused before any model loads, and a whole job's records."""

import json
import logging

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import ROOT, compose

from reftlab import methods, reft, tasks, validate
from reftlab.data import recipes
from reftlab.engine import Engine, StockScorer, clear_caches
from reftlab.engine import loop as engine_loop
from reftlab.engine.generate import Decoding
from reftlab.engine.loop import left_pad
from reftlab.engine.strategies import BY_NAME, Stock, attention_implementation
from reftlab.tasks.extract import Extractor

GENERATE_JOB = (
    "task=generate",
    "data=gsm8k",
    "task.max_new_tokens=6",
    "task.max_target_tokens=24",
    "trainer.max_length=96",
)
LOREFT = {"method": "loreft", "rank": 4, "share_weights": False, "dropout": 0.0}
MULTI = {**LOREFT, "layer": [0, 2], "component": "block_output", "positions": "f2+l2"}


# --- extractors -------------------------------------------------------------------------------------


def test_extractors_read_answers_as_the_paper_scores_them():
    number = Extractor("last_number")
    assert number("18 + 24 = 42 apples, so 1,250 in all.\nThe answer is 1,250.") == "1250"
    assert (
        number.same("1250.", "1250")
        and number.same("0.3334", "0.3333")
        and not number.same("0.335", "0.3333")
    )
    assert number("-3 degrees") == "-3" and number("no number here") is None and not number.same(None, "3")
    assert (
        Extractor("letter")("so the answer is (C) 12, not A") == "C" and Extractor("letter")("none") is None
    )
    keyword = Extractor("keyword", ["answer1", "answer10", "true"])
    assert keyword("the correct answer is answer10") == "answer10" and keyword("it is TRUE") is None
    assert Extractor("exact")("  Paris \n") == "Paris"
    regex = Extractor("regex", pattern=r"answer is (\w+)")
    assert regex("the answer is blue, really") == "blue" and regex("blue") is None
    assert Extractor("regex", pattern=r"\d+")("room 101") == "101"  # no group: the whole match


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["task.max_new_tokens=0"], r"task.max_new_tokens=0 is not valid: give a number of tokens >= 1"),
        (["task.max_target_tokens=-1"], r"task.max_target_tokens=-1 is not valid"),
        (["task.extractor=words"], r"task.extractor='words' is not valid: choose one of last_number, letter, keyword"),
        (["task.extractor=keyword"], r"task.extractor=keyword needs task.keywords"),
        (["task.extractor=regex", "task.pattern='(unclosed'"], r"task.pattern='\(unclosed' is not a valid regular"),
        (["data.extractor=null"], r"task.extractor is not set and the data names none: choose one of last_number"),
        (["task.do_sample=true", "task.temperature=0"], r"task.temperature=0.0 is not valid with task.do_sample"),
        (["task.top_p=0"], r"task.top_p=0.0 is not valid"),
        (["data=opinion_spam"], r"task=generate needs data with target texts to train on \(data.recipe=arithmetic"),
    ],
)  # fmt: skip
def test_bad_generate_settings_stop_before_any_model_loads(overrides, message):
    cfg = compose("model=tiny_random", "intervention.layer=1", "task=generate", "data=gsm8k", *overrides)
    with pytest.raises(validate.ConfigError, match=message):
        validate.check(cfg, methods.get("loreft"))


def test_arithmetic_data_feeds_only_the_generate_task_and_tfidf_cannot_generate():
    with pytest.raises(
        validate.ConfigError, match=r"task=yes_no cannot use data=gsm8k: .* run it with task=generate"
    ):
        validate.check(
            compose("model=tiny_random", "intervention.layer=1", "data=gsm8k"), methods.get("loreft")
        )
    with pytest.raises(
        validate.ConfigError, match=r"task=generate is not served by intervention.method=tfidf"
    ):
        validate.check(compose("intervention=tfidf", "task=generate", "data=gsm8k"), methods.get("tfidf"))


# --- data -------------------------------------------------------------------------------------------


def prepared(*overrides):
    cfg = compose("task=generate", *overrides).data
    for key in ("path", "test_path"):
        if cfg.get(key) is not None and not recipes.is_url(cfg[key]):
            cfg[key] = str(ROOT / cfg[key])
    return recipes.prepare(cfg), cfg


def test_gsm8k_targets_are_its_solutions_without_calculator_notes_ending_with_the_answer(tmp_path):
    shipped = ROOT / "data/reft_tasks/arithmetic/gsm8k/train.jsonl"
    small = tmp_path / "train.jsonl"  # GSM8K's first 200 solutions: the recipe reads each file whole
    small.write_text("".join(shipped.read_text().splitlines(keepends=True)[:200]))
    data, _ = prepared(
        "data=gsm8k", f"data.path={small}", "data.max_train=40", "data.max_val=10", "data.max_eval=20"
    )
    raw = pd.read_json(small, lines=True)
    by_question = dict(zip(raw["question"], raw["answer"], strict=True))
    for row in data.train.itertuples():
        solution = by_question[row.text]
        assert "<<" not in row.target and row.target.endswith(f"\nThe answer is {row.label}.")
        assert row.label == solution.rsplit("####", 1)[1].strip().replace(",", "")
        assert Extractor("last_number").same(Extractor("last_number")(row.target), row.label)
    assert len(data.eval) == 20 and set(data.eval["text"]).isdisjoint(data.train["text"])
    kept, _ = prepared("data=gsm8k", f"data.path={small}", "data.max_train=40", "data.max_val=10", "data.max_eval=20",
                       "data.calculator_notes=true")  # fmt: skip
    assert kept.train["target"].str.contains("<<").any()
    assert kept.version() != data.version()  # the targets are part of what a run saw
    aqua, cfg = prepared("data=aqua", f"data.path={small}", "data.max_train=8", "data.max_eval=30")
    assert set(aqua.eval["label"]) <= set("ABCDE") and cfg.extractor == "letter"
    assert aqua.train["target"].str.endswith(".").all()  # trained on GSM8K's solutions
    mawps, _ = prepared("data=mawps", f"data.path={small}", "data.max_train=8")
    assert len(mawps.eval) == 234 and (mawps.eval["target"] == "").all()  # 238, 4 repeated questions dropped


def test_the_hub_config_reads_gsm8k_from_openais_pinned_commit():
    hub = compose("task=generate", "data=gsm8k_hub").data
    commit = "3101c7d5072418e28b9008a6636bde82a006892c"
    assert (
        hub.path
        == f"https://raw.githubusercontent.com/openai/grade-school-math/{commit}/grade_school_math/data/train.jsonl"
    )
    assert hub.test_path == hub.path.replace("train.jsonl", "test.jsonl") and hub.name == "gsm8k"
    shipped = ROOT / "data/reft_tasks/arithmetic/gsm8k"
    from_hub, _ = prepared("data=gsm8k_hub", f"data.path={shipped / 'train.jsonl'}",
                           f"data.test_path={shipped / 'test.jsonl'}", "data.max_train=24", "data.max_eval=16")  # fmt: skip
    local, _ = prepared("data=gsm8k", "data.max_train=24", "data.max_eval=16")
    assert from_hub.version() == local.version()


def test_a_problem_without_a_gold_answer_is_refused_naming_its_row(tmp_path):
    path = tmp_path / "mine.jsonl"
    rows = [{"question": "1+1?", "answer": "1+1=2\n#### 2"}, {"question": "2+2?", "answer": "four"}]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    with pytest.raises(
        recipes.DataError, match=r"1 row\(s\) of data.path=.* have no question or no gold answer \(rows 2"
    ):
        prepared("data=gsm8k", f"data.path={path}", "data.max_train=2")


def test_an_unreadable_gold_answer_is_counted_wrong_and_named(caplog):
    task = tasks.of(compose("task=generate", "data=gsm8k"))
    frame = pd.DataFrame({"text": ["a", "b", "c"], "label": ["12", "n/a", "7"], "target": ["x", "y", "z"]})
    data = recipes.Prepared("mine", frame, frame, frame, {}, frame)
    with caplog.at_level(logging.WARNING):
        task.check_data(data)
    assert "1 of 3 test gold answers cannot be read by task.extractor=last_number (rows 2" in caplog.text
    scores = {"generated": np.asarray(["so 12", "so 3", "nothing"], dtype=object), "tokens": np.asarray([2, 2, 1]),
              "stopped": np.asarray([True, True, False])}  # fmt: skip
    metrics = task.metrics(frame, scores)
    assert metrics["accuracy"] == pytest.approx(1 / 3) and metrics["gold_unreadable"] == 1
    assert metrics["no_answer_rate"] == pytest.approx(1 / 3) and metrics["unfinished_rate"] == pytest.approx(
        1 / 3
    )
    table = task.table(frame, scores)
    assert list(table["correct"]) == [1, 0, 0] and list(table["answer"]) == ["12", "3", ""]


# --- decoding ---------------------------------------------------------------------------------------


def hf_generate(model, prompts, n, pad_id):
    out = []
    for p in prompts:
        ids = model.generate(torch.tensor([p]), attention_mask=torch.ones(1, len(p), dtype=torch.long), max_new_tokens=n,
                             do_sample=False, eos_token_id=None, pad_token_id=pad_id)  # fmt: skip
        out.append(ids[0, len(p) :].tolist())
    return out


def loreft_engine(tiny4, settings, *trainer):
    torch.manual_seed(0)
    trained = reft.build(tiny4[0], settings)
    clear_caches()
    return Engine(trained, methods.get("loreft"), settings, compose(*trainer).trainer, tiny4[1].pad_token_id, "cpu",
                  store=None, progress=False)  # fmt: skip


def test_an_identity_intervention_generates_the_frozen_models_own_tokens(tiny4):
    """LoReFT with W = R and b = 0 changes nothing: on several layers, first and last positions,
    prompts of 4 lengths batched with left padding, the tokens transformers' `generate`
    gives the frozen model one prompt at a time."""
    model, tokenizer, _, _, prompts = tiny4
    prompts = [p[: 30 + 9 * i] for i, p in enumerate(prompts[:4])]
    engine = loreft_engine(tiny4, MULTI)
    with torch.no_grad():
        for iv in reft.interventions(engine.ctx.trained):
            iv.learned_source.weight.copy_(iv.rotate_layer.weight.T)
            iv.learned_source.bias.zero_()
    assert len({len(p) for p in prompts}) > 1
    want = hf_generate(model, prompts, 8, tokenizer.pad_token_id)
    got = engine.generate(prompts, Decoding(max_new_tokens=8), batch_size=3)
    assert got.tokens == want and not got.stopped.any() and got.new_tokens == 32
    zero = StockScorer(model, methods.get("none"), {"method": "none", "layer": None}, tokenizer.pad_token_id, "cpu",
                       progress=False).generate(prompts, Decoding(max_new_tokens=8), 3)  # fmt: skip
    assert zero.tokens == want


def test_a_trained_intervention_acts_on_the_prompt_only_as_pyreft_generates(tiny4):
    """A (random, so non-identity) LoReFT on two layers at f2+l2: the tokens pyreft's own
    `generate(..., intervene_on_prompt=True)` gives, and not the frozen model's."""
    from reftlab.spec import InterventionSpec, unit_locations

    model, tokenizer, _, _, prompts = tiny4
    engine = loreft_engine(tiny4, MULTI)
    with torch.no_grad():
        for iv in reft.interventions(engine.ctx.trained):
            iv.learned_source.bias.normal_(0, 2.0)  # a strong edit: the tokens must change
    got = engine.generate(prompts[:4], Decoding(max_new_tokens=8), batch_size=4).tokens
    spec = InterventionSpec.of(MULTI, model.config.num_hidden_layers)
    for p, mine in zip(prompts[:4], got, strict=True):
        enc = left_pad([p], tokenizer.pad_token_id, "cpu")
        with torch.no_grad():
            _, out = engine.ctx.trained.generate({"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]},
                                                 unit_locations=unit_locations(spec, [len(p)], enc["starts"]),
                                                 intervene_on_prompt=True, max_new_tokens=8, do_sample=False,
                                                 eos_token_id=None, pad_token_id=tokenizer.pad_token_id)  # fmt: skip
        assert out[0, len(p) :].tolist() == mine
    assert got != hf_generate(model, prompts[:4], 8, tokenizer.pad_token_id)


@pytest.mark.parametrize(
    "settings", [{**LOREFT, "layer": 1, "component": "block_output", "positions": "l2"}, MULTI]
)
def test_the_first_generated_token_is_the_argmax_of_the_training_paths_logits(tiny4, settings):
    model, tokenizer, _, _, prompts = tiny4
    engine = loreft_engine(tiny4, settings)
    with torch.no_grad():
        for iv in reft.interventions(engine.ctx.trained):
            iv.learned_source.bias.normal_(0, 2.0)
    first = [t[0] for t in engine.generate(prompts, Decoding(max_new_tokens=1), batch_size=5).tokens]
    with torch.no_grad():
        stock = Stock(engine.ctx)
        logits = torch.cat([stock.logits(prompts[i : i + 4], [len(p) for p in prompts[i : i + 4]], 1)[:, -1]
                            for i in range(0, len(prompts), 4)])  # fmt: skip
    assert first == logits.argmax(-1).tolist()
    # the engine's own strategy (cached or residual) ranks that token first among others too
    plan = engine.plan(prompts, [engine.ctx.spec.last] * len(prompts))
    assert plan.strategy in ("cached", "residual")
    others = [[[t] for t in dict.fromkeys([f, 5, 77, 1000, 4000, 20000])] for f in first]
    found = engine.loglik(prompts, others, 8)
    assert [int(np.argmax(v)) for v in found] == [0] * len(prompts)


def test_decoding_stops_at_a_stop_token_and_samples_reproducibly(tiny4):
    model, tokenizer, _, _, prompts = tiny4
    scorer = StockScorer(model, methods.get("none"), {"method": "none", "layer": None}, tokenizer.pad_token_id, "cpu",
                         progress=False)  # fmt: skip
    greedy = scorer.generate(prompts[:4], Decoding(max_new_tokens=6), 4).tokens
    stop = greedy[0][2]  # a token the first prompt generates ends it
    stopped = scorer.generate(prompts[:4], Decoding(max_new_tokens=6, stop_ids=(stop,)), 4)
    assert stopped.stopped[0] and len(stopped.tokens[0]) <= 2
    for mine, full, ended in zip(stopped.tokens, greedy, stopped.stopped, strict=True):
        assert mine == (full[: full.index(stop)] if stop in full else full) and ended == (stop in full)
    sample = Decoding(max_new_tokens=8, do_sample=True, temperature=1.5, top_k=50, top_p=0.95, seed=3)
    once, again = (scorer.generate(prompts[:4], sample, 4).tokens for _ in range(2))
    other = scorer.generate(prompts[:4], Decoding(**{**sample.__dict__, "seed": 4}), 4).tokens
    assert once == again and once != other and once != greedy


def test_lora_generates_what_its_peft_model_generates(tiny4):
    model, tokenizer, _, _, prompts = tiny4
    method = methods.get("lora")
    cfg = compose("model=tiny_random", "model.num_layers=4", "intervention=lora")
    settings = method.settings(cfg, 4)
    torch.manual_seed(0)
    trained = method.build(model, settings, None)
    with torch.no_grad():
        for name, p in trained.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)  # peft starts B at zero: make the adapter change something
    trained.eval()  # as after training: no dropout
    asked = [p[: 40 + 8 * i] for i, p in enumerate(prompts[:3])]
    try:
        scorer = StockScorer(trained, method, settings, tokenizer.pad_token_id, "cpu", progress=False)
        got = scorer.generate(asked, Decoding(max_new_tokens=6), 3).tokens
        assert got == hf_generate(trained, asked, 6, tokenizer.pad_token_id)
        with trained.disable_adapter():
            assert got != hf_generate(trained, asked, 6, tokenizer.pad_token_id)
    finally:
        trained.unload()  # the shared tiny model without adapters again


# --- training on long targets -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "settings, strategy",
    [({**LOREFT, "layer": 1, "component": "block_output", "positions": "l2"}, "cached"), (MULTI, "residual")],
)
def test_training_on_long_targets_gives_the_stock_paths_loss_and_gradients(
    tiny4, settings, strategy, monkeypatch
):
    """Targets of 30-60 tokens, the answer loss in chunks of 16 tokens (checkpointed): the engine's
    path computes the stock pyreft path's loss and gradients to 1e-5."""
    monkeypatch.setattr(engine_loop, "CHUNK", 16)
    model, tokenizer, _, examples, _ = tiny4
    g = torch.Generator().manual_seed(0)
    long = [
        (p, torch.randint(5, 4000, (30 + 5 * (i % 7),), generator=g).tolist() + [2])
        for i, (p, _) in enumerate(examples[:8])
    ]
    engine = loreft_engine(tiny4, settings, "trainer.cache=auto")
    params = methods.get("loreft").trainable(engine.ctx.trained)

    def grads():
        out = torch.cat([p.grad.flatten().clone() for p in params])
        for p in params:
            p.grad = None
        return out

    loss = Stock(engine.ctx).batch_loss(long)
    loss.backward()
    want = grads()
    plan = engine.plan_training(long)
    assert plan.strategy == strategy
    runner_of = BY_NAME[strategy](engine.ctx, plan)
    if strategy == "cached":
        runner, cache, _ = runner_of.prepare([p for p, _ in long], [a[:-1] for _, a in long], 8)
        with attention_implementation(engine.ctx.model):
            total, _ = runner.step_loss(cache, [list(range(8))], [a for _, a in long], 8)
    else:
        runner, cache, _ = runner_of.prepare([p + a[:-1] for p, a in long], 8)
        total, _ = runner.step_loss(cache, [list(range(8))], long, 8)
    total.backward()
    have = grads()
    assert abs(total.item() - loss.item()) / loss.item() < 1e-5
    assert ((have - want).norm() / want.norm()).item() < 1e-5 and want.norm() > 0


# --- a whole job ------------------------------------------------------------------------------------


@pytest.mark.slow
def test_a_generate_job_records_its_answers_and_its_model_serves_them(tiny_job):
    """A tiny job on GSM8K: the metrics of a generated answer, the predictions (generated text,
    extracted and gold answers, correct) on disk and as an MLflow table, the decoding settings as
    params, the report's per-question correctness from them, and the saved model answering with its
    generated text and extracted answer as the run did."""
    import mlflow
    from conftest import runs

    from reftlab.report import runs as report_runs
    from reftlab.serving import predict

    overrides = GENERATE_JOB
    metrics, job, uri = tiny_job(*overrides)
    for name in ("accuracy", "val_accuracy", "no_answer_rate", "val_no_answer_rate", "mean_generated_tokens",
                 "unfinished_rate", "gold_unreadable", "tokens_per_second", "truncated_targets"):  # fmt: skip
        assert name in metrics, name
    assert (
        metrics["truncated_targets"] == 24 and 0 < metrics["mean_generated_tokens"] <= 6
    )  # every solution > 24 tokens
    assert metrics["tokens_per_second"] > 0
    table = pd.read_parquet(job / "predictions.parquet")
    assert {"generated", "answer", "gold", "correct", "generated_tokens", "stopped"} <= set(table.columns)
    number = Extractor("last_number")
    assert list(table["correct"]) == [
        int(number.same(number(t), g)) for t, g in zip(table["generated"], table["label"], strict=True)
    ]
    test = table[table["split"] == "test"]
    assert metrics["accuracy"] == pytest.approx(test["correct"].mean())
    found = runs(uri).iloc[0]
    assert found["params.task.max_new_tokens"] == "6" and found["params.task.extractor"] in (
        "None",
        None,
        "null",
    )
    client = mlflow.MlflowClient(uri)
    assert "predictions_sample.json" in [a.path for a in client.list_artifacts(found["run_id"])]
    mlflow.set_tracking_uri(uri)
    correct = report_runs.test_correct(found["run_id"])
    assert (
        correct is not None and int(correct.sum()) == int(test["correct"].sum()) and len(correct) == len(test)
    )
    mlflow.set_tracking_uri(None)
    served = predict.Classifier(job / "intervention")(list(test["text"][:3]), batch_size=2, progress=False)
    assert list(served.columns) == ["text", "generated", "answer"]
    assert list(served["generated"]) == list(test["generated"][:3])  # greedy: what the run generated


@pytest.mark.slow
def test_mlflow_models_serve_answers_a_generate_request_with_text_and_answer(in_root, tiny_job):
    """The run's MLflow model (a model from code) returns the generated text and the extracted answer,
    in Python and from `mlflow models serve`, as the saved folder answers."""
    import mlflow
    from conftest import runs
    from test_predict import logged_model, model_server, post
    from test_servers import wait_for_port

    from reftlab.serving import predict

    overrides = GENERATE_JOB
    _, job, uri = tiny_job(*overrides)
    asked = ["Tom has 3 apples and buys 4 more. How many apples does he have?", "What is 12 times 3?"]
    want = predict.Classifier(job / "intervention")(asked, progress=False)
    mlflow.set_tracking_uri(uri)
    model_uri = logged_model(runs(uri)["run_id"].iloc[0]).model_uri
    info = mlflow.models.get_model_info(model_uri)
    assert [c["name"] for c in info.signature.outputs.to_dict()] == ["generated", "answer"]
    got = mlflow.pyfunc.load_model(model_uri).predict(pd.DataFrame({"text": asked}))
    assert list(got["generated"]) == list(want["generated"]) and list(got["answer"]) == list(want["answer"])
    try:
        with model_server(model_uri, uri) as (port, server, _):
            wait_for_port(port, 120, server)
            status, answer = post(
                port, {"dataframe_split": {"columns": ["text"], "data": [[t] for t in asked]}}
            )
    finally:
        mlflow.set_tracking_uri(None)
    assert status == 200, answer
    served = pd.DataFrame(answer["predictions"])
    assert list(served["generated"]) == list(want["generated"]) and list(served["answer"]) == list(
        want["answer"]
    )


@pytest.mark.slow
def test_a_fused_sweep_of_generate_jobs_trains_together_and_each_generates_its_own(tmp_path, empty_store):
    """Two ranks fused on GSM8K's solutions: one group, each job its own FINISHED run, each decoding
    with its own trained intervention (the group shares training, not generation)."""
    from conftest import runs, store_in, tiny_overrides, train_here

    uri = store_in(tmp_path, empty_store)
    done = train_here("-m", "hydra/launcher=fused", *tiny_overrides(
        "model.num_layers=3", "trainer.epochs=2", "task=generate", "data=gsm8k", "intervention.rank=1,2",
        "task.max_new_tokens=4", "task.max_target_tokens=16", "trainer.max_length=96", "mlflow.log_model=false",
        f"mlflow.tracking_uri={uri}", f"hydra.sweep.dir={tmp_path / 'multirun'}", f"trainer.cache_dir={tmp_path / 'prefix'}"))  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    table = runs(uri)
    assert len(table) == 2 and (table["status"] == "FINISHED").all()
    assert (table["tags.fused_size"] == "2").all() and table["tags.fused_group"].nunique() == 1
    assert (table["metrics.tokens_per_second"] > 0).all() and table[
        "metrics.mean_generated_tokens"
    ].notna().all()
