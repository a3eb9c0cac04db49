"""The data recipes: counts, labels, splits without leakage, the blog's seed split, bring-your-own files."""

import pandas as pd
import pytest
from conftest import ROOT, compose
from sklearn.model_selection import train_test_split
from sklearn.utils import resample

from reftlab.data import recipes

SUBSET = ROOT / "data/persuasion/anthropic_persuasion_subset_3claims.csv"


def prepared(*overrides):
    cfg = compose(*overrides).data
    if cfg.path is not None and not recipes.is_url(cfg.path):
        cfg.path = str(ROOT / cfg.path)
    return recipes.prepare(cfg), cfg


def test_opinion_spam_counts_and_stratified_split():
    p, _ = prepared()
    # 1,600 reviews, 4 of them exact copies of another (truthful) review: removed before splitting
    assert len(p.full) == 1596
    assert p.full["label"].value_counts().to_dict() == {"Yes": 800, "No": 796}
    # test 20%; validation 15% of the remaining 80%, both stratified; no row on two sides
    assert (len(p.train), len(p.val), len(p.eval)) == (1084, 192, 320)
    assert p.eval["label"].value_counts().to_dict() == {"Yes": 160, "No": 160}
    assert p.val["label"].value_counts().to_dict() == {"Yes": 96, "No": 96}
    assert set(p.train.columns) >= {"text", "label", "group"}
    parts = [set(p.train["group"]), set(p.val["group"]), set(p.eval["group"])]  # row ids here
    assert all(a.isdisjoint(b) for i, a in enumerate(parts) for b in parts[i + 1 :])


def test_no_validation_split_with_val_fraction_zero_and_bad_fraction_named():
    p, _ = prepared("data.val_fraction=0")
    assert (len(p.train), len(p.val), len(p.eval)) == (1276, 0, 320)
    with pytest.raises(recipes.DataError, match=r"data.val_fraction=1.5 must be >= 0 and < 1"):
        prepared("data.val_fraction=1.5")


def test_opinion_spam_hotel_split_holds_out_whole_hotels():
    p, _ = prepared("data.split=hotel")
    train_hotels, val_hotels, eval_hotels = set(p.train["group"]), set(p.val["group"]), set(p.eval["group"])
    assert train_hotels.isdisjoint(eval_hotels) and val_hotels.isdisjoint(train_hotels | eval_hotels)
    assert len(train_hotels) + len(val_hotels) + len(eval_hotels) == 20 and len(val_hotels) >= 1
    assert len(p.train) + len(p.val) + len(p.eval) == 1596  # 1,600 less 4 duplicate reviews


def test_caps_keep_labels_balanced():
    p, _ = prepared("data.max_train=10", "data.max_eval=6", "data.max_val=4")
    assert p.train["label"].value_counts().to_dict() == {"Yes": 5, "No": 5}
    assert p.val["label"].value_counts().to_dict() == {"Yes": 2, "No": 2}
    assert len(p.eval) == 6 and p.eval["label"].nunique() == 2


def test_persuasion_recipe_counts_and_labels():
    p, _ = prepared("data=persuasion_sample")
    # 180 Claude rows (3 ratings of each of 60 arguments) -> one row per argument: 45 honest, 15
    # deceptive upsampled to 45 -> 90 balanced rows (split=seed keeps the blog's 270 rows).
    assert len(p.full) == 90
    assert p.full["label"].value_counts().to_dict() == {"No": 45, "Yes": 45}
    assert set(p.full["source"]) == set(recipes.CLAUDE_SOURCES)
    assert (p.full["label"] == "Yes").equals(p.full["prompt_type"] == "Deceptive")
    assert not p.eval["text"].duplicated().any()


@pytest.mark.parametrize("split,key", [("argument", "text"), ("claim", "claim")])
def test_persuasion_default_splits_do_not_leak(split, key):
    # three claims: a third of them held out for the test split, so two remain to carve validation from
    fraction = "0.3" if split == "claim" else "0.5"
    p, _ = prepared("data=persuasion_sample", f"data.split={split}", f"data.eval_fraction={fraction}")
    train, val, test = set(p.train[key]), set(p.val[key]), set(p.eval[key])
    assert train.isdisjoint(test) and val.isdisjoint(train | test)
    assert len(p.eval) > 0 and len(p.val) > 0 and len(p.train) > 0


def test_persuasion_default_split_is_leak_free_and_seed_split_leaks():
    default, cfg = prepared("data=persuasion_sample")
    assert cfg.split == "argument"
    held_out = set(default.val["text"]) | set(default.eval["text"])
    assert set(default.train["text"]).isdisjoint(held_out)  # no argument (or its copies) on two sides
    p, _ = prepared("data=persuasion_sample", "data.split=seed")
    # The blog's split puts upsampled copies of one argument on both sides (why it is not the default).
    assert not set(p.train["text"]).isdisjoint(set(p.eval["text"]))


def test_seed_split_follows_the_blog_recipe_step_by_step():
    p, cfg = prepared(
        "data=persuasion_sample", "data.split=seed", "data.val_fraction=0", "data.eval_fraction=0.05"
    )
    df = pd.read_csv(SUBSET, keep_default_na=False)
    df = df[
        df["source"].isin(["Claude 1.3", "Claude 2", "Claude 3 Haiku", "Claude 3 Opus", "Claude Instant 1.2"])
    ]
    df = df.assign(label=df["prompt_type"].map(lambda t: "Yes" if t == "Deceptive" else "No"))
    honest = df[df["label"] == "No"]
    deceptive = resample(df[df["label"] == "Yes"], replace=True, n_samples=len(honest), random_state=12)
    balanced = pd.concat([honest, deceptive])
    train, test = train_test_split(balanced, test_size=0.05, random_state=42)
    test = test.drop_duplicates(subset=["argument"])
    assert list(p.train["text"]) == list(train["argument"])
    assert list(p.eval["text"]) == list(test["argument"])
    assert list(p.eval["label"]) == list(test["label"])


def test_full_persuasion_config_reads_a_local_copy_like_the_sample():
    full, _ = prepared(
        "data=persuasion", f"data.path={SUBSET}", "data.eval_fraction=0.5"
    )  # the sample's split
    sample, _ = prepared("data=persuasion_sample")
    assert full.train[["text", "label"]].equals(sample.train[["text", "label"]])


def test_write_produces_parquet_and_readme(tmp_path):
    p, cfg = prepared("data=persuasion_sample")
    folder = recipes.write(p, cfg, tmp_path / "out")
    for part in ("full", "train", "val", "eval"):
        assert len(pd.read_parquet(folder / f"{part}.parquet")) == len(getattr(p, part))
    text = (folder / "README.md").read_text()
    assert "CC BY-NC-SA" in text and p.version() in text and "90 rows" in text


@pytest.mark.parametrize("fmt", ["csv", "tsv", "parquet", "jsonl"])
def test_bring_your_own_file(tmp_path, fmt):
    df = pd.DataFrame({"body": [f"text {i}" for i in range(40)], "spam": [i % 2 for i in range(40)]})
    path = tmp_path / f"mine.{fmt}"
    {"csv": lambda: df.to_csv(path, index=False), "tsv": lambda: df.to_csv(path, sep="\t", index=False),
     "parquet": lambda: df.to_parquet(path), "jsonl": lambda: df.to_json(path, orient="records", lines=True)}[fmt]()  # fmt: skip
    p, _ = prepared("data=csv", f"data.path={path}", "data.text_column=body", "data.label_column=spam",
                    "data.positive_label=1")  # fmt: skip
    assert (len(p.train), len(p.val), len(p.eval)) == (27, 5, 8)
    assert set(p.full.loc[df["spam"] == 1, "label"]) == {"Yes"}


def test_headerless_file_uses_numbered_columns(tmp_path):
    path = tmp_path / "noheader.csv"
    path.write_text("".join(f"review {i},{'fake' if i % 2 else 'real'}\n" for i in range(20)))
    p, _ = prepared("data=csv", f"data.path={path}", "data.header=false", "data.text_column=0",
                    "data.label_column=1", "data.positive_label=fake")  # fmt: skip
    assert p.full["label"].value_counts().to_dict() == {"Yes": 10, "No": 10}


def test_missing_column_names_the_columns(tmp_path):
    path = tmp_path / "x.csv"
    pd.DataFrame({"a": ["t"] * 4, "b": [0, 1, 0, 1]}).to_csv(path, index=False)
    with pytest.raises(recipes.DataError, match=r"data.text_column='text'.*columns are: a, b"):
        prepared("data=csv", f"data.path={path}")


def test_missing_file_and_bad_settings_are_named(tmp_path):
    with pytest.raises(recipes.DataError, match="no such file"):
        prepared("data=csv", f"data.path={tmp_path / 'nope.csv'}")
    with pytest.raises(recipes.DataError, match="data.path is not set"):
        prepared("data=csv")
    with pytest.raises(recipes.DataError, match=r"data.split='nonsense'.*stratified"):
        prepared("data.split=nonsense")
    with pytest.raises(recipes.DataError, match=r"positive_label='maybe'.*deceptive, truthful"):
        prepared("data.positive_label=maybe")


def test_corrupt_file_is_reported(tmp_path):
    path = tmp_path / "broken.parquet"
    path.write_bytes(b"not a parquet file")
    with pytest.raises(recipes.DataError, match="Could not read"):
        prepared("data=csv", f"data.path={path}")


def test_several_positive_labels_yaml_booleans_and_the_readme_says_which(tmp_path):
    # a LIAR-style table: six truth labels, three of them mean "deceptive"; YAML reads `false` as a boolean
    labels = ["pants-fire", "false", "barely-true", "half-true", "mostly-true", "true"]
    df = pd.DataFrame(
        {"statement": [f"claim {i}" for i in range(60)], "truth": [labels[i % 6] for i in range(60)]}
    )
    path = tmp_path / "liar.tsv"
    df.to_csv(path, sep="\t", index=False)
    common = ["data=csv", f"data.path={path}", "data.text_column=statement", "data.label_column=truth"]
    p, _ = prepared(*common, "data.positive_label=[pants-fire,false,barely-true]", "data.license=CC BY 4.0")
    yes = set(df.loc[p.full.index[p.full["label"] == "Yes"], "truth"])
    assert yes == {"pants-fire", "false", "barely-true"} and (p.full["label"] == "Yes").sum() == 30
    text = recipes.readme(p, compose(*common, "data.license=CC BY 4.0").data)
    assert "`Yes` = `truth` is 'barely-true' or 'false' or 'pants-fire'" in text
    assert "'half-true' or 'mostly-true' or 'true'" in text and "License: CC BY 4.0" in text
    assert "deceptive" not in text and "CC BY-NC-SA" not in text  # not the shipped corpora's words
    # one wrong value in the list is named (as typed), with the file's values
    with pytest.raises(
        recipes.DataError, match=r"positive_label=\['pant-fire'\].*barely-true, false, half-true"
    ):
        prepared(*common, "data.positive_label=[pant-fire,false]")
    # a bare YAML boolean / number still matches the file's text
    bools = tmp_path / "b.csv"
    pd.DataFrame({"text": [f"t{i}" for i in range(20)], "label": ["false", "true"] * 10}).to_csv(
        bools, index=False
    )
    p, _ = prepared("data=csv", f"data.path={bools}", "data.positive_label=false")
    assert (p.full["label"] == "Yes").sum() == 10
    text = recipes.readme(p, compose("data=csv", f"data.path={bools}").data)
    assert "License: not given" in text


def test_folds_partition_the_reviews_and_draw_validation_inside_the_training_part():
    parts = [prepared("data.folds=5", f"data.fold={i}")[0] for i in range(5)]
    tests = [set(p.eval["group"]) for p in parts]  # row ids (stratified)
    assert sum(map(len, tests)) == len(parts[0].full) == 1596  # each review in exactly one test fold
    assert set().union(*tests) == set(parts[0].full["group"])
    for p, test in zip(parts, tests, strict=True):
        assert abs(p.eval["label"].value_counts()["Yes"] - len(p.eval) / 2) <= 2  # stratified
        assert test.isdisjoint(p.train["group"]) and test.isdisjoint(p.val["group"])
        assert set(p.val["group"]).isdisjoint(p.train["group"])
        assert len(p.val) == pytest.approx(0.15 * (len(p.full) - len(p.eval)), abs=1)
    assert parts[2].info["folds"] == 5 and parts[2].info["fold"] == 2
    assert "fold 2 of 5" in recipes.readme(parts[2], compose("data.folds=5", "data.fold=2").data)


def test_keep_takes_ott_et_al_s_800_positive_reviews_and_names_a_bad_value():
    import pandas as pd

    parts = [prepared("data.keep.polarity=positive", "data.split=hotel", "data.folds=5", f"data.fold={i}")[0]
             for i in range(5)]  # fmt: skip
    raw = pd.read_csv(ROOT / "data/opinion_spam/deceptive-opinion.csv")
    positive = set(raw.loc[raw["polarity"] == "positive", "text"])
    assert len(parts[0].full) == 800 and set(parts[0].full["text"]) <= positive  # 400 deceptive, 400 truthful
    assert (parts[0].full["label"] == "Yes").sum() == 400
    assert sum(len(p.eval) for p in parts) == 800  # 5 hotel folds of the positive reviews
    assert parts[0].info["keep"] == {"polarity": ["positive"]} and "Rows kept" in recipes.readme(
        parts[0], compose("data.keep.polarity=positive").data
    )
    assert "keep" not in prepared()[0].info  # null: every row, the version as before
    with pytest.raises(
        recipes.DataError, match=r"data.keep.polarity='positve'.*its values are: negative, positive"
    ):
        prepared("data.keep.polarity=positve")
    with pytest.raises(recipes.DataError, match=r"data.keep='stars' is not a column.*polarity"):
        prepared("+data.keep.stars=5")


def test_hotel_folds_hold_out_whole_hotels():
    parts = [prepared("data.split=hotel", "data.folds=5", f"data.fold={i}")[0] for i in range(5)]
    held = [set(p.eval["group"]) for p in parts]  # hotels
    assert sum(map(len, held)) == 20 and len(set().union(*held)) == 20  # 20 hotels, 4 a fold
    for p, hotels in zip(parts, held, strict=True):
        assert hotels.isdisjoint(p.train["group"]) and hotels.isdisjoint(p.val["group"])


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (("data.folds=5", "data.fold=5"), r"data.fold=5 is not valid: choose 0 \.\. 4 \(data.folds=5\)"),
        (("data.folds=1",), r"data.folds=1 is not valid: it must be an integer >= 2"),
        (("data.fold=1",), r"data.fold=1 is not valid: choose 0 unless data.folds is set"),
    ],
)
def test_bad_folds_are_refused_before_any_data_is_read(overrides, message):
    from reftlab import validate

    with pytest.raises(validate.ConfigError, match=message):
        validate.check_data(compose(*overrides).data)


def test_more_folds_than_hotels_is_a_data_error_that_says_so():
    with pytest.raises(recipes.DataError, match=r"data.folds=25 needs at least 25 groups .* there are 20"):
        prepared("data.split=hotel", "data.folds=25")


def test_persuasion_keep_keeps_only_the_rows_it_records():
    raw = pd.read_csv(SUBSET, keep_default_na=False)
    p, _ = prepared("data=persuasion_sample", "+data.keep.source='Claude 2'")
    assert set(p.full["source"]) == {"Claude 2"} and p.info["keep"] == {"source": ["Claude 2"]}
    assert set(p.full["text"]) == set(raw.loc[raw["source"] == "Claude 2", "argument"])
    claim = "Corporations should be required to disclose their climate impacts"
    hub, _ = prepared(
        "data=persuasion", f"data.path={SUBSET}", "data.eval_fraction=0.5", f"+data.keep.claim='{claim}'"
    )
    assert set(hub.full["claim"]) == {claim} and "Rows kept: {'claim'" in recipes.readme(hub, compose().data)
    with pytest.raises(recipes.DataError, match=r"data.keep.claim='x': \['x'\] does not occur.*Corporations"):
        prepared("data=persuasion_sample", "+data.keep.claim=x")
    with pytest.raises(
        recipes.DataError, match=r"data.keep=\{'source': \['Human'\]\} leaves no Claude argument"
    ):
        prepared("data=persuasion_sample", "+data.keep.source=Human")


def test_an_empty_keep_list_is_refused_not_recorded():
    with pytest.raises(recipes.DataError, match=r"data.keep.polarity=\[\] keeps no row.*null: every row"):
        prepared("data.keep.polarity=[]")


def own_table(folder) -> str:
    """A small labelled table with a group and a colour column (data=csv)."""
    path = folder / "own.csv"
    pd.DataFrame({"text": [f"note number {i}" for i in range(80)], "label": ["Yes", "No"] * 40,
                  "team": [f"t{i % 8}" for i in range(80)], "colour": ["red", "blue", "blue", "red"] * 20}
                 ).to_csv(path, index=False)  # fmt: skip
    return str(path)


def own_choice(folder) -> dict:
    """Small multiple-choice train and test files (ARC-Easy's first four-option questions, LLM-Adapters' JSON)."""
    import json

    shipped = ROOT / "data/reft_tasks/commonsense/arc_easy"
    paths = {}
    for part, n in (("train", 80), ("test", 40)):
        rows = [
            r
            for r in json.loads((shipped / f"{part}.json").read_text())
            if "Answer5:" not in r["instruction"]
        ]
        paths[f"mc_{part}"] = folder / f"mc_{part}.json"
        paths[f"mc_{part}"].write_text(json.dumps(rows[:n]))
    return paths


def changes(group: str | None = None, keep: dict | None = None, persuasion: bool = False) -> dict:
    """A value other than its default for each setting a prepared version may record."""
    out = {"split": "seed" if persuasion else group, "eval_fraction": 0.3, "split_seed": 7, "val_fraction": 0.3,
           "folds": 4, "fold": 1, "keep": keep}  # fmt: skip
    return out | ({"upsample_seed": 3} if persuasion else {})


CONFIGS = {  # data config -> (its overrides, the changes)
    "opinion_spam": ([], changes("hotel", {"polarity": "negative"})),
    "csv": (["data.path={own}", "data.group_column=team"], changes("team", {"colour": "red"})),
    "persuasion_sample": ([], changes(keep={"source": "Claude 3 Opus"}, persuasion=True)),
    "persuasion": ([f"data.path={SUBSET}"],
                   changes(keep={"prompt_type": ["Deceptive", "Compelling Case"]}, persuasion=True)),
    "arc_easy": (["data.path={mc_train}", "data.test_path={mc_test}"],
                 changes("stratified", {"answer": ["answer1", "answer2"]})),  # eval_fraction: unused (a test file)
}  # fmt: skip


@pytest.mark.parametrize("folds", [[], ["data.folds=3"]], ids=["test_fraction", "folds"])
@pytest.mark.parametrize("data", list(CONFIGS))
def test_every_recorded_setting_is_applied_and_no_other(data, folds, tmp_path):
    """Changing a setting that a prepared version records (prepared.info: its recipe.json and README)
    changes its rows; changing one it does not record changes neither its rows nor its record (so no
    second version of the same rows). Every recipe and data config (the hub's reads a local copy),
    with and without folds."""
    import copy

    from omegaconf import open_dict

    extra, values = CONFIGS[data]
    own = {"own": own_table(tmp_path), **own_choice(tmp_path)}
    before, cfg = prepared(f"data={data}", *(o.format(**own) for o in extra), *folds)
    recorded = (set(recipes.described_settings(cfg)) - {"recipe"}) | {"keep"}  # keep: every recipe applies it
    assert recorded <= set(values), f"recorded, never changed here: {recorded - set(values)}"
    rows, record = before.version(), recipes.record(before)
    for setting, value in values.items():
        changed = copy.deepcopy(cfg)
        with open_dict(changed):
            changed[setting] = value  # typed: the schema still checks it
        after, what = recipes.prepare(changed), f"data={data} {folds} {setting}={value}"
        if setting in recorded:
            assert after.info[setting] != before.info.get(setting), f"{what}: not recorded"
            assert after.version() != rows, f"{what}: recorded, the rows the same"
        else:
            assert recipes.record(after) == record, f"{what}: recorded, not applied"
            assert after.version() == rows, f"{what}: applied, not recorded"


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (("+data.upsample_seed=3",), r"data.upsample_seed is not a setting of the table recipe"),
        (("data=persuasion_sample", "+data.header=false"), r"data.header is not a setting of the persuasion"),
        (("data=csv", f"data.path={SUBSET}", "data.recipe=persuasion"),
         r"data.header, data.text_column, .* are not settings of the persuasion recipe"),
    ],
)  # fmt: skip
def test_a_setting_the_recipe_does_not_take_is_refused_not_recorded(overrides, message):
    from reftlab import validate

    with pytest.raises(validate.ConfigError, match=message + r".*its settings are: name, recipe, path"):
        validate.check_data(compose(*overrides).data)
    with pytest.raises(validate.ConfigError, match=message):
        prepared(*overrides)


def test_the_readme_says_rows_kept_only_of_a_version_that_was_filtered():
    every, cfg = prepared()  # data.keep.polarity=null: every row
    assert "keep" not in every.info and "Rows kept" not in recipes.readme(every, cfg)
    # a version read back (data.revision) is described by what it was made with, not today's config
    assert "Rows kept" not in recipes.readme(every, compose("data.keep.polarity=positive").data)
    positive, cfg = prepared("data.keep.polarity=positive")
    assert "- Rows kept: {'polarity': ['positive']}" in recipes.readme(positive, compose().data)
