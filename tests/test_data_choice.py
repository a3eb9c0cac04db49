"""Multiple-choice data (issue #31, `data.recipe=choice`): LLM-Adapters' JSON on the ReFT paper's
shipped commonsense data, tables with options, the test file kept as given, folds, caps,
de-duplication, list columns through the prepared files, each bad input named."""

import json

import pandas as pd
import pytest
from conftest import ROOT, compose, runs, tiny_overrides, train_here

from reftlab.data import choice, recipes, versioning

SHIPPED = ROOT / "data/reft_tasks/commonsense"
READ = {  # data/reft_tasks/SOURCE.md: examples per file, before de-duplication
    "arc_easy": (2251, 2376),
    "arc_challenge": (1119, 1172),
    "openbookqa": (4957, 500),
    "boolq": (9427, 3270),
}


def prepared(*overrides, caps: bool = True):
    cfg = compose(*overrides).data
    for key in ("path", "test_path"):
        if cfg.get(key) is not None and not recipes.is_url(cfg[key]):
            cfg[key] = str(ROOT / cfg[key])
    return recipes.prepare(cfg, caps), cfg


def records(name: str, part: str) -> list[dict]:
    return json.loads((SHIPPED / name / f"{part}.json").read_text())


def write_records(path, rows: list[dict]) -> str:
    path.write_text(json.dumps(rows))
    return str(path)


@pytest.mark.parametrize("name", list(READ))
def test_the_llm_adapters_reader_on_each_shipped_dataset(name):
    p, cfg = prepared(f"data={name}", "data.val_fraction=0")
    assert (p.info["read"]["train"], p.info["read"]["test"]) == READ[name]
    test = records(name, "test")
    # the test file kept as given: every question, in its order (duplicates are dropped from train)
    assert list(p.eval["text"]) == [r["instruction"] for r in test]
    assert list(p.eval["label"]) == [r["answer"] for r in test]
    rows = pd.concat([p.train, p.eval])
    for text, question, options, keys, label in zip(*(rows[c] for c in ("text", "question", "options", "keys",
                                                                        "label")), strict=True):  # fmt: skip
        assert label in keys and len(options) == len(keys) >= 2 and all(options) and question
        assert question in text and "Answer format" not in question and "Please" not in question
        if name == "boolq":
            assert options == keys == ["true", "false"]
        else:  # the parse is exact: built back into LLM-Adapters' layout, it is the instruction again
            assert keys == [f"answer{i}" for i in range(1, len(options) + 1)]
            assert choice.build_text(question, options) == text
    five = sum("Answer5:" in r["instruction"] for part in ("train", "test") for r in records(name, part))
    assert (rows["options"].map(len) == 5).sum() == five  # ARC's 5-option questions kept
    assert five > 0 if name.startswith("arc") else five == 0
    assert recipes.counts(p.eval, recipes.counted_labels(p)).startswith(f"{len(test)} rows (")


def test_validation_is_drawn_from_train_and_a_question_in_both_files_stays_in_test():
    import dataclasses

    p, cfg = prepared("data=arc_easy", caps=False)
    train, test = records("arc_easy", "train"), records("arc_easy", "test")
    both = {r["instruction"] for r in train} & {r["instruction"] for r in test}
    assert len(both) == p.info["duplicates_removed"] == 2
    assert set(p.eval["text"]) == {r["instruction"] for r in test}
    assert set(p.train["text"]) | set(p.val["text"]) == {r["instruction"] for r in train} - both
    assert set(p.train["text"]).isdisjoint(p.val["text"])
    assert len(p.val) == recipes.held_out(0.15, len(train) - 2)[0]
    assert "eval_fraction" not in recipes.described_settings(cfg)  # the test file is the test part
    text = recipes.readme(p, cfg)
    assert "the test file as given" in text and "test file: " in text and "CC BY-SA 4.0" in text
    assert "answer1, answer2, answer3, answer4, answer5" in text and "5 options: 8" in text
    caps = compose("data=arc_easy", "data.max_train=24", "data.max_val=16", "data.max_eval=16").data
    capped = recipes.apply_caps(dataclasses.replace(p), caps)
    assert (len(capped.train), len(capped.val), len(capped.eval)) == (24, 16, 16)
    assert set(capped.eval["text"]) <= set(p.eval["text"]) and set(capped.train["text"]) <= set(
        p.train["text"]
    )
    again = recipes.apply_caps(dataclasses.replace(p), caps)
    assert list(again.train["text"]) == list(capped.train["text"])  # the same seed, the same rows
    # drawn at random, not balanced by answer key: ARC-Easy's 2 answer5 questions are not pulled in
    assert capped.train["label"].nunique() <= 4


def test_folds_are_cut_from_both_files_pooled_and_stratified_splits_keep_the_key_proportions():
    folds = [prepared("data=arc_challenge", "data.folds=3", f"data.fold={f}")[0] for f in range(3)]
    tests = [set(p.eval["text"]) for p in folds]
    pooled = len(folds[0].full)
    assert pooled == sum(READ["arc_challenge"]) - folds[0].info["duplicates_removed"]
    assert sum(map(len, tests)) == pooled and len(set().union(*tests)) == pooled  # a partition
    assert all(not set(p.val["text"]) & set(p.eval["text"]) for p in folds)
    strat, _ = prepared("data=openbookqa", "data.split=stratified")
    share = strat.train["label"].value_counts(normalize=True)
    assert (strat.val["label"].value_counts(normalize=True) - share).abs().max() < 0.01


def ten_arc_questions() -> pd.DataFrame:
    """ARC-Easy's first ten training questions, parsed, as a table (answers 0-based)."""
    rows = []
    for r in records("arc_easy", "train")[:10]:
        question, options, keys = choice.parse_instruction(r["instruction"])
        rows.append({"question": question, "options": options, "answer": keys.index(r["answer"]),
                     "instruction": r["instruction"], "key": r["answer"]})  # fmt: skip
    return pd.DataFrame(rows)


@pytest.mark.parametrize(
    ("fmt", "answer"),
    [("parquet", "index0"), ("jsonl", "index1"), ("csv", "letter"), ("parquet", "text"), ("jsonl", "key")],
)
def test_a_table_with_an_options_list_column_reads_every_kind_of_answer(tmp_path, fmt, answer):
    table = ten_arc_questions()
    given = {"index0": table["answer"], "index1": table["answer"] + 1, "letter": table["answer"].map("ABCDE".__getitem__),
             "text": [o[i] for o, i in zip(table["options"], table["answer"], strict=True)], "key": table["key"]}[answer]  # fmt: skip
    out = table.assign(answer=given).drop(columns=["instruction", "key"])
    path = tmp_path / f"questions.{fmt}"
    if fmt == "csv":
        out.assign(options=out["options"].map(json.dumps)).to_csv(path, index=False)  # a JSON list in a cell
    elif fmt == "jsonl":
        out.to_json(path, orient="records", lines=True)
    else:
        out.to_parquet(path)
    p, cfg = prepared("data=arc_easy", f"data.path={path}", "data.test_path=null", "data.format=null",
                      "data.options_column=options", "data.val_fraction=0", "data.eval_fraction=0.3")  # fmt: skip
    assert p.info["answer_type"] == answer and len(p.full) == 10
    by_text = dict(zip(table["instruction"], table["key"], strict=True))
    assert (
        dict(zip(p.full["text"], p.full["label"], strict=True)) == by_text
    )  # LLM-Adapters' instructions, rebuilt
    assert "answers read from column `answer` as " + answer in recipes.readme(p, cfg)


def test_a_table_with_one_column_per_option_and_a_three_option_question(tmp_path):
    path = tmp_path / "abcd.csv"
    pd.DataFrame({"q": ["2 + 2?", "Colour of the sky?", "Largest planet?", "H2O is?"],
                  "A": ["3", "green", "Mars", "water"], "B": ["4", "blue", "Jupiter", "salt"],
                  "C": ["5", "red", "Venus", "air"], "D": ["6", "", "Earth", "sand"],
                  "right": ["B", "B", "B", "A"]}).to_csv(path, index=False)  # fmt: skip
    p, _ = prepared("data=arc_easy", f"data.path={path}", "data.test_path=null", "data.format=null",
                    "data.question_column=q", "data.option_columns=[A,B,C,D]", "data.answer_column=right",
                    "data.val_fraction=0", "data.eval_fraction=0.25")  # fmt: skip
    rows = p.full.set_index("question")
    assert rows.loc["Colour of the sky?", "options"] == ["green", "blue", "red"]
    assert rows.loc["Colour of the sky?", "keys"] == ["answer1", "answer2", "answer3"]
    assert rows.loc["2 + 2?", "label"] == "answer2" and rows.loc["H2O is?", "label"] == "answer1"
    assert rows.loc["Colour of the sky?", "text"] == (
        "Please choose the correct answer to the question: Colour of the sky?\n\nAnswer1: green Answer2: blue "
        "Answer3: red\n\nAnswer format: answer1/answer2/answer3"
    )


ARC_ROW = records("arc_easy", "train")[0]  # four options, answer1


def bad(instruction=ARC_ROW["instruction"], answer="answer1") -> dict:
    return {"instruction": instruction, "input": "", "output": "", "answer": answer}


@pytest.mark.parametrize(
    ("row", "message"),
    [
        (bad(answer="answer5"), r"row 3: its answer 'answer5' names no option of its 4 \(answer1, answer2, answer3, "
                                r"answer4\)"),  # fmt: skip
        (bad(answer=""), r"row 3: its answer is empty"),
        (bad(answer=None), r"row 3: its answer is empty"),
        (bad("Please choose the correct answer to the question: Why?\n\nAnswer1: because\n\nAnswer format: answer1"),
         r"row 3: it has 1 option \(\['because'\]\): a question needs at least 2"),
        (bad("Why is the sky blue? Answer1: light Answer2: paint"),
         r"row 3: its instruction does not parse \(it has no closing 'Answer format: ...' line\): 'Why is the sky"),
        (bad(ARC_ROW["instruction"].replace("Answer3:", "Answer 3:")),
         r"row 3: its instruction does not parse \(it has no option 'Answer3:'"),
        (bad(ARC_ROW["instruction"].replace("answer1/answer2/answer3/answer4", "A/B/C/D")),
         r"row 3: its instruction does not parse \(its answer format 'A/B/C/D' is neither numbered keys"),
    ],
    ids=["answer5_of_four", "empty_answer", "null_answer", "one_option", "no_answer_format", "missing_option",
         "letter_keys"],
)  # fmt: skip
def test_a_bad_llm_adapters_question_is_a_data_error_naming_its_row_and_values(tmp_path, row, message):
    path = write_records(tmp_path / "bad.json", [bad(), bad(), row, bad()])
    with pytest.raises(recipes.DataError, match=r"data.path='.*bad.json': 1 row of 4 cannot be read as a "
                                                r"multiple-choice question: " + message):  # fmt: skip
        prepared("data=arc_easy", f"data.path={path}")


def test_bad_table_questions_are_data_errors_naming_their_rows_and_values(tmp_path):
    path = tmp_path / "t.jsonl"
    pd.DataFrame({"question": ["a?", "b?", "c?", "d?", ""], "options": [["x", "y"], ["x", "y", "z", "w"], ["x"], ["x", "y"], ["x", "y"]],
                  "answer": [1, 5, 1, None, 2]}).to_json(path, orient="records", lines=True)  # fmt: skip
    with pytest.raises(recipes.DataError) as caught:
        prepared("data=arc_easy", f"data.path={path}", "data.test_path=null", "data.format=null",
                 "data.options_column=options")  # fmt: skip
    text = str(caught.value)
    assert "4 rows of 5 cannot be read" in text
    assert "row 2: its answer '5' (read as index1) names none of its 4 options ['x', 'y', 'z', 'w']" in text
    assert "row 3: it has 1 option (['x']): a question needs at least 2" in text
    assert "row 4: its answer is empty" in text and "and 1 more" in text
    with pytest.raises(recipes.DataError, match=r"set data.options_column .* or data.option_columns"):
        prepared("data=arc_easy", f"data.path={path}", "data.test_path=null", "data.format=null")
    with pytest.raises(recipes.DataError, match=r"data.options_column / data.option_columns are for tables"):
        prepared("data=arc_easy", "data.options_column=options")
    with pytest.raises(recipes.DataError, match=r"data.answer_type='number' is not valid: choose one of"):
        prepared("data=arc_easy", f"data.path={path}", "data.test_path=null", "data.format=null",
                 "data.options_column=options", "data.answer_type=number")  # fmt: skip


def test_task_and_data_must_fit_and_a_missing_test_file_is_named_before_anything_is_read():
    from reftlab import validate
    from reftlab.data import checks

    with pytest.raises(
        validate.ConfigError, match=r"task=yes_no cannot use data=arc_easy: it is multiple choice"
    ):
        checks.check_data(compose("data=arc_easy").data, "yes_no")
    with pytest.raises(
        validate.ConfigError, match=r"task=choice needs multiple-choice data .* data=opinion_spam"
    ):
        checks.check_data(compose("data=opinion_spam").data, "choice")
    with pytest.raises(recipes.DataError, match=r"data.test_path='nowhere.json': no such file"):
        checks.check_data(compose("data=arc_easy", "data.test_path=nowhere.json").data, "choice")
    with pytest.raises(
        validate.ConfigError, match=r"data.label_column is not a setting of the choice recipe"
    ):
        checks.check_data(compose("data=arc_easy", "+data.label_column=answer").data, "choice")


@pytest.mark.parametrize("name", list(READ))
def test_each_hub_config_reads_the_same_files_from_the_pinned_commit(name):
    """The hub variant names LLM-Adapters' raw files at the commit the shipped copies come from; a
    local path stands in for the URL (no network here): the same reader, the same rows."""
    hub = compose(f"data={name}_hub").data
    commit = "816657208af4db747803f87ba40a4c71383fed7a"
    assert hub.path.startswith(
        f"https://raw.githubusercontent.com/AGI-Edgerunners/LLM-Adapters/{commit}/dataset/"
    )
    assert hub.path.endswith("/train.json") and hub.test_path == hub.path.replace("/train.json", "/test.json")
    assert hub.name == name and recipes.is_url(hub.path)
    local = compose(f"data={name}").data
    assert {k: v for k, v in hub.items() if k not in ("path", "test_path")} == {
        k: v for k, v in local.items() if k not in ("path", "test_path")
    }
    if name == "arc_challenge":  # the smallest: the reading itself is the shipped configs' (tests above)
        standing_in = [
            f"data.path={SHIPPED / name / 'train.json'}",
            f"data.test_path={SHIPPED / name / 'test.json'}",
        ]
        from_hub, _ = prepared(f"data={name}_hub", *standing_in, "data.max_train=24", "data.max_eval=16")
        shipped, _ = prepared(f"data={name}", "data.max_train=24", "data.max_eval=16")
        assert from_hub.version() == shipped.version() and len(from_hub.eval) == 16


def test_list_columns_survive_the_prepared_files(tmp_path):
    p, cfg = prepared("data=arc_challenge", "data.max_train=24", "data.max_val=16", "data.max_eval=16")
    folder = recipes.write(p, cfg, tmp_path / "out")
    for part in ("full", "train", "val", "eval"):
        back = versioning.read(folder, folder, part)
        mine = getattr(p, part)
        assert list(back.columns) == list(mine.columns)
        for name in ("options", "keys"):
            assert back[name].map(type).eq(list).all() and list(back[name]) == list(mine[name])
    assert json.loads((folder / "recipe.json").read_text())["options"] == p.info["options"]


@pytest.mark.slow
def test_a_choice_dataset_goes_through_oxen_with_its_lists(tmp_path, monkeypatch, in_root):
    monkeypatch.setenv("REFTLAB_DATA_REPOS", str(tmp_path / "repos"))
    cfg = compose("data=boolq", "data.max_train=24", "data.max_val=16", "data.max_eval=16").data
    loaded, commit = versioning.load(cfg)
    direct = recipes.prepare(cfg)
    assert commit and loaded.version() == direct.version()
    for part in ("full", "train", "val", "eval"):
        a, b = getattr(loaded, part), getattr(direct, part)
        assert list(a["options"]) == list(b["options"]) and list(a["keys"]) == list(b["keys"])
        assert a["options"].map(type).eq(list).all()
    assert loaded.info["test_source"].endswith("boolq/test.json") and loaded.info["keys"] == ["false", "true"]


@pytest.mark.slow
def test_choice_on_arc_easy_runs_end_to_end_and_a_bad_file_stops_before_the_model(mlflow_uri, tmp_path):
    done = train_here(*tiny_overrides("task=choice", "data=arc_easy", "trainer.max_length=128",
                                      f"mlflow.tracking_uri={mlflow_uri}"))  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    run = runs(mlflow_uri).iloc[0]
    assert run["status"] == "FINISHED" and run["params.data.recipe"] == "choice"
    for metric in ("accuracy", "acc", "acc_norm", "val_accuracy"):
        assert 0 <= run[f"metrics.{metric}"] <= 1, metric
    path = write_records(tmp_path / "bad.json", [bad(), bad(answer="answer5")])
    refused = train_here(*tiny_overrides("task=choice", "data=arc_easy", f"data.path={path}", "data.name=bad_arc",
                                         f"mlflow.tracking_uri={mlflow_uri}"))  # fmt: skip
    assert refused.returncode == 2 and "Traceback" not in refused.stderr
    assert "row 2: its answer 'answer5' names no option of its 4" in refused.stderr
