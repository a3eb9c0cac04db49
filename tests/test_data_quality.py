"""Data quality (issue #19): holes in the data, too little data, duplicate texts, the settings a pinned
data version was prepared with (the model card's predict commands: test_predict.py)."""

import json

import pandas as pd
import pytest
from conftest import compose
from test_data import SUBSET, prepared

from reftlab.data import recipes, versioning


def table(n: int = 40) -> pd.DataFrame:
    """n distinct texts, labels alternating 1/0."""
    return pd.DataFrame({"text": [f"text number {i}" for i in range(n)], "label": [i % 2 for i in range(n)]})


def write(df: pd.DataFrame, path) -> None:
    fmt = str(path).rsplit(".", 1)[-1]
    {"csv": lambda: df.to_csv(path, index=False), "parquet": lambda: df.to_parquet(path),
     "jsonl": lambda: df.to_json(path, orient="records", lines=True)}[fmt]()  # fmt: skip


def own(path, *extra):
    return prepared("data=csv", f"data.path={path}", "data.positive_label=1", *extra)


# A. missing values


def test_an_empty_label_cell_in_a_csv_is_dropped_not_read_as_no(tmp_path, caplog):
    path = tmp_path / "holes.csv"
    df = table().astype({"label": object})
    df.loc[[2, 6], "label"] = ""  # what keep_default_na=False reads from an empty cell
    df.loc[9, "label"] = "   "  # whitespace only: no label either
    df.loc[11, "text"] = ""
    write(df, path)
    with caplog.at_level("WARNING"):
        p, cfg = own(path)
    assert len(p.full) == 36 and not set(p.full.index) & {2, 6, 9, 11}
    assert p.full["label"].value_counts().to_dict() == {"Yes": 18, "No": 18}  # 2, 6 were even: not "No"
    assert p.info["dropped_no_label"] == 3 and p.info["dropped_no_label_rows"] == [3, 7, 10]
    assert p.info["dropped_no_text"] == 1 and p.info["dropped_no_text_rows"] == [12]
    assert "dropped 3 rows with no label (rows 3, 7, 10), 1 with no text (row 12)" in recipes.readme(p, cfg)
    assert "3 rows with no label" in caplog.text and "holes.csv" in caplog.text


@pytest.mark.parametrize("fmt", ["parquet", "jsonl"])
def test_null_labels_and_texts_in_parquet_and_jsonl_are_dropped(tmp_path, fmt):
    path = tmp_path / f"holes.{fmt}"
    df = table().astype({"label": "Int64", "text": object})
    df.loc[[0, 5], "label"] = pd.NA
    df.loc[[3, 8, 20], "text"] = None
    write(df, path)
    p, _ = own(path)
    assert len(p.full) == 35 and "None" not in set(p.full["text"]) and p.full["text"].map(type).eq(str).all()
    assert (p.info["dropped_no_label"], p.info["dropped_no_text"]) == (2, 3)
    assert p.info["dropped_no_label_rows"] == [1, 6] and p.info["dropped_no_text_rows"] == [4, 9, 21]
    # an integer column with a hole is read as floats (1.0): positive_label=1 still matches
    assert p.full["label"].value_counts().to_dict() == {"Yes": 18, "No": 17}


def test_too_little_data_left_after_dropping_says_so_and_names_the_rows(tmp_path):
    path = tmp_path / "mostly_holes.csv"
    df = table(12).astype({"label": object})
    df.loc[[1, 3, 5, 7, 9], "label"] = ""  # only one "1" left
    write(df, path)
    with pytest.raises(
        recipes.DataError, match=r"1 'Yes' row.*dropped 5 rows with no label \(rows 2, 4, 6, 8, 10\)"
    ):
        own(path)


def test_persuasion_drops_arguments_with_no_text(tmp_path):
    raw = pd.read_csv(SUBSET, keep_default_na=False)
    claude = raw.index[raw["source"].isin(recipes.CLAUDE_SOURCES)]
    raw.loc[claude[:2], "argument"] = ""
    raw.to_csv(tmp_path / "p.csv", index=False)
    p, _ = prepared("data=persuasion_sample", f"data.path={tmp_path / 'p.csv'}")
    assert p.info["dropped_no_text"] == 2 and p.info["dropped_no_text_rows"] == [
        int(i) + 1 for i in claude[:2]
    ]
    for part in (p.full, p.train, p.val, p.eval):
        assert part["text"].str.strip().ne("").all()


# B. too little data


@pytest.mark.parametrize(
    "labels,extra,words",
    [
        ([1, 0, 0, 0], [], r"stratified test split .* at least 2 rows of each label.*1 'Yes' row"),
        ([1, 1, 0, 0], [], r"eval_fraction=0.2 of 4 rows leaves 1 test row"),
        (
            [1, 0] * 10,
            ["data.val_fraction=0.05"],
            r"validation split .*val_fraction=0.05 of the training part's 16 rows leaves 1 validation row",
        ),
    ],
)
def test_too_little_data_is_a_data_error_that_names_what_is_needed(tmp_path, labels, extra, words):
    path = tmp_path / "tiny.csv"
    pd.DataFrame({"text": [f"t{i}" for i in range(len(labels))], "label": labels}).to_csv(path, index=False)
    with pytest.raises(recipes.DataError, match=words):
        own(path, *extra)


def test_a_group_split_with_too_few_groups_is_a_data_error(tmp_path):
    path = tmp_path / "groups.csv"
    df = table(20).assign(hotel=["a"] * 10 + ["b"] * 10)
    write(df, path)
    with pytest.raises(
        recipes.DataError, match=r"data.eval_fraction=0.6 of 2 groups leaves no group for training"
    ):
        own(path, "data.group_column=hotel", "data.split=hotel", "data.eval_fraction=0.6")


# C. duplicates


def test_the_default_split_has_no_text_in_two_parts_and_the_readme_counts_the_duplicates(tmp_path):
    p, cfg = prepared()
    parts = [set(p.train["text"]), set(p.val["text"]), set(p.eval["text"])]
    assert all(a.isdisjoint(b) for i, a in enumerate(parts) for b in parts[i + 1 :])
    assert not p.full["text"].duplicated().any()
    assert p.info["duplicates_removed"] == 4 and p.info["conflicting_texts"] == 0 and len(p.full) == 1596
    text = (recipes.write(p, cfg, tmp_path / "out") / "README.md").read_text()
    assert "removed 4 duplicate texts, 0 with conflicting labels" in text


def test_copies_that_disagree_on_the_label_are_all_dropped(tmp_path):
    path = tmp_path / "dupes.csv"
    df = table(40)
    df.loc[5, "text"] = df.loc[1, "text"]  # same label (1): the first copy (row 2) stays
    df.loc[[7, 9], "text"] = df.loc[2, "text"]  # labels 1, 1 vs 0: every copy goes
    write(df, path)
    p, cfg = own(path)
    assert len(p.full) == 40 - 1 - 3 and p.full["text"].is_unique
    assert "text number 1" in set(p.full["text"]) and "text number 2" not in set(p.full["text"])
    assert p.full.loc[1, "label"] == "Yes" and 5 not in p.full.index
    assert (p.info["duplicates_removed"], p.info["conflicting_texts"], p.info["conflicting_rows"]) == (
        1,
        1,
        3,
    )
    assert "removed 1 duplicate text, 1 with conflicting labels (3 rows dropped)" in recipes.readme(p, cfg)


def test_persuasion_dedupes_arguments_before_upsampling_and_the_seed_split_keeps_the_blogs_rows():
    p, _ = prepared("data=persuasion_sample")  # split=argument
    honest = p.full[p.full["label"] == "No"]
    assert honest["text"].is_unique and len(honest) == 45  # 135 rating rows of 45 arguments
    assert p.full["label"].value_counts().to_dict() == {"No": 45, "Yes": 45}  # upsampled after dedupe
    assert p.full.loc[p.full["label"] == "Yes", "text"].duplicated().any()  # the upsampled copies stay
    assert p.info["duplicates_removed"] == 120
    seed, _ = prepared("data=persuasion_sample", "data.split=seed")
    assert len(seed.full) == 270 and "duplicates_removed" not in seed.info  # the blog's recipe, exactly


# D. a pinned data version is described with the settings it was made with


@pytest.fixture
def repos(tmp_path, monkeypatch):
    monkeypatch.setenv("REFTLAB_DATA_REPOS", str(tmp_path / "repos"))
    return tmp_path / "repos"


@pytest.mark.slow
def test_a_pinned_revision_is_described_with_its_own_settings(repos, in_root, caplog):
    old, _ = versioning.prepare(
        compose("data.split=hotel", "data.eval_fraction=0.25", "data.split_seed=7").data
    )
    versioning.prepare(compose().data)  # the head is now the default (stratified) version
    cfg = compose(f"data.revision={old}").data
    assert cfg.split == "stratified"
    with caplog.at_level("WARNING"):
        p, commit = versioning.load(cfg)
    assert commit == old and "was prepared with split='hotel' (the config says 'stratified')" in caplog.text
    assert (p.info["split"], p.info["eval_fraction"], p.info["split_seed"]) == ("hotel", 0.25, 7)
    assert p.info["recipe"] == "table" and p.info["val_fraction"] == 0.15
    assert p.info["duplicates_removed"] == 4 and p.info["dropped_no_label"] == 0
    text = recipes.readme(p, cfg)
    assert "split: hotel; eval fraction 0.25; split seed 7" in text and "stratified" not in text
    assert "removed 4 duplicate texts" in text


def test_settings_of_an_older_commit_without_recipe_json_come_from_its_readme(tmp_path):
    (tmp_path / "README.md").write_text(
        "# opinion_spam (prepared by reftlab)\n\n- Source: data/opinion_spam/deceptive-opinion.csv\n"
        "- Recipe: table; split: hotel; eval fraction 0.2; split seed 42\n- full: 1600 rows (800 Yes / 800 No)\n"
        "- val (validation, 0.15 of the training part; settings are chosen on it): 240 rows (120 Yes / 120 No)\n"
    )
    assert versioning.recorded(tmp_path) == {
        "source": "data/opinion_spam/deceptive-opinion.csv", "recipe": "table", "split": "hotel",
        "eval_fraction": 0.2, "split_seed": 42, "val_fraction": 0.15,
    }  # fmt: skip
    (tmp_path / "recipe.json").write_text(json.dumps({"split": "stratified", "recipe": "table"}))
    assert versioning.recorded(tmp_path)["split"] == "stratified"  # recipe.json wins where present
