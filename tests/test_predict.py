"""Serving (reftlab.serving): predict.py reads its texts (blank lines kept, missing texts and no texts
refused before any model loads) and checks its flags; the model card's commands are ones it takes; it
gives a run's own predictions back from the run or its folder. A run's MLflow model: load_model, `mlflow
models predict` and `mlflow models serve` give what predict.py gives, offline; it refuses a batch size
below 1 and missing texts (a 400 when served) and gives no rows for no rows; the model is logged from
code (nothing pickled) under the run's name, checks its input, and can be registered by name with the
run's results as tags."""

import contextlib
import io
import json
import os
import re
import shlex
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
from conftest import PYTHON, ROOT, compose, runs
from test_servers import free_port, wait_for_port

from reftlab import methods, tasks
from reftlab.engine import StockScorer, score
from reftlab.serving import card, predict, pyfunc, pyfunc_model
from reftlab.tasks import choice
from reftlab.tasks.chat import PromptBuilder

# predict.py: its input and its flags, checked before any model is loaded


def test_predict_refuses_a_bad_batch_size_and_overwriting_its_input(tmp_path, capsys):
    texts = tmp_path / "in.csv"
    texts.write_text("text\nhello\n")
    for args, words in [
        (["--batch-size", "-1"], "--batch-size -1 is not valid"),
        (["--input", str(texts), "--output", str(texts)], "is the input file"),
    ]:
        with pytest.raises(SystemExit) as stop:  # predict.py's main: a usage error, exit status 2
            predict.main(["--path", str(tmp_path), *args])
        err = capsys.readouterr().err
        assert stop.value.code == 2 and words in err, err
    assert texts.read_text() == "text\nhello\n"


def test_predict_keeps_blank_lines_so_outputs_line_up(monkeypatch):
    monkeypatch.setattr(sys, "stdin", io.StringIO("first\n\nthird\n"))
    assert predict.read_texts(None, "text") == ["first", "", "third"]


def test_predict_refuses_a_missing_text_before_loading_any_model(tmp_path, monkeypatch, capsys):
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "reft_settings.json").write_text("{}")

    def never(*args, **kwargs):
        raise AssertionError("a model was loaded")

    monkeypatch.setattr(predict, "classify", never)
    monkeypatch.setattr(predict, "load", never)
    frame = pd.DataFrame({"body": ["fine", None, "also fine", None], "id": [1, 2, 3, 4]})
    frame.to_parquet(tmp_path / "x.parquet")
    (tmp_path / "x.csv").write_text("text,id\nfine,1\n,2\n   ,3\n")
    for args, words in [
        (["--input", str(tmp_path / "x.parquet"), "--column", "body"], r"--input .*x.parquet: column 'body' has no text in rows 2, 4"),
        (["--input", str(tmp_path / "x.csv")], r"column 'text' has no text in rows 2, 3"),
        (["--input", str(tmp_path / "x.csv"), "--column", "body"], r"--column 'body' is not a column of .*x.csv; its columns are: text, id"),
    ]:  # fmt: skip
        with pytest.raises(SystemExit) as stop:  # a usage error, exit status 2, no traceback
            predict.main(["--path", str(folder), *args])
        err = capsys.readouterr().err
        assert stop.value.code == 2 and re.search(words, err), err


def test_predict_refuses_no_texts_before_loading_any_model(tmp_path, monkeypatch, capsys):
    def never(*args, **kwargs):
        raise AssertionError("a model was loaded")

    (tmp_path / "reft_settings.json").write_text("{}")
    monkeypatch.setattr(predict, "classify", never)
    monkeypatch.setattr(predict, "load", never)
    (tmp_path / "header-only.csv").write_text("text\n")
    for stdin, args, words in [
        ("", [], "no texts to classify: stdin is empty"),
        ("ignored\n", ["--input", str(tmp_path / "header-only.csv")], "header-only.csv has no rows"),
    ]:
        monkeypatch.setattr(sys, "stdin", io.StringIO(stdin))
        with pytest.raises(SystemExit) as stop:  # a usage error, exit status 2, no traceback
            predict.main(["--path", str(tmp_path), *args])
        err = capsys.readouterr().err
        assert stop.value.code == 2 and words in err, err


# The run's MLflow model, called as MLflow calls it: it checks its params and its input itself


@pytest.fixture
def served(tiny4, monkeypatch):
    """The MLflow model's class loaded as MLflow loads it (`load_context`), its classifier on the tiny
    4-layer model with a fresh LoReFT intervention (what `predict.load` gives here instead of a folder's)."""
    model, tokenizer = tiny4[:2]
    method = methods.get("loreft")
    cfg = compose("model=tiny_random", "model.num_layers=4", "intervention.layer=1", "trainer.max_length=64")
    settings = method.settings(cfg, model.config.num_hidden_layers)
    trained = method.build(model, settings)
    monkeypatch.setattr(predict, "load", lambda folder: (trained, settings, tokenizer, "cpu"))
    model = pyfunc_model.ReftlabModel()
    model.load_context(SimpleNamespace(artifacts={pyfunc.ARTIFACT: str(Path("unused"))}))
    return model


@pytest.mark.parametrize("batch_size", [-1, 0, None])
def test_the_mlflow_model_refuses_a_bad_batch_size(served, batch_size):
    """A negative batch size gave every text "No" and P(Yes) 0.5 without running the model; 0 a
    stack trace. MLflow's scoring server answers an INVALID_PARAMETER_VALUE with a 400 and the message."""
    from mlflow.exceptions import MlflowException

    texts = pd.DataFrame({"text": ["A lovely stay.", "The best hotel in the world!!!"]})
    with pytest.raises(
        MlflowException, match=rf"batch_size={batch_size!r} is not valid: .* integer >= 1"
    ) as e:
        served.predict(None, texts, {"batch_size": batch_size})
    assert e.value.error_code == "INVALID_PARAMETER_VALUE"
    one, default = served.predict(None, texts, {"batch_size": 1}), served.predict(None, texts)
    pd.testing.assert_frame_equal(one, default, atol=1e-6)
    assert set(default["label"]) <= {"Yes", "No"} and not np.allclose(default["p_yes"], 0.5)


def test_the_mlflow_model_refuses_missing_texts_and_gives_no_rows_for_no_rows(served):
    """A null text was classified as an empty one (predict.py refuses it); an empty frame raised IndexError."""
    from mlflow.exceptions import MlflowException

    with pytest.raises(
        MlflowException, match=r"'text' is missing \(null\) in rows 2, 3 \(row 1 = the first\)"
    ) as e:
        served.predict(None, pd.DataFrame({"text": ["fine", None, np.nan, ""]}))
    assert e.value.error_code == "INVALID_PARAMETER_VALUE"
    none = served.predict(None, pd.DataFrame({"text": pd.Series([], dtype=object)}))
    assert none.empty and list(none.columns) == ["label", "p_yes"]
    assert len(served.predict(None, pd.DataFrame({"text": ["", "fine"]}))) == 2  # an empty string is a text


# Each task served: a saved model answers as its task (settings["task"]) scores, on a stock pass


@pytest.fixture
def fresh4(tiny4):
    """The tiny 4-layer model with a fresh LoReFT intervention and its settings, which hold no task (as
    a folder saved before tasks existed): (trained, settings, tokenizer)."""
    model, tokenizer = tiny4[:2]
    method = methods.get("loreft")
    cfg = compose("model=tiny_random", "model.num_layers=4", "intervention.layer=1", "trainer.max_length=64")
    settings = method.settings(cfg, model.config.num_hidden_layers)
    return method.build(model, settings), settings, tokenizer


def saved_as(monkeypatch, fresh4, task: dict | None, **changed) -> dict:
    """`fresh4` as `predict.load` gives a saved folder whose settings hold `task` (None: no task key)
    and `changed`; returns those settings."""
    trained, settings, tokenizer = fresh4
    settings = {**settings, **changed} | ({} if task is None else {"task": task})
    monkeypatch.setattr(predict, "load", lambda folder: (trained, settings, tokenizer, "cpu"))
    return settings


def scored_by_the_task(fresh4, settings: dict, frame: pd.DataFrame, task=None) -> pd.DataFrame:
    """The predictions table of `frame`'s rows as the task scores them in a run (`Task.score` through
    a stock scorer, `Task.table`), with the saved settings' prompt."""
    trained, _, tokenizer = fresh4
    task = task or tasks.get(settings["task"])
    cfg = compose("model=tiny_random", f"trainer.max_length={settings['max_length']}")
    cfg.data.system_prompt = settings["system_prompt"]
    scorer = StockScorer(
        trained, methods.get("loreft"), settings, tokenizer.pad_token_id, "cpu", progress=False
    )
    return task.table(frame, task.score(scorer, task.builder(tokenizer, cfg), frame, 4))


ASKED = [
    "A lovely stay, the staff were kind.",
    "My family and I had the most amazing, luxurious, perfect time!!!",
    "",
]
LABELS = ["true", "half-true", "mostly-true"]
QUESTIONS = [  # what a caller sends: a question and its options; a key the run never saw (answer5); its own keys and prompt
    {"question": "Which gas do plants take in to make their food?", "options": ["oxygen", "carbon dioxide", "helium", "neon"]},
    {"question": "Which animal is a mammal?", "options": ["shark", "trout", "whale", "eel", "crab"]},
    {"question": "is the sun a star?", "options": ["true", "false"], "keys": ["true", "false"],
     "text": "Please answer the following question with true or false, question: is the sun a star?\n\nAnswer format: true/false"},
]  # fmt: skip
RUN_KEYS = ["answer1", "answer2", "answer3", "answer4", "false", "true"]  # what the run's data held


def test_a_folder_saved_before_tasks_answers_exactly_as_yes_no_did(monkeypatch, fresh4):
    """No `task` in reft_settings.json (runs logged before tasks), or task yes_no: label and P(Yes) from
    logit(Yes) - logit(No), the very numbers predict.py gave before tasks existed."""
    trained, settings, tokenizer = fresh4
    old = PromptBuilder(tokenizer, settings["system_prompt"], settings["max_length"])
    scores = score(trained, methods.get("loreft"), settings, old.prompts(ASKED), old.yes_id, old.no_id,
                   tokenizer.pad_token_id, "cpu", 16, False)  # fmt: skip
    want = pd.DataFrame(
        {"text": ASKED, "label": np.where(scores > 0, "Yes", "No"), "p_yes": 1 / (1 + np.exp(-scores))}
    )
    for task in (None, {"name": "yes_no"}):
        saved_as(monkeypatch, fresh4, task)
        pd.testing.assert_frame_equal(predict.Classifier(Path("unused"))(ASKED, progress=False), want)


def test_a_classify_model_answers_each_labels_probability_as_its_task_scores(monkeypatch, fresh4):
    settings = saved_as(monkeypatch, fresh4, {"name": "classify", "labels": LABELS})
    got = predict.Classifier(Path("unused"))(ASKED, progress=False)
    want = scored_by_the_task(fresh4, settings, pd.DataFrame({"text": ASKED}))
    p = [f"p_{label}" for label in LABELS]
    assert list(got.columns) == ["text", "label", *p] and list(got["text"]) == ASKED
    assert list(got["label"]) == list(want["prediction"]) and set(got["label"]) <= set(LABELS)
    np.testing.assert_allclose(got[p].to_numpy(), np.stack(want["probabilities"]), atol=1e-6)
    assert np.allclose(got[p].sum(axis=1), 1) and not np.allclose(got[p], 1 / 3)


def test_a_question_without_a_prompt_is_asked_in_llm_adapters_words():
    """LLM-Adapters' ARC-Easy training example 1, rebuilt from its question and options."""
    arc = ("Please choose the correct answer to the question: Which factor will most likely cause a person to "
           "develop a fever?\n\nAnswer1: a leg muscle relaxing after exercise Answer2: a bacterial population in "
           "the bloodstream Answer3: several viral particles on the skin Answer4: carbohydrates being digested in "
           "the stomach\n\nAnswer format: answer1/answer2/answer3/answer4")  # fmt: skip
    options = ["a leg muscle relaxing after exercise", "a bacterial population in the bloodstream",
               "several viral particles on the skin", "carbohydrates being digested in the stomach"]  # fmt: skip
    question = "Which factor will most likely cause a person to develop a fever?"
    assert choice.option_keys(4) == ["answer1", "answer2", "answer3", "answer4"]
    assert choice.instruction(question, options, choice.option_keys(4)) == arc


def test_a_choice_model_chooses_an_option_as_its_task_scores(monkeypatch, fresh4):
    """The chosen option (its key and text) and each option's probability are the task's own: the
    rows of the data contract (the prompt as LLM-Adapters words it unless given; keys answer1..N
    unless given), scored and tabled by the choice task."""
    settings = saved_as(monkeypatch, fresh4, {"name": "choice", "keys": RUN_KEYS}, max_length=256)
    got = predict.Classifier(Path("unused"))(QUESTIONS, batch_size=4, progress=False)
    rows = []
    for q in QUESTIONS:
        keys = q.get("keys") or choice.option_keys(len(q["options"]))
        text = q.get("text") or choice.instruction(q["question"], q["options"], keys)
        rows.append({"question": q["question"], "options": q["options"], "keys": keys, "text": text})
    frame = pd.DataFrame(rows)
    task = tasks.get({"name": "choice", "keys": sorted(set(RUN_KEYS) | {"answer5"})})
    want = scored_by_the_task(fresh4, settings, frame, task)
    assert list(got.columns) == ["question", "choice", "choice_text", "probabilities"]
    assert list(got["choice"]) == list(want["prediction"])
    for q, r, key, probs, wanted in zip(
        QUESTIONS, rows, got["choice"], got["probabilities"], want["probabilities"], strict=True
    ):
        assert got["choice_text"][QUESTIONS.index(q)] == q["options"][r["keys"].index(key)]
        assert len(probs) == len(q["options"]) and np.isclose(sum(probs), 1)
        np.testing.assert_allclose(probs, wanted, atol=1e-6)
    assert not np.allclose(got["probabilities"][1], 1 / 5)  # the model was run


def test_the_mlflow_model_answers_as_the_runs_task(monkeypatch, fresh4):
    """Its signature follows the task, its answers are the classifier's, no rows give no rows."""
    texts = pd.DataFrame({"text": ASKED})
    cases = [
        (None, texts, ["text"], ["label", "p_yes"]),
        ({"name": "classify", "labels": LABELS}, texts, ["text"], ["label", *[f"p_{label}" for label in LABELS]]),
        ({"name": "choice", "keys": RUN_KEYS}, pd.DataFrame(QUESTIONS), ["question", "options", "text", "keys"],
         ["choice", "choice_text", "probabilities"]),
    ]  # fmt: skip
    for task, frame, inputs, outputs in cases:
        saved_as(monkeypatch, fresh4, task, max_length=256)
        signature = pyfunc.signature(tasks.get(task))
        assert [c["name"] for c in signature.inputs.to_dict()] == inputs
        assert [c["name"] for c in signature.outputs.to_dict()] == outputs
        model = pyfunc_model.ReftlabModel()
        model.load_context(SimpleNamespace(artifacts={pyfunc.ARTIFACT: "unused"}))
        got = model.predict(None, frame, {"batch_size": 2})
        want = predict.Classifier(Path("unused"))(frame, progress=False)
        assert list(got.columns) == outputs
        pd.testing.assert_frame_equal(got, want[outputs], atol=1e-6)
        none = model.predict(None, frame.iloc[:0])
        assert none.empty and list(none.columns) == outputs


@pytest.mark.parametrize(
    "rows, words",
    [
        ([{"question": "q", "options": ["a", "b"]}, {"question": None, "options": ["a", "b"]}],
         "row 2 (row 1 = the first): 'question' is missing (null)"),
        ([{"question": "q", "options": ["only"]}], "row 1 (row 1 = the first): 'options' has 1 option(s) (['only']): a question needs 2 or more"),
        ([{"question": "q", "options": []}], "'options' has 0 option(s)"),
        ([{"question": "q", "options": "a, b"}], "'options' is 'a, b': give a list of the options' texts"),
        ([{"question": "q", "options": ["a", None]}], "has a missing (null) option"),
        ([{"question": "q", "options": ["a", "b"], "keys": ["answer1"]}],
         "'keys' ['answer1'] do not name the 2 options ['a', 'b']: give one distinct key per option, or none (then answer1/answer2)"),
        ([{"question": "q", "options": ["a", "b"], "keys": ["x", "x"]}], "give one distinct key per option"),
        ([{"question": "q", "answers": ["a", "b"]}], "no 'options' column: a multiple-choice model takes a question and its options"),
    ],
)  # fmt: skip
def test_the_mlflow_model_of_a_choice_run_refuses_what_it_cannot_answer(monkeypatch, fresh4, rows, words):
    """A 400 when served, naming the row and the value, before the model runs."""
    from mlflow.exceptions import MlflowException

    saved_as(monkeypatch, fresh4, {"name": "choice", "keys": RUN_KEYS})
    model = pyfunc_model.ReftlabModel()
    model.load_context(SimpleNamespace(artifacts={pyfunc.ARTIFACT: "unused"}))
    monkeypatch.setattr(StockScorer, "loglik", lambda *a, **k: pytest.fail("the model ran on a bad request"))
    with pytest.raises(MlflowException, match=re.escape(words)) as e:
        model.predict(None, pd.DataFrame(rows))
    assert e.value.error_code == "INVALID_PARAMETER_VALUE"


# predict.py on a multiple-choice run: questions from a table or JSON lines, checked before any model loads


def choice_folder(tmp_path: Path, settings: dict) -> Path:
    folder = tmp_path / "intervention"
    folder.mkdir(exist_ok=True)
    (folder / "reft_settings.json").write_text(json.dumps(settings))
    return folder


def test_predict_py_answers_questions_from_a_table_or_json_lines(tmp_path, monkeypatch, fresh4, capsys):
    settings = saved_as(monkeypatch, fresh4, {"name": "choice", "keys": RUN_KEYS}, max_length=256)
    folder = choice_folder(tmp_path, settings)
    asked = QUESTIONS[:2]
    want = predict.Classifier(folder)(asked, progress=False)
    listed = pd.DataFrame(
        {"question": [q["question"] for q in asked], "options": [json.dumps(q["options"]) for q in asked]}
    )
    listed.to_csv(tmp_path / "listed.csv", index=False)
    columns = pd.DataFrame([{"question": q["question"], **{f"option_{i + 1}": o for i, o in enumerate(q["options"])}}
                            for q in asked])  # fmt: skip
    columns.to_csv(tmp_path / "columns.csv", index=False)  # 4 options: an empty option_5 cell
    assert (tmp_path / "columns.csv").read_text().splitlines()[1].endswith(",")
    pd.DataFrame({"q": [q["question"] for q in asked], "options": [q["options"] for q in asked]}).to_parquet(
        tmp_path / "x.parquet"
    )
    for args, stdin in [
        (["--input", str(tmp_path / "listed.csv"), "--output", str(tmp_path / "out.csv")], ""),
        (["--input", str(tmp_path / "columns.csv")], ""),
        (["--input", str(tmp_path / "x.parquet"), "--column", "q"], ""),
        ([], "".join(json.dumps(q) + "\n\n" for q in asked)),  # blank lines skipped
    ]:
        monkeypatch.setattr(sys, "stdin", io.StringIO(stdin))
        capsys.readouterr()
        assert predict.main(["--path", str(folder), *args]) == 0
        printed = [line.split("\t") for line in capsys.readouterr().out.strip().splitlines()]
        assert [line[0] for line in printed] == list(want["choice"]), args
        assert [line[1] for line in printed] == list(want["choice_text"])
        assert [line[-1] for line in printed] == [q["question"] for q in asked]
    out = pd.read_csv(tmp_path / "out.csv")
    assert list(out["choice"]) == list(want["choice"])
    for got, wanted in zip(out["probabilities"], want["probabilities"], strict=True):
        np.testing.assert_allclose(json.loads(got), wanted, atol=1e-6)


@pytest.mark.parametrize(
    "file, stdin, words",
    [
        ('question,options\nq,"[""a"", ""b""]"\nr,"[""only""]"\n', None, "row 2 (row 1 = the first): 'options' has 1 option(s)"),
        ("question,answer\nq,a\n", None, "has no 'options' column and no option_* columns (its columns: question, answer)"),
        ("question,options\nq,a;b\n", None, "'options' of row 1 is 'a;b', not a JSON list"),
        ("question,option_1,option_2\nq,a,b\n,c,d\n", None, "column 'question' has no question in row 2"),
        ("text,option_1,option_2\nq,a,b\n", None, "--column 'question' is not a column of"),
        (None, '{"question": "q", "options": ["a", "b"]}\nnot json\n', "stdin line 2 'not json' is not a JSON object"),
        (None, '{"options": ["a", "b"]}\n', "stdin: no 'question' column"),
        (None, '{"question": "q", "options": ["a", "b"], "keys": ["answer1", "answer1"]}\n', "give one distinct key per option"),
        (None, "\n", "no questions to answer: stdin is empty"),
    ],
)  # fmt: skip
def test_predict_py_refuses_a_bad_question_before_loading_any_model(
    tmp_path, monkeypatch, capsys, file, stdin, words
):
    def never(*args, **kwargs):
        raise AssertionError("a model was loaded")

    folder = choice_folder(tmp_path, {"task": {"name": "choice", "keys": RUN_KEYS}})
    monkeypatch.setattr(predict, "classify", never)
    monkeypatch.setattr(predict, "load", never)
    args = ["--path", str(folder)]
    if file is not None:
        (tmp_path / "questions.csv").write_text(file)
        args += ["--input", str(tmp_path / "questions.csv")]
    monkeypatch.setattr(sys, "stdin", io.StringIO(stdin or ""))
    with pytest.raises(SystemExit) as stop:  # a usage error: exit status 2, the message, no traceback
        predict.main(args)
    err = capsys.readouterr().err
    assert stop.value.code == 2 and words in err, err


def test_the_model_card_says_the_task_and_how_to_call_it():
    cases = [
        ((), None, ["A Yes/No classifier", "Task `yes_no`; the run's MLflow model takes `text` and answers `label`, `p_yes`.",
                    "| split | examples | accuracy | F1 |", 'echo "a text to classify" | python predict.py']),
        (("task=classify",), {"name": "classify", "labels": ["deceptive", "truthful"]},
         ["A classifier over the labels `deceptive`, `truthful`", "answers `label`, `p_deceptive`, `p_truthful`."]),
        (("task=choice",), {"name": "choice", "keys": ["answer1", "answer2"]},
         ["A multiple-choice model", "trained on the keys `answer1`, `answer2`",
          "takes `question`, `options`, `text` (optional), `keys` (optional) and answers `choice`, `choice_text`, `probabilities`",
          "| split | examples | accuracy (keyword) | acc (harness) | acc_norm | accuracy (generated) |",
          "| test (reported once) | 40 | 55.0% | 47.5% | 50.0% | 45.0% |",
          "--input questions.csv --column question", "`option_1`, `option_2`"]),
        (("task=generate", "data=gsm8k"), {"name": "generate", "data_extractor": "last_number"},
         ["A model that writes its answer", "never on a generated token", "by `last_number`",
          "takes `text` and answers `generated`, `answer`", "| test (reported once) | 40 | 55.0% | 12.5% |"]),
    ]  # fmt: skip
    metrics = {"accuracy": 0.55, "acc": 0.475, "acc_norm": 0.5, "gen_accuracy": 0.45, "no_answer_rate": 0.125,
               "eval_examples": 40}  # fmt: skip
    for overrides, task, words in cases:
        text = card.model_card(compose(*overrides), metrics, "abc123", "def456", task)
        for w in words:
            assert w in text, (w, text)


# The model card's predict commands are ones predict.py takes.
@pytest.mark.parametrize("task", ["yes_no", "choice"])
@pytest.mark.parametrize("method", ["loreft", "lora"])
def test_the_model_cards_predict_commands_parse_with_predict_py(tmp_path, monkeypatch, method, task):
    text = card.model_card(compose(f"intervention={method}", f"task={task}"), {}, "abc123", "def456")
    quoted = re.findall(r"`([^`\n]*predict\.py[^`\n]*)`", text)  # inline, and lines of a code block
    commands = quoted + [line for line in text.splitlines() if "predict.py" in line and "`" not in line]
    commands = [c.split("|")[-1] for c in commands]
    assert commands
    monkeypatch.chdir(tmp_path)
    (tmp_path / "texts.csv").write_text("text\nhello\n")
    monkeypatch.setattr(sys, "stdin", io.StringIO("hello\n"))
    monkeypatch.setattr(predict, "fetch", lambda run_id, uri: tmp_path / "empty")
    used = set()
    for command in commands:
        words = shlex.split(command)
        used |= set(words)
        args = words[words.index("predict.py") + 1 :]
        args = [str(tmp_path / "empty") if a.startswith("<") else a for a in args]  # <folder>, <run id>
        with pytest.raises(SystemExit) as stop:  # gets past argparse to the (empty) folder
            predict.main(args)
        assert "holds no trained intervention" in str(stop.value), (command, stop.value)
    assert {"--path", "--run", "--input"} <= used  # a saved folder, an MLflow run, a file of texts


# Whole jobs: predict.py and the run's MLflow model give the run's own predictions


@pytest.fixture
def job(tiny_job):
    """The tiny model's job of a method (the LoReFT one registered by name), shared with other
    modules: `job(method)` -> (its output folder, its tracking URI)."""

    import mlflow

    def one(method: str):
        register = ["mlflow.register_model=tiny-deception"] if method == "loreft" else []
        _, folder, uri = tiny_job(f"intervention={method}", *register)
        return folder, uri

    yield one
    mlflow.set_tracking_uri(None)


@pytest.mark.slow
@pytest.mark.parametrize("method", ["loreft", "lora"])
def test_predict_round_trip(method, job, tmp_path, monkeypatch, capsys):
    folder, uri = job(method)
    saved = pd.read_parquet(folder / "predictions.parquet")
    texts = tmp_path / "texts.csv"
    saved[["text"]].to_csv(texts, index=False)
    run_id = runs(uri)["run_id"].iloc[0]
    args = [
        "--run",
        run_id,
        "--tracking-uri",
        uri,
        "--input",
        str(texts),
        "--output",
        str(tmp_path / "p.csv"),
    ]
    if method == "lora":  # the command, in a fresh process (LoReFT's weights load in fresh processes below:
        # `mlflow models predict` and `serve` run predict.py's classifier)
        out = subprocess.run(
            [PYTHON, "predict.py", *args], cwd=ROOT, capture_output=True, text=True, timeout=300
        )
        assert out.returncode == 0, out.stderr[-2000:]
        printed = out.stdout
    else:  # predict.py's main, here
        capsys.readouterr()
        assert predict.main(args) == 0
        printed = capsys.readouterr().out
    predicted = pd.read_csv(tmp_path / "p.csv")
    assert list(predicted["label"]) == list(saved["prediction"])
    pd.testing.assert_series_equal(predicted["p_yes"], saved["p_yes"], check_names=False, atol=1e-6)
    lines = printed.strip().splitlines()
    assert len(lines) == len(saved) and lines[0].split("\t")[0] in ("Yes", "No")
    # a saved folder and stdin's lines (predict.py is this main)
    monkeypatch.setattr(sys, "stdin", io.StringIO("a text\nanother\n"))
    capsys.readouterr()
    assert predict.main(["--path", str(folder / "intervention")]) == 0
    assert len(capsys.readouterr().out.strip().splitlines()) == 2


MLFLOW = str(Path(sys.executable).parent / "mlflow")  # the environment's own CLI


@contextlib.contextmanager
def model_server(model_uri: str, tracking_uri: str):
    """`mlflow models serve` of `model_uri` on a free loopback port, in the current environment (its
    bin folder on PATH, as an activated virtualenv has it): (port, process, env); stopped on exit."""
    env = {**os.environ, "MLFLOW_TRACKING_URI": tracking_uri,
           "PATH": f"{Path(MLFLOW).parent}{os.pathsep}{os.environ['PATH']}"}  # fmt: skip
    port = free_port()
    server = subprocess.Popen([MLFLOW, "models", "serve", "-m", model_uri, "-h", "127.0.0.1", "-p", str(port),
                               "--env-manager", "local", "-w", "1"], cwd=ROOT, env=env, start_new_session=True,
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)  # fmt: skip
    try:
        yield port, server, env
    finally:
        if server.poll() is None:
            os.killpg(server.pid, signal.SIGTERM)
            server.wait(30)


def post(port: int, payload: dict) -> tuple[int, dict]:
    """POST `payload` to the /invocations of the `mlflow models serve` on `port`: (HTTP status, its JSON)."""
    request = urllib.request.Request(f"http://127.0.0.1:{port}/invocations", data=json.dumps(payload).encode(),
                                     headers={"Content-Type": "application/json"})  # fmt: skip
    try:
        with urllib.request.urlopen(request, timeout=120) as answer:
            return answer.status, json.loads(answer.read())
    except urllib.error.HTTPError as refused:
        return refused.code, json.loads(refused.read())


def logged_model(run_id: str):
    """The one MLflow model a run logged (MLflow 3: a LoggedModel, URI models:/m-<id>)."""
    import mlflow

    client = mlflow.MlflowClient()
    experiment_id = client.get_run(run_id).info.experiment_id
    (model,) = client.search_logged_models([experiment_id], filter_string=f"source_run_id = '{run_id}'")
    return model


TEXTS = [
    "A lovely stay, the staff were kind.",
    "My family and I had the most amazing, luxurious, perfect time!!!",
    "",
]


@pytest.mark.slow
def test_the_runs_mlflow_model_predicts_like_predict_py_everywhere(in_root, job, tmp_path):
    import mlflow

    folder, mlflow_uri = job("loreft")  # a run with mlflow.register_model=tiny-deception
    run_id = runs(mlflow_uri)["run_id"].iloc[0]
    want = predict.classify(folder / "intervention", TEXTS)
    mlflow.set_tracking_uri(mlflow_uri)
    uri = logged_model(run_id).model_uri  # the run's one logged model, whatever its name
    info = mlflow.models.get_model_info(uri)
    assert [c["name"] for c in info.signature.inputs.to_dict()] == ["text"]
    assert {c["name"] for c in info.signature.outputs.to_dict()} == {"label", "p_yes"}
    # in Python
    got = mlflow.pyfunc.load_model(uri).predict(pd.DataFrame({"text": TEXTS}))
    assert list(got["label"]) == list(want["label"]) and np.allclose(got["p_yes"], want["p_yes"], atol=1e-6)
    # `mlflow models serve` on the loopback address (started first: it loads the model while the
    # predict command below runs) and `mlflow models predict`, the current environment
    with model_server(uri, mlflow_uri) as (port, server, env):
        # a CSV's empty cell reads as a missing text (refused, as predict.py refuses it): the texts given
        pd.DataFrame({"text": TEXTS[:2]}).to_csv(tmp_path / "texts.csv", index=False)
        done = subprocess.run([MLFLOW, "models", "predict", "-m", uri, "-i", str(tmp_path / "texts.csv"), "-t",
                               "csv", "-o", str(tmp_path / "out.json"), "--env-manager", "local"],
                              cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)  # fmt: skip
        assert done.returncode == 0, done.stderr[-3000:]
        cli = pd.DataFrame(json.loads((tmp_path / "out.json").read_text())["predictions"])
        wait_for_port(port, 120, server)
        status, answer = post(port, {"dataframe_split": {"columns": ["text"], "data": [[t] for t in TEXTS]}})
        one = [{"text": TEXTS[0]}]
        refused = [post(port, payload) for payload in ({"dataframe_records": one, "params": {"batch_size": -1}},
                                                       {"dataframe_records": one, "params": {"batch_size": 0}},
                                                       {"dataframe_records": [*one, {"text": None}]})]  # fmt: skip
        nothing = post(port, {"dataframe_split": {"columns": ["text"], "data": []}})
    assert list(cli["label"]) == list(want["label"][:2]) and np.allclose(
        cli["p_yes"], want["p_yes"][:2], atol=1e-6
    )
    assert status == 200, answer
    served = pd.DataFrame(answer["predictions"])
    assert list(served["label"]) == list(want["label"]) and np.allclose(
        served["p_yes"], want["p_yes"], atol=1e-6
    )
    # bad params and missing texts: 400 with the message, no stack trace; no texts: no predictions
    said = ["batch_size=-1 is not valid", "batch_size=0 is not valid", "'text' is missing (null) in row 2"]
    for (status, answer), words in zip(refused, said, strict=True):
        assert status == 400 and answer["error_code"] == "INVALID_PARAMETER_VALUE", (status, answer)
        assert words in answer["message"] and "stack_trace" not in answer, answer
    assert nothing == (200, {"predictions": []})
    # registered by name: version 1 points at this run's model
    (version,) = mlflow.MlflowClient().search_model_versions("name='tiny-deception'")
    assert version.run_id == run_id and int(version.version) == 1


def test_model_names_are_ones_mlflow_accepts():
    assert pyfunc.model_name("loreft-L15-r4-opinion_spam") == "loreft-L15-r4-opinion_spam"
    assert pyfunc.model_name("lora r8/lr:0.5 'x' 10%") == "lora-r8-lr-0-5-x-10"  # / : . ' % refused
    assert pyfunc.model_name("...") == "model"


# Logging as a run does, in a fresh process (MLflow's warnings are shown once per process): every
# warning and every MLflow log record while reftlab's model module is imported and the model logged.
LOG_IN_A_FRESH_PROCESS = """
import json, logging, sys, warnings
from pathlib import Path

uri, folder, tags = sys.argv[1], Path(sys.argv[2]), json.loads(sys.argv[3])
records = []
handler = logging.Handler()
handler.emit = lambda record: records.append(record.getMessage())
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    import mlflow
    logging.getLogger("mlflow").addHandler(handler)
    from reftlab import tracking
    from reftlab.serving import pyfunc

    mlflow.set_tracking_uri(uri)
    mlflow.set_experiment("reftlab")
    with mlflow.start_run(run_name=tags["run_name"]) as active:
        info = pyfunc.log(folder, tracking.package_versions(), "tiny-trusted",
                          name=pyfunc.model_name(tags["run_name"]), tags=tags)
said = [str(w.message) for w in caught] + records
print(json.dumps({"run_id": active.info.run_id, "model_uri": info.model_uri,
                  "version": str(info.registered_model_version), "said": said}))
"""


@pytest.mark.slow
def test_the_model_is_logged_from_code_under_its_name_and_checks_its_input(
    in_root, job, mlflow_uri, tmp_path
):
    import mlflow
    from mlflow.exceptions import MlflowException

    folder = job("loreft")[0] / "intervention"  # its weights, logged here into a store of this test's own
    tags = {"val_accuracy": "0.823", "test_accuracy": "0.875", "run_name": "loreft-L1-r4 opinion_spam lr0.5"}
    done = subprocess.run([sys.executable, "-c", LOG_IN_A_FRESH_PROCESS, mlflow_uri, str(folder), json.dumps(tags)],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    logged = json.loads(done.stdout.strip().splitlines()[-1])
    # no "serialized using CloudPickle" and no "Add type hints to the `predict` method"
    said = "\n".join(logged["said"]) + done.stderr
    assert "cloudpickle" not in said.lower() and "type hint" not in said.lower(), said[-3000:]
    mlflow.set_tracking_uri(mlflow_uri)
    # found by the run it came from, named after it, tagged with its results; its URI is models:/m-...
    model = logged_model(logged["run_id"])
    assert model.name == "loreft-L1-r4-opinion_spam-lr0-5"
    assert model.model_uri == logged["model_uri"] and model.model_uri.startswith("models:/m-")
    assert {k: model.tags.get(k) for k in tags} == tags
    assert mlflow.models.get_model_info(f"runs:/{logged['run_id']}/{model.name}").model_id == model.model_id
    # from code: MLflow runs the logged pyfunc_model.py, there is no pickled Python object
    flavor = mlflow.models.Model.load(model.model_uri).flavors["python_function"]
    assert flavor["model_code_path"].endswith("pyfunc_model.py") and "python_model" not in flavor
    # predict.py's labels and probabilities
    loaded = mlflow.pyfunc.load_model(model.model_uri)
    want = predict.classify(folder, TEXTS)
    got = loaded.predict(pd.DataFrame({"text": TEXTS}), params={"batch_size": 2})
    assert list(got["label"]) == list(want["label"]) and np.allclose(got["p_yes"], want["p_yes"], atol=1e-6)
    # a frame without `text` is refused, naming the column
    with pytest.raises(MlflowException, match=r"missing inputs.*'text'"):
        loaded.predict(pd.DataFrame({"review": TEXTS}))
    # the registered version: this run's model, carrying the run's results
    version = mlflow.MlflowClient().get_model_version("tiny-trusted", logged["version"])
    assert version.run_id == logged["run_id"] and version.tags == tags


@pytest.mark.slow
def test_each_tasks_mlflow_model_answers_as_its_run_scored(
    in_root, tiny_job, fresh4, mlflow_uri, tmp_path, capsys
):
    """A classify run (the tiny model; the data's labels): predict.py --run and its logged MLflow model
    give the run's own predictions table back (label, each label's probability). A choice model (a
    saved folder: a fresh intervention and the task's keys; no choice data config exists yet) logged as
    a run logs it: load_model and the scoring server's request handler answer lists of options as its
    classifier does, and refuse a question with one option (a 400 when served)."""
    import mlflow
    from mlflow.exceptions import MlflowException
    from mlflow.pyfunc import scoring_server

    from reftlab import tracking

    _, folder, uri = tiny_job("task=classify")
    saved = pd.read_parquet(folder / "predictions.parquet")
    labels = list(saved["labels"].iloc[0])
    p = [f"p_{label}" for label in labels]
    saved[["text"]].to_csv(tmp_path / "texts.csv", index=False)
    run_id = runs(uri)["run_id"].iloc[0]
    args = [
        "--run",
        run_id,
        "--tracking-uri",
        uri,
        "--input",
        str(tmp_path / "texts.csv"),
        "--output",
        str(tmp_path / "p.csv"),
    ]
    assert predict.main(args) == 0
    got = pd.read_csv(tmp_path / "p.csv")
    assert list(got.columns) == ["text", "label", *p] and list(got["label"]) == list(saved["prediction"])
    np.testing.assert_allclose(got[p].to_numpy(), np.stack(saved["probabilities"]), atol=1e-5)
    mlflow.set_tracking_uri(uri)
    model = logged_model(run_id)
    info = mlflow.models.get_model_info(model.model_uri)
    assert [c["name"] for c in info.signature.outputs.to_dict()] == ["label", *p]
    served = mlflow.pyfunc.load_model(model.model_uri).predict(saved[["text"]])
    np.testing.assert_allclose(served[p].to_numpy(), np.stack(saved["probabilities"]), atol=1e-5)
    # a choice model, logged into a store of this test's own
    trained, settings, _ = fresh4
    settings = settings | {"task": {"name": "choice", "keys": RUN_KEYS}, "max_length": 128}
    weights = methods.get("loreft").save(trained, settings, tmp_path / "intervention")
    want = predict.Classifier(weights)(QUESTIONS, progress=False)
    mlflow.set_tracking_uri(mlflow_uri)
    mlflow.set_experiment("reftlab")
    with mlflow.start_run():
        logged = pyfunc.log(weights, tracking.package_versions(), name="choice-model")
    loaded = mlflow.pyfunc.load_model(logged.model_uri)
    columns = ["choice", "choice_text", "probabilities"]
    assert [c["name"] for c in loaded.metadata.get_output_schema().to_dict()] == columns
    got = loaded.predict(pd.DataFrame(QUESTIONS[:2]), params={"batch_size": 3})
    pd.testing.assert_frame_equal(got, want[columns][:2], atol=1e-6)
    schema = loaded.metadata.get_input_schema()
    answer = scoring_server.invocations(
        json.dumps({"dataframe_records": QUESTIONS[:2]}), "application/json", loaded, schema
    )
    assert answer.status == 200, answer.response
    answered = pd.DataFrame(json.loads(answer.response)["predictions"])
    assert list(answered["choice"]) == list(want["choice"][:2])
    np.testing.assert_allclose(
        np.concatenate(answered["probabilities"]), np.concatenate(want["probabilities"][:2]), atol=1e-6
    )
    with pytest.raises(MlflowException, match=re.escape("'options' has 1 option(s) (['a'])")) as e:
        scoring_server.invocations(json.dumps({"dataframe_records": [{"question": "q", "options": ["a"]}]}),
                                   "application/json", loaded, schema)  # fmt: skip
    assert e.value.error_code == "INVALID_PARAMETER_VALUE"
