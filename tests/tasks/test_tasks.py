"""Tasks score answers as a direct computation would: Yes/No as logit(Yes) - logit(No), k labels and
multiple-choice options by the log-likelihood of each whole answer; their metrics; bad input is
refused before any model loads."""

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import compose

from reftlab import methods, tasks, validate
from reftlab.engine import StockScorer
from reftlab.tasks.chat import PromptBuilder
from reftlab.tasks.choice import KEYWORD, Choice
from reftlab.tasks.classify import label_metrics, softmax


def direct_loglik(model, prompt: list[int], answer: list[int]) -> float:
    """log P(answer | prompt) summed over the answer's tokens, from one forward pass of the plain model."""
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([prompt + answer])).logits[0].float()
    logp = torch.log_softmax(logits[len(prompt) - 1 : -1], dim=-1)
    return float(logp[torch.arange(len(answer)), torch.tensor(answer)].sum())


def scorer_of(model, tokenizer):
    method = methods.get("none")
    cfg = compose("model=tiny_random", "intervention=none")
    from omegaconf import OmegaConf

    settings = {**OmegaConf.to_container(cfg.intervention), "num_layers": model.config.num_hidden_layers}
    return StockScorer(model, method, settings, tokenizer.pad_token_id, progress=False)


def test_yes_no_scores_are_the_yes_minus_no_logit_at_the_last_prompt_token(tiny4):
    model, tokenizer, builder, _, prompts = tiny4
    frame = pd.DataFrame(
        {"text": ["a fine hotel", "awful, truly awful!!!", "ok"], "label": ["Yes", "No", "No"]}
    )
    task = tasks.get(None)  # a run logged before tasks existed: Yes/No
    scores = task.score(scorer_of(model, tokenizer), builder, frame, 2)
    for prompt, score in zip(builder.prompts(frame["text"]), scores, strict=True):
        with torch.no_grad():
            last = model(input_ids=torch.tensor([prompt])).logits[0, -1].float()
        assert score == pytest.approx(float(last[builder.yes_id] - last[builder.no_id]), rel=1e-5, abs=1e-6)
    m = task.metrics(frame, scores)
    assert m["accuracy"] == np.mean((scores > 0) == (frame["label"] == "Yes"))


def test_k_labels_are_scored_by_the_log_likelihood_of_each_whole_answer(tiny4):
    """Labels that share a first token ("half-true" / "half-false") are still told apart."""
    model, tokenizer, *_ = tiny4
    cfg = compose("model=tiny_random", "task=classify", "task.labels=[half-true,half-false,mostly-true]",
                  "trainer.max_length=64")  # fmt: skip
    task = tasks.of(cfg)
    frame = pd.DataFrame(
        {"text": ["the claim is odd", "a plain claim"], "label": ["half-true", "mostly-true"]}
    )
    builder = task.builder(tokenizer, cfg)
    first = {lab: builder.answer_ids[lab][0] for lab in task.labels}
    assert first["half-true"] == first["half-false"]  # the first token alone could not tell them apart
    scores = task.score(scorer_of(model, tokenizer), builder, frame, 2)
    assert scores.shape == (2, 3)
    for i, prompt in enumerate(builder.prompts(frame["text"])):
        for j, lab in enumerate(task.labels):
            assert scores[i, j] == pytest.approx(
                direct_loglik(model, prompt, builder.answer_ids[lab]), rel=1e-5
            )
    table = task.table(frame, scores)
    assert list(table["prediction"]) == [task.labels[j] for j in scores.argmax(1)]
    assert np.allclose([p.sum() for p in table["probabilities"]], 1)


def test_label_metrics_for_k_classes():
    labels = ["a", "b", "c"]
    truth = ["a", "a", "b", "c", "c", "c"]
    scores = np.log(np.array([[0.8, 0.1, 0.1], [0.2, 0.7, 0.1], [0.1, 0.8, 0.1],
                              [0.1, 0.1, 0.8], [0.6, 0.2, 0.2], [0.2, 0.2, 0.6]]))  # fmt: skip
    m = label_metrics(labels, truth, scores)
    assert m["accuracy"] == pytest.approx(4 / 6) and m["chance"] == pytest.approx(3 / 6)
    assert m["precision.a"] == pytest.approx(1 / 2) and m["recall.a"] == pytest.approx(1 / 2)
    assert m["recall.c"] == pytest.approx(2 / 3) and m["precision.b"] == pytest.approx(1 / 2)
    from sklearn.metrics import f1_score, log_loss, roc_auc_score

    pred = np.array(labels)[scores.argmax(1)]
    assert m["f1"] == pytest.approx(f1_score(truth, pred, average="macro"))
    assert m["log_loss"] == pytest.approx(log_loss(truth, np.exp(scores), labels=labels))
    assert m["roc_auc"] == pytest.approx(
        roc_auc_score(truth, softmax(scores), multi_class="ovr", labels=labels)
    )


def choice_frame() -> pd.DataFrame:
    rows = [("Which is a fruit?", ["a stone", "an apple", "a cloud"], 1),
            ("Is water wet?", ["true", "false"], 0),
            ("Pick the largest", ["one", "two", "three", "four", "five"], 4)]  # fmt: skip
    out = []
    for q, options, right in rows:
        keys = [f"answer{i + 1}" for i in range(len(options))]
        text = (
            f"Please choose the correct answer to the question: {q}\n\n"
            + "\n".join(f"Answer{i + 1}: {o}" for i, o in enumerate(options))
            + "\n\nAnswer format: "
            + "/".join(keys)
        )
        out.append(
            {"text": text, "question": q, "options": options, "keys": keys, "label": keys[right], "group": q}
        )
    return pd.DataFrame(out)


def test_choice_scores_both_ways_as_direct_log_likelihoods(tiny4):
    model, tokenizer, *_ = tiny4
    cfg = compose("model=tiny_random", "task=choice", "trainer.max_length=128")
    task = tasks.of(cfg)
    frame = choice_frame()
    prepared = type("P", (), {"train": frame, "val": frame.iloc[:0], "eval": frame})()
    task.check_data(prepared)
    builder = task.builder(tokenizer, cfg)
    scores = task.score(scorer_of(model, tokenizer), builder, frame, 3)
    assert scores["keyword"].shape == (3, 5) and np.isnan(scores["keyword"][1, 2:]).all()
    for i, (prompt, row) in enumerate(zip(builder.prompts(frame["text"]), frame.itertuples(), strict=True)):
        for j, key in enumerate(row.keys):
            want = direct_loglik(model, prompt, builder.answer_ids[KEYWORD.format(key=key)])
            assert scores["keyword"][i, j] == pytest.approx(want, rel=1e-5)
        question, options = builder.harness(row.question, row.options)
        assert tokenizer.decode(question) == f"Question: {row.question}\nAnswer:"
        for j, cont in enumerate(options):
            assert scores["harness"][i, j] == pytest.approx(direct_loglik(model, question, cont), rel=1e-5)
            assert scores["chars"][i, j] == len(" " + row.options[j])
    m = task.metrics(frame, scores)
    right = np.array([1, 0, 4])
    assert m["acc"] == pytest.approx(np.mean(np.nanargmax(scores["harness"], 1) == right))
    assert m["acc_norm"] == pytest.approx(
        np.mean(np.nanargmax(scores["harness"] / scores["chars"], 1) == right)
    )
    assert m["chance"] == pytest.approx(np.mean([1 / 3, 1 / 2, 1 / 5]))
    table = task.table(frame, scores)
    assert set(table["prediction"]) <= {f"answer{i}" for i in range(1, 6)}


def test_a_long_choice_prompt_loses_part_of_its_question_never_its_options(tiny4):
    """At a max_length too short for the instruction, a choice prompt keeps the instruction's start and
    its end (the options and the answer format); a Yes/No prompt is cut at its end, as it always was."""
    tokenizer = tiny4[1]
    cfg = compose("model=tiny_random", "task=choice", "trainer.max_length=96")
    task = tasks.of(cfg)
    frame = choice_frame()
    builder = task.builder(
        tokenizer, cfg, type("P", (), {"train": frame, "val": frame.iloc[:0], "eval": frame})()
    )
    from reftlab.data.choice import build_text

    options = ["red", "green", "blue"]
    text = build_text("Which colour " + "is very much the colour " * 40 + "of the sky?", options,
                      ["answer1", "answer2", "answer3"])  # fmt: skip
    full = tokenizer(text, add_special_tokens=False)["input_ids"]
    (prompt,) = builder.prompts([text])
    body = prompt[len(builder.before) : len(prompt) - len(builder.after)]
    assert len(prompt) == 96 and len(full) > builder.budget
    assert body == full[: builder.HEAD] + full[len(full) - (builder.budget - builder.HEAD) :]
    kept = tokenizer.decode(body)
    assert all(f"{k}: {o}" in kept for k, o in zip(("Answer1", "Answer2", "Answer3"), options, strict=True))
    assert kept.endswith("Answer format: answer1/answer2/answer3") and "of the sky?" in kept
    yes_no = tasks.get(None).builder(tokenizer, compose("trainer.max_length=96"))
    (cut,) = yes_no.prompts([text])
    assert cut[len(yes_no.before) : len(cut) - len(yes_no.after)] == full[: yes_no.budget]


@pytest.mark.parametrize(
    "frame_change, message",
    [
        (lambda f: f.assign(label=["answer5", "answer1", "answer1"]), "answer 'answer5'"),  # answer5 of three
        (
            lambda f: f.assign(
                options=[["one"], ["true", "false"], list("abcde")],
                keys=[["answer1"], ["answer1", "answer2"], [f"answer{i}" for i in range(1, 6)]],
            ),
            "1 option",
        ),  # fmt: skip
        (lambda f: f.assign(label=["", "answer1", "answer1"]), "answer ''"),
        (lambda f: f.drop(columns=["options"]), "no options"),
    ],
)
def test_a_choice_example_that_cannot_be_scored_is_refused_naming_it(frame_change, message):
    from reftlab.data.recipes import DataError

    frame = frame_change(choice_frame())
    prepared = type("P", (), {"train": frame, "val": frame.iloc[:0], "eval": frame})()
    with pytest.raises(DataError, match=message):
        Choice(None).check_data(prepared)


def test_a_label_outside_the_given_labels_is_refused():
    from reftlab.data.recipes import DataError

    frame = pd.DataFrame({"text": ["x", "y"], "label": ["spam", "ham"]})
    prepared = type("P", (), {"train": frame, "val": frame.iloc[:0], "eval": frame})()
    task = tasks.of(compose("task=classify", "task.labels=[spam,eggs]"))
    with pytest.raises(DataError, match=r"label\(s\) \['ham'\] of the data are not in task.labels"):
        task.check_data(prepared)
    with pytest.raises(validate.ConfigError, match="at least 2 labels"):
        tasks.of(compose("task=classify", "task.labels=[spam]")).check(None)


def test_a_task_the_method_does_not_serve_stops_before_loading():
    cfg = compose("intervention=tfidf", "task=choice", "data=arc_easy")
    with pytest.raises(validate.ConfigError, match=r"task=choice is not served by intervention.method=tfidf"):
        validate.check(cfg, methods.get("tfidf"))
    with pytest.raises(validate.ConfigError, match="task.name='nope' is not valid: choose one of"):
        tasks.get({"name": "nope"})


def test_the_prompt_builder_of_the_yes_no_task_is_the_one_it_always_was(tiny4):
    """The same prompts, answers and first tokens as before tasks existed (the default job's)."""
    tokenizer = tiny4[1]
    builder = tasks.get(None).builder(tokenizer, compose("trainer.max_length=64"))
    plain = PromptBuilder(tokenizer, compose().data.system_prompt, 64)
    assert builder.answer_ids == plain.answer_ids and (builder.yes_id, builder.no_id) == (
        plain.yes_id,
        plain.no_id,
    )
    assert builder.prompts(["a review"]) == plain.prompts(["a review"])


def test_runs_logged_before_tasks_existed_group_with_new_yes_no_runs():
    """A run without a task param answered Yes/No: the report puts it in the same group as a yes_no run."""
    from reftlab.report.runs import tidy

    base = {"status": "FINISHED", "tags.method": "loreft", "tags.data_hash": "d", "experiment_id": "1",
            "params.trainer.lr": "1e-3", "metrics.accuracy": 0.7, "start_time": pd.Timestamp("2026-01-01")}  # fmt: skip
    frame = pd.DataFrame([{**base, "run_id": "old", "params.seed": "1", "params.task.name": None},
                          {**base, "run_id": "new", "params.seed": "2", "params.task.name": "yes_no"},
                          {**base, "run_id": "k", "params.seed": "3", "params.task.name": "classify"}])  # fmt: skip
    assert list(tidy(frame)["task.name"]) == ["yes_no", "yes_no", "classify"]


@pytest.mark.slow
def test_a_setting_a_method_does_not_apply_is_no_part_of_the_jobs_identity():
    """Zero-shot's Yes/No hint: another hint is another job on Yes/No, the same job on a choice task."""
    from omegaconf import OmegaConf

    from reftlab.run import job_key

    def key(*overrides):
        cfg = compose("intervention=none", *overrides)
        method = methods.get("none")
        return job_key(cfg, method, OmegaConf.to_container(cfg, resolve=True), method.unused(cfg))

    assert key("intervention.hint=a") != key("intervention.hint=b")
    assert key("task=choice", "data=arc_easy", "intervention.hint=a") == key(
        "task=choice", "data=arc_easy", "intervention.hint=b"
    )


@pytest.mark.slow
def test_tfidf_and_zero_shot_answer_four_classes(in_root, mlflow_uri, tmp_path):
    """Ott et al.'s four classes: TF-IDF (multinomial logistic regression) beats the 4-class chance
    rate by far and logs every class's precision and recall; zero-shot scores the four labels."""
    from conftest import tiny_overrides

    from reftlab import run

    caps = ("data.max_val=40", "data.max_eval=80", f"mlflow.tracking_uri={mlflow_uri}")
    tfidf = run.run(
        compose("task=classify", "data=opinion_spam4", "intervention=tfidf", *caps), tmp_path / "tfidf"
    )
    assert tfidf["chance"] < 0.3 and tfidf["accuracy"] > tfidf["chance"] + 0.2
    assert {f"recall.{c} {p}" for c in ("deceptive", "truthful") for p in ("positive", "negative")} <= set(
        tfidf
    )
    zero = run.run(compose(*[o for o in tiny_overrides("task=classify", "data=opinion_spam4", "intervention=none", *caps)
                             if not o.startswith("intervention.layer")]), tmp_path / "none")  # fmt: skip
    assert 0 <= zero["accuracy"] <= 1 and zero["trainable_params"] == 0 and "val_f1" in zero
    # the Yes/No hint is not applied to four labels: not recorded as a param, named as unused
    from conftest import runs

    table = runs(mlflow_uri)
    (logged,) = table[table["params.intervention.method"] == "none"].to_dict("records")
    assert (
        not isinstance(logged.get("params.intervention.hint"), str) and "metrics.hint_accuracy" not in table
    )
    assert logged["tags.unused_settings"].startswith("intervention.hint: a Yes/No hint")


def test_reports_name_chance_and_f1_as_the_task_computes_them():
    """The chance line is the majority label's rate for labels and 1/options for multiple choice; the
    F1 column is macro-F1 for k labels, said so where a table holds both kinds."""
    from reftlab.report.plots import chance_kind
    from reftlab.report.tables import f1_label
    from reftlab.serving.card import results_table

    frame = lambda *names: pd.DataFrame({"task": list(names)})  # noqa: E731
    assert (
        chance_kind(frame("choice", "choice")) == "1/options" and chance_kind(frame("yes_no")) == "majority"
    )
    assert chance_kind(frame("classify", "choice")) == "majority or 1/options"
    assert chance_kind(pd.DataFrame({"method": ["loreft"]})) == "majority"  # a table from before tasks
    assert f1_label(frame("yes_no")) == "F1" and f1_label(frame("classify")) == "macro-F1"
    assert f1_label(frame("yes_no", "classify")) == "F1 (macro for classify)"
    card = results_table({"accuracy": 0.5, "f1": 0.4}, tasks.get({"name": "classify"}))
    assert "| accuracy | macro-F1 |" in card and "| accuracy | F1 |" in results_table({}, tasks.get(None))
