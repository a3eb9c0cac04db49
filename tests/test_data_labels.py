"""Any label set in the table recipe (issue #31): `data.positive_label=null` keeps the labels as the
strings they are (k classes), `data.label_column` may join several columns; splits, folds, caps,
de-duplication, the README and the errors work with k classes; task=yes_no is refused on them."""

import pandas as pd
import pytest
from conftest import compose, tiny_overrides, train_here
from test_data import prepared

from reftlab.data import recipes

OTT4 = ["deceptive negative", "deceptive positive", "truthful negative", "truthful positive"]


def own(path, *extra):
    return prepared("data=csv", f"data.path={path}", "data.positive_label=null", *extra)


def test_opinion_spam4_keeps_ott_et_al_s_four_classes_stratified():
    p, cfg = prepared("data=opinion_spam4")
    # 1,600 reviews, 400 per class; the 4 exact copies (truthful negative reviews) removed
    assert p.full["label"].value_counts().to_dict() == {
        OTT4[0]: 400,
        OTT4[1]: 400,
        OTT4[2]: 396,
        OTT4[3]: 400,
    }
    assert (len(p.train), len(p.val), len(p.eval)) == (1084, 192, 320)
    share = p.full["label"].value_counts() / len(p.full)
    for part in (p.train, p.val, p.eval):  # stratified: every class in proportion on each side
        assert (part["label"].value_counts() - share * len(part)).abs().max() <= 1
    assert set(p.train["label"]) == set(OTT4)
    assert p.info["labels"] == OTT4 and p.info["label_column"] == ["deceptive", "polarity"]
    assert "positive_label" not in p.info
    text = recipes.readme(p, cfg)
    assert "- full: 1596 rows (400 deceptive negative / 400 deceptive positive / 396 truthful negative / " \
           "400 truthful positive)" in text  # fmt: skip
    assert "`deceptive` + `polarity` (joined with a space), kept as they are: 4 labels" in text
    assert "Yes" not in text.split("- full:")[1]


def test_k_class_folds_hotel_groups_and_caps():
    folds = [prepared("data=opinion_spam4", "data.folds=4", f"data.fold={f}")[0] for f in range(4)]
    tests = [set(p.eval["text"]) for p in folds]
    assert sum(map(len, tests)) == 1596 and len(set().union(*tests)) == 1596  # a partition
    for p in folds:  # stratified folds: each class a quarter of its rows
        assert p.eval["label"].value_counts().sub(100).abs().max() <= 1
        assert set(p.val["label"]) == set(OTT4) and not set(p.val["text"]) & set(p.eval["text"])
    hotel, _ = prepared("data=opinion_spam4", "data.split=hotel")
    assert set(hotel.train["group"]).isdisjoint(hotel.eval["group"]) and set(hotel.eval["label"]) == set(OTT4)
    capped, _ = prepared("data=opinion_spam4", "data.max_train=12", "data.max_val=8", "data.max_eval=6")
    assert capped.train["label"].value_counts().to_dict() == {lab: 3 for lab in OTT4}
    assert capped.val["label"].value_counts().to_dict() == {lab: 2 for lab in OTT4}
    assert len(capped.eval) == 6 and capped.eval["label"].nunique() == 4


def test_numbers_and_booleans_become_their_strings_and_three_labels_stay_three(tmp_path):
    path = tmp_path / "three.jsonl"
    df = pd.DataFrame({"text": [f"claim {i}" for i in range(60)], "label": [i % 3 for i in range(60)],
                       "flag": [i % 2 == 0 for i in range(60)]})  # fmt: skip
    df.to_json(path, orient="records", lines=True)
    p, cfg = own(path)
    assert p.full["label"].value_counts().to_dict() == {"0": 20, "1": 20, "2": 20}
    assert p.eval["label"].value_counts().to_dict() == {"0": 4, "1": 4, "2": 4}
    assert "12 rows (4 0 / 4 1 / 4 2)" in recipes.readme(p, cfg)
    both, _ = own(path, "data.label_column=[label,flag]")
    assert sorted(both.full["label"].unique()) == [
        "0 False",
        "0 True",
        "1 False",
        "1 True",
        "2 False",
        "2 True",
    ]


def test_k_class_copies_that_disagree_are_dropped_and_the_errors_name_each_label(tmp_path):
    path = tmp_path / "dupes.csv"
    labels = ["red", "green", "blue"]
    df = pd.DataFrame({"text": [f"item {i}" for i in range(30)], "label": [labels[i % 3] for i in range(30)]})
    extra = pd.DataFrame({"text": ["item 0", "item 1", "item 2"], "label": ["red", "blue", "blue"]})
    pd.concat([df, extra]).to_csv(path, index=False)
    p, _ = own(path)  # item 0: an agreeing copy; item 1 (green, blue): every copy dropped; item 2: a copy
    assert len(p.full) == 29 and "item 1" not in set(p.full["text"])
    assert (p.info["duplicates_removed"], p.info["conflicting_texts"], p.info["conflicting_rows"]) == (
        2,
        1,
        2,
    )
    with pytest.raises(recipes.DataError, match=r"10 'blue' rows and 9 'green' rows and 10 'red' rows.*"
                                                r"data.eval_fraction=0.05"):  # fmt: skip
        own(path, "data.eval_fraction=0.05")
    one = tmp_path / "one.csv"
    pd.DataFrame({"text": ["a", "b", "c"], "label": ["x", "x", "x"]}).to_csv(one, index=False)
    with pytest.raises(recipes.DataError, match=r"Every row of column 'label' has the label 'x'.*at least 2"):
        own(one)


def test_bad_label_columns_are_named(tmp_path):
    path = tmp_path / "t.csv"
    pd.DataFrame({"text": ["a", "b"], "label": ["x", "y"]}).to_csv(path, index=False)
    with pytest.raises(recipes.DataError, match=r"data.label_column='mood' is not a column.*text, label"):
        own(path, "data.label_column=[label,mood]")
    with pytest.raises(recipes.DataError, match=r"data.label_column=\[\] is not valid"):
        own(path, "data.label_column=[]")


def test_yes_no_on_kept_labels_is_refused_before_loading():
    from reftlab import validate
    from reftlab.data import checks

    with pytest.raises(validate.ConfigError, match=r"data.positive_label=null.*task=yes_no.*task=classify"):
        checks.check_data(compose("data=opinion_spam4").data, "yes_no")
    checks.check_data(compose("data=opinion_spam4").data)  # no task: the data CLI prepares it
    checks.check_data(compose("data=opinion_spam4").data, "classify")
    checks.check_data(compose("data=opinion_spam").data, "yes_no")
    checks.check_data(compose("data=opinion_spam").data, "classify")  # Yes/No are two labels too


@pytest.mark.slow
def test_classify_on_opinion_spam4_runs_end_to_end_and_yes_no_stops_before_loading(mlflow_uri):
    from conftest import runs

    args = tiny_overrides("task=classify", "data=opinion_spam4", f"mlflow.tracking_uri={mlflow_uri}")
    done = train_here(*args)
    assert done.returncode == 0, done.stderr[-3000:]
    run = runs(mlflow_uri).iloc[0]
    assert run["status"] == "FINISHED" and run["params.data.label_column"] == "['deceptive', 'polarity']"
    assert 0 <= run["metrics.accuracy"] <= 1 and "metrics.recall.truthful positive" in run
    refused = train_here(*tiny_overrides("data=opinion_spam4", f"mlflow.tracking_uri={mlflow_uri}"))
    assert refused.returncode == 2 and "data.positive_label=null" in refused.stderr
    assert "Traceback" not in refused.stderr
