"""Datasets: read, label, split, cap, and write the prepared files.

Every recipe returns a `Prepared` with `train`, `val` and `eval` frames holding the columns
``text``, ``label`` and ``group`` (what a leak-free split keeps on one side), plus ``full``
(everything before the split) and a description for the dataset README. A table's labels are
"Yes"/"No" (`data.positive_label` says which values mean Yes) or, with `data.positive_label=null`,
the labels as the strings they are (k classes).

`eval` is the test split: evaluated once per run, never used to choose a setting. `val` is carved
out of the training part (``data.val_fraction``), stratified or grouped like the test split:
presets and reports choose settings on it.

Before splitting, rows with no label or no text (null, or empty/whitespace) are dropped and exact
duplicate texts removed (all copies where they disagree on the label); `info` counts both, and a
split with too little data left is a DataError that says what it needs.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from ..config import ConfigError
from ..tracking import redact
from . import choice
from .files import (  # noqa: F401  (recipes.DataError, recipes.read_table, ...: the names callers use)
    FORMATS,
    SHOWN_ROWS,
    DataError,
    blank,
    check_path,
    column,
    infer_format,
    is_url,
    keep_rows,
    kept,
    plural,
    read_table,
)

log = logging.getLogger(__name__)
YES, NO = "Yes", "No"

# The reference recipe (persuasion): arguments written by these Claude models are kept.
CLAUDE_SOURCES = ("Claude 1.3", "Claude 2", "Claude 3 Haiku", "Claude 3 Opus", "Claude Instant 1.2")
PERSUASION_COLUMNS = ("claim", "argument", "source", "prompt_type")
PERSUASION_SPLITS = ("argument", "claim", "seed")
# The settings that made a prepared version: kept in its prepared.info and recipe.json, described in its README.
DESCRIBED = (
    "recipe",
    "split",
    "eval_fraction",
    "split_seed",
    "val_fraction",
    "folds",
    "fold",
    "upsample_seed",
)
SPLIT_SETTINGS = {"test": "data.eval_fraction", "validation": "data.val_fraction"}


@dataclass
class Prepared:
    name: str
    full: pd.DataFrame
    train: pd.DataFrame
    eval: pd.DataFrame
    info: dict = field(default_factory=dict)
    val: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=["text", "label", "group"]))

    def corpus_version(self) -> str:
        """Content hash of every row before splitting (text, label): the same for every fold, cap
        and split of one corpus, so a report can pool the folds of a configuration."""
        return hashlib.sha256(self.full[["text", "label"]].to_csv(index=False).encode()).hexdigest()[:16]

    def version(self) -> str:
        """Content hash of the train, validation and test rows (text, label, and the target a generated
        answer is trained on where the data has one): what the run saw."""
        h = hashlib.sha256()
        for part in (self.train, self.eval) + ((self.val,) if len(self.val) else ()):
            h.update(part[[c for c in ("text", "label", "target") if c in part]].to_csv(index=False).encode())
        return h.hexdigest()[:16]


def group_split(
    df: pd.DataFrame, groups: pd.Series, fraction: float, seed: int, part: str = "test", note: str = ""
):
    """Hold out whole groups: no group appears on both sides."""
    from sklearn.model_selection import GroupShuffleSplit

    check_groups(groups, fraction, part, note)
    splitter = GroupShuffleSplit(n_splits=1, test_size=fraction, random_state=seed)
    train_idx, eval_idx = next(splitter.split(df, groups=groups))
    return df.iloc[train_idx], df.iloc[eval_idx]


def stratified_split(df: pd.DataFrame, fraction: float, seed: int, part: str = "test", note: str = ""):
    """Hold out `fraction` of the rows with the label proportions kept on both sides."""
    from sklearn.model_selection import train_test_split

    check_stratified(df, fraction, part, note)
    return train_test_split(df, test_size=fraction, random_state=seed, stratify=df["label"])


def fold_split(
    df: pd.DataFrame,
    folds: int,
    fold: int,
    seed: int,
    groups: pd.Series | None = None,
    note: str = "",
    stratified: bool = True,
):
    """Fold `fold` of `folds` as the test part, the other folds for training: stratified folds (the
    label proportions kept in each), or with `groups` whole groups per fold, no group on both sides
    (scikit-learn's StratifiedGroupKFold: the labels balanced as far as the groups allow), or with
    `stratified` False folds of rows drawn at random."""
    from sklearn.model_selection import KFold, StratifiedGroupKFold, StratifiedKFold

    if not stratified:
        if len(df) < folds:
            raise DataError(f"data.folds={folds} needs at least {folds} rows; there are {len(df)}{note}")
        splits = KFold(n_splits=folds, shuffle=True, random_state=seed).split(df)
    elif groups is None:
        smallest = int(df["label"].value_counts().min())
        if smallest < folds:
            raise DataError(f"data.folds={folds} needs at least {folds} rows of each label; the rarest label has "
                            f"{plural(smallest, 'row')}{note}")  # fmt: skip
        splits = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed).split(df, df["label"])
    else:
        n = int(groups.nunique())
        if n < folds:
            raise DataError(f"data.folds={folds} needs at least {folds} groups to hold out whole groups; there are "
                            f"{n}{note}")  # fmt: skip
        splits = StratifiedGroupKFold(n_splits=folds, shuffle=True, random_state=seed).split(
            df, df["label"], groups
        )
    train_idx, test_idx = list(splits)[fold]
    return df.iloc[train_idx], df.iloc[test_idx]


def test_part(
    df: pd.DataFrame, cfg, splitter, groups: pd.Series | None, note: str = "", stratified: bool = True
):
    """(training part, test part): fold `data.fold` of `data.folds` when folds are set (`fold_split`),
    else `data.eval_fraction` of the rows split by `splitter`."""
    if cfg.get("folds") is None:
        return splitter(df, cfg.eval_fraction, "test")
    return fold_split(df, int(cfg.folds), int(cfg.get("fold", 0)), cfg.split_seed, groups, note, stratified)


def held_out(fraction: float, n: int) -> tuple[int, int]:
    """(held-out, remaining) counts of a split of n: scikit-learn's rule, ceil(fraction * n) held out."""
    n_test = math.ceil(fraction * n)
    return n_test, n - n_test


def check_stratified(df: pd.DataFrame, fraction: float, part: str, note: str = "") -> None:
    """scikit-learn's rule (2+ rows per label, as many rows per side as labels) as a DataError that says so."""
    counts = df["label"].value_counts().sort_index()
    n_test, n_train = held_out(fraction, len(df))
    k = len(counts)
    if counts.min() >= 2 and min(n_test, n_train) >= k:
        return
    has = " and ".join(plural(int(c), f"{label!r} row") for label, c in counts.items())
    of = ("the training part's " if part == "validation" else "") + f"{len(df)} rows"
    raise DataError(
        f"Too little data for the stratified {part} split (it needs at least 2 rows of each label, and at "
        f"least {k} rows, one per label, on each side): the labels are {has}; {SPLIT_SETTINGS[part]}={fraction} "
        f"of {of} leaves {plural(n_test, part + ' row')} and {plural(n_train, 'training row')}{note}"
    )


def check_groups(groups: pd.Series, fraction: float, part: str, note: str = "") -> None:
    """A group split needs 2 groups or more and leaves at least one on each side."""
    n = int(groups.nunique())
    n_test, n_train = held_out(fraction, n)
    setting = SPLIT_SETTINGS[part]
    if n < 2:
        raise DataError(f"A group split needs at least 2 groups, found {n} for the {part} split{note}")
    if n_train < 1:
        raise DataError(
            f"Too little data for the {part} split by group: {setting}={fraction} of {n} groups leaves no group "
            f"for training; lower {setting} or give more groups{note}"
        )


def cap(df: pd.DataFrame, n, seed: int, balanced: bool = True) -> pd.DataFrame:
    """At most n rows, balanced between the labels as far as the rows allow (`balanced`), else drawn
    at random (multiple choice: the key of the right option is no class to balance)."""
    if n is None or n >= len(df):
        return df
    if n < 1:
        raise DataError(f"max_train/max_eval must be >= 1, got {n}")
    shuffled = df.sample(frac=1.0, random_state=seed)
    if not balanced:
        return shuffled.head(n)
    # Interleave the labels so the first n rows are balanced.
    order = shuffled.groupby("label", sort=True).cumcount()
    return shuffled.assign(_o=order.values).sort_values("_o", kind="stable").head(n).drop(columns="_o")


def label_texts(value) -> set[str]:
    """The texts a configured label value stands for in a file: YAML turns a bare `false` into a
    boolean and `1.0` into a float, so a file's `false` / `1` still match."""
    if isinstance(value, bool):
        return {str(value).lower(), str(value)}
    if isinstance(value, float) and value.is_integer():
        return {str(value), str(int(value))}
    return {str(value)}


def positive_values(setting, present: set[str], label_col, path) -> set[str]:
    """The file's label values that mean "Yes": `data.positive_label` is one value or a list."""
    from omegaconf import ListConfig

    many = isinstance(setting, list | tuple | ListConfig)
    wanted = list(setting) if many else [setting]
    if not wanted:
        raise DataError("data.positive_label=[] is not valid: give the label value(s) that mean Yes")
    found, missing = set(), []
    for value in wanted:
        hits = label_texts(value) & present
        found |= hits
        if not hits:
            missing.append(value)
    if missing:
        shown = missing if many else missing[0]
        raise DataError(
            f"data.positive_label={shown!r} does not occur in column {label_col!r} of {str(path)!r}; "
            f"its values are: {', '.join(sorted(present)[:20])}"
        )
    return found


def row_numbers(index) -> list[int]:
    """File row numbers of frame positions: row 1 is the first data row (after any header)."""
    return [int(i) + 1 for i in index]


def rows_text(rows: list[int], total: int | None = None) -> str:
    """'row 3' or 'rows 3, 7, 9' (the first SHOWN_ROWS, then '...')."""
    total = len(rows) if total is None else total
    shown = ", ".join(map(str, rows[:SHOWN_ROWS])) + (", ..." if total > len(rows[:SHOWN_ROWS]) else "")
    return f"row {shown}" if total == 1 else f"rows {shown}"


def drop_missing(raw: pd.DataFrame, label_col, text_col, path) -> tuple[pd.DataFrame, dict]:
    """The rows with a label and a text; the others are counted (lacking both: "no label") and logged.
    `label_col` may be a list of columns: a row lacking any of them has no label."""
    label_cols = label_col if isinstance(label_col, list) else [label_col]
    no_label = pd.concat([blank(raw[c]) for c in label_cols], axis=1).any(axis=1)
    no_text = blank(raw[text_col]) & ~no_label
    info = {
        "dropped_no_label": int(no_label.sum()),
        "dropped_no_label_rows": row_numbers(raw.index[no_label][:SHOWN_ROWS]),
        "dropped_no_text": int(no_text.sum()),
        "dropped_no_text_rows": row_numbers(raw.index[no_text][:SHOWN_ROWS]),
    }
    if no_label.any() or no_text.any():
        log.warning("%s: %s (label column %r, text column %r)", redact(path), missing_text(info),
                    label_name(label_cols), str(text_col))  # fmt: skip
    return raw[~(no_label | no_text)], info


def missing_text(info: dict) -> str:
    """'dropped 3 rows with no label (rows 3, 7, 10), 1 with no text (row 12)'."""
    n_label, n_text = info.get("dropped_no_label", 0), info.get("dropped_no_text", 0)
    label_rows = f" ({rows_text(info.get('dropped_no_label_rows', []), n_label)})" if n_label else ""
    text_rows = f" ({rows_text(info.get('dropped_no_text_rows', []), n_text)})" if n_text else ""
    return f"dropped {plural(n_label, 'row')} with no label{label_rows}, {n_text} with no text{text_rows}"


def drop_duplicates(full: pd.DataFrame) -> tuple[pd.DataFrame, dict]:
    """One row per exact text: the first copy stays; all copies go where they disagree on the label."""
    conflicting = full.groupby("text")["label"].transform("nunique") > 1
    kept = full[~conflicting]
    copies = kept["text"].duplicated(keep="first")
    info = {
        "duplicates_removed": int(copies.sum()),
        "conflicting_texts": int(full.loc[conflicting, "text"].nunique()),
        "conflicting_rows": int(conflicting.sum()),
    }
    if conflicting.any():
        log.warning("%s", duplicates_text(info))
    return kept[~copies], info


def duplicates_text(info: dict) -> str:
    """'removed 4 duplicate texts, 1 with conflicting labels (3 rows dropped)'."""
    if "duplicates_removed" not in info:
        return f"duplicates kept ({info['duplicates_kept']})" if "duplicates_kept" in info else ""
    line = (
        f"removed {plural(info['duplicates_removed'], 'duplicate text')}, "
        f"{info.get('conflicting_texts', 0)} with conflicting labels"
    )
    return line + (
        f" ({plural(info['conflicting_rows'], 'row')} dropped)" if info.get("conflicting_texts") else ""
    )


def cleaning_text(info: dict) -> str:
    """The README's and the errors' account of what was dropped before splitting ('' if not recorded)."""
    parts = [missing_text(info)] if "dropped_no_label" in info else []
    return "; ".join(parts + [t for t in [duplicates_text(info)] if t])


def cleaning_note(info: dict) -> str:
    """For an error message: what cleaning took away, if anything."""
    dropped = sum(info.get(k, 0) for k in ("dropped_no_label", "dropped_no_text", "duplicates_removed",
                                           "conflicting_rows"))  # fmt: skip
    return f" (before splitting, reftlab {cleaning_text(info)})" if dropped else ""


def label_strings(values: pd.Series, had_holes: bool) -> pd.Series:
    """Labels as text; an integer column that holes made float (1.0) reads as integers (1) again."""
    numeric = pd.api.types.is_float_dtype(values) and len(values)
    if had_holes and numeric and (values % 1 == 0).all():
        values = values.astype("int64")
    return values.astype(str)


def label_columns(raw: pd.DataFrame, cfg) -> list:
    """`data.label_column` resolved against the file: one column, or a list of columns whose values
    are joined with a space into one label (Ott et al.'s [deceptive, polarity])."""
    from omegaconf import ListConfig

    setting = cfg.label_column
    names = list(setting) if isinstance(setting, list | tuple | ListConfig) else [setting]
    if not names:
        raise DataError(
            "data.label_column=[] is not valid: give the label column, or a list of columns whose values "
            "are joined with a space into one label"
        )
    return [column(raw, name, "data.label_column", cfg.path) for name in names]


def label_name(label_cols: list):
    """The label column as messages and records name it: its name, or the list of the joined columns."""
    return str(label_cols[0]) if len(label_cols) == 1 else [str(c) for c in label_cols]


def joined_labels(raw: pd.DataFrame, label_cols: list, had_holes: dict) -> pd.Series:
    """Each row's label as text: the values of its label columns, joined with a space."""
    parts = [label_strings(raw[c], had_holes[c]) for c in label_cols]
    return parts[0].str.cat(parts[1:], sep=" ") if len(parts) > 1 else parts[0]


def table_labels(values: pd.Series, cfg, label_col) -> tuple[pd.Series, set[str] | None]:
    """(the rows' labels, the values that mean Yes): Yes/No by `data.positive_label`, or with it null the
    labels as the strings they are (k classes, positive None)."""
    if cfg.positive_label is None:
        return values, None
    positive = positive_values(cfg.positive_label, set(values), label_col, cfg.path)
    return values.isin(positive).map({True: YES, False: NO}), positive


def one_label(full: pd.DataFrame, label_col, positive, note: str) -> DataError:
    """The error for data whose rows all carry one label (after mapping or as they are)."""
    label = full["label"].iloc[0]
    if positive is None:
        return DataError(f"Every row of column {label_col!r} has the label {label!r}: nothing to tell apart "
                         f"(a classification needs at least 2 labels){note}")  # fmt: skip
    return DataError(f"Every row of column {label_col!r} is labelled {label!r} (positive label(s) "
                     f"{sorted(positive)}): nothing to tell apart{note}")  # fmt: skip


def table_recipe(cfg) -> Prepared:
    """A generic labelled table (opinion_spam, csv): drop holes, label the rows (Yes/No by
    `data.positive_label`, or with it null the labels as they are: k classes), dedupe, split."""
    raw = read_table(cfg.path, cfg.get("format"), cfg.get("header", True))
    text_col = column(raw, cfg.text_column, "data.text_column", cfg.path)
    label_cols = label_columns(raw, cfg)
    label_col = label_name(label_cols)
    had_holes = {c: bool(raw[c].isna().any()) for c in label_cols}
    raw = keep_rows(raw, cfg)
    raw, cleaning = drop_missing(raw, label_cols, text_col, cfg.path)
    if raw.empty:
        raise DataError(
            f"{redact(cfg.path)!r} has no row with both a label and a text: {missing_text(cleaning)}"
        )
    values = joined_labels(raw, label_cols, had_holes)
    labels, positive = table_labels(values, cfg, label_col)
    full = pd.DataFrame({"text": raw[text_col].astype(str), "label": labels})
    split = cfg.split
    group_col = cfg.get("group_column")
    choices = ["stratified"] + ([str(group_col)] if group_col is not None else [])
    if split not in choices:
        raise DataError(f"data.split={split!r} is not valid for data={cfg.name}: choose one of {choices}")
    if split != "stratified":
        full["group"] = raw[column(raw, group_col, "data.group_column", cfg.path)].astype(str)
    full, dupes = drop_duplicates(full)
    cleaning.update(dupes)
    note = cleaning_note(cleaning)
    if full["label"].nunique() < 2:
        raise one_label(full, label_col, positive, note)
    if split == "stratified":
        full["group"] = range(len(full))

        def splitter(df, fraction, part):
            return stratified_split(df, fraction, cfg.split_seed, part, note)
    else:

        def splitter(df, fraction, part):
            return group_split(df, df["group"], fraction, cfg.split_seed, part, note)

    train, eval_ = test_part(full, cfg, splitter, None if split == "stratified" else full["group"], note)
    train, val = carve_val(train, cfg, splitter)
    if positive is None:
        labelled = {"labels": sorted(full["label"].unique())}
    else:
        labelled = {"positive_label": sorted(positive), "negative_label": sorted(set(values) - positive)}
    info = {"source": str(cfg.path), "text_column": str(text_col), "label_column": label_col, **labelled,
            "split": split, **cleaning}  # fmt: skip
    return Prepared(cfg.name, full, train, eval_, info, val)


def carve_val(train: pd.DataFrame, cfg, splitter) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The validation split: `data.val_fraction` of the training part, split the way the test split
    was (stratified, or whole groups); 0 gives no validation split."""
    fraction = float(cfg.get("val_fraction", 0) or 0)
    if fraction == 0:
        return train, train.iloc[:0]
    return splitter(train, fraction, "validation")


def persuasion_rows(raw: pd.DataFrame, path) -> tuple[pd.DataFrame, dict]:
    """Steps 1-2 of the reference recipe (Claude rows, Deceptive -> Yes), less rows with no argument/prompt_type."""
    df = raw[raw["source"].isin(CLAUDE_SOURCES)]
    df, cleaning = drop_missing(df, "prompt_type", "argument", path)
    df = df.assign(label=[YES if t == "Deceptive" else NO for t in df["prompt_type"]])
    return df, cleaning


def persuasion_dedupe(df: pd.DataFrame) -> tuple[pd.DataFrame, dict]:
    """One row per argument (the data has a row per rating), before upsampling: drop_duplicates' rules."""
    kept, info = drop_duplicates(df.assign(text=df["argument"]))
    return kept.drop(columns="text"), info


def persuasion_balance(df: pd.DataFrame, upsample_seed: int) -> pd.DataFrame:
    """Step 3 of the reference recipe: upsample the deceptive rows (with replacement) to the honest count."""
    from sklearn.utils import resample

    deceptive = df[df["label"] == YES]
    honest = df[df["label"] == NO]
    if deceptive.empty or honest.empty:
        raise DataError("The persuasion recipe found no deceptive or no honest Claude arguments")
    upsampled = resample(deceptive, replace=True, n_samples=len(honest), random_state=upsample_seed)
    return pd.concat([honest, upsampled])


def persuasion_recipe(cfg) -> Prepared:
    """The reference recipe of the blog post on Anthropic's persuasion data.

    split=seed reproduces the blog exactly (95/5 train_test_split, random_state=42), which leaks:
    upsampled copies of one argument land on both sides; it keeps the data's repeated rows (one per
    rating of an argument), as the blog did. split=argument (default) and split=claim keep every copy
    of an argument (or every argument of a claim) on one side, and keep one row per argument before
    upsampling. `data.keep` filters the file's rows first (a claim, one Claude model's arguments).
    """
    from sklearn.model_selection import train_test_split

    if cfg.split not in PERSUASION_SPLITS:
        raise DataError(
            f"data.split={cfg.split!r} is not valid for data={cfg.name}: choose one of {list(PERSUASION_SPLITS)}"
        )
    raw = read_table(cfg.path, cfg.get("format"))
    missing = [c for c in PERSUASION_COLUMNS if c not in raw.columns]
    if missing:
        raise DataError(
            f"{str(cfg.path)!r} lacks the column(s) {missing} that the persuasion recipe needs; "
            f"its columns are: {', '.join(map(str, raw.columns))}"
        )
    raw = keep_rows(raw, cfg)
    if not raw["source"].isin(CLAUDE_SOURCES).any():
        raise DataError(
            f"data.keep={kept(cfg)} leaves no Claude argument: the persuasion recipe takes only the arguments "
            f"of {', '.join(CLAUDE_SOURCES)}"
        )
    rows, cleaning = persuasion_rows(raw, cfg.path)
    if cfg.split == "seed":
        cleaning["duplicates_kept"] = "split=seed reproduces the blog's rows"
    else:
        rows, dupes = persuasion_dedupe(rows)
        cleaning.update(dupes)
    balanced = persuasion_balance(rows, cfg.upsample_seed)
    note = cleaning_note(cleaning)

    def splitter(df, fraction, part):
        if cfg.split == "seed":
            return train_test_split(df, test_size=fraction, random_state=cfg.split_seed)
        return group_split(df, df[cfg.split], fraction, cfg.split_seed, part, note)

    train, eval_ = test_part(
        balanced, cfg, splitter, None if cfg.split == "seed" else balanced[cfg.split], note
    )
    train, val = carve_val(train, cfg, splitter)
    eval_ = eval_.drop_duplicates(subset=["argument"])
    val = val.drop_duplicates(subset=["argument"])

    def tidy(df: pd.DataFrame) -> pd.DataFrame:
        group = df["argument"] if cfg.split in ("seed", "argument") else df["claim"]
        out = pd.DataFrame({"text": df["argument"], "label": df["label"], "group": group})
        return pd.concat([out, df[["claim", "source", "prompt_type"]]], axis=1)

    info = {"source": str(cfg.path), "split": cfg.split, "upsample_seed": cfg.upsample_seed,
            "label_column": "prompt_type", "positive_label": ["Deceptive"], **cleaning}  # fmt: skip
    return Prepared(cfg.name, tidy(balanced), tidy(train), tidy(eval_), info, tidy(val))


def random_split(df: pd.DataFrame, fraction: float, seed: int, part: str = "test", note: str = ""):
    """Hold out `fraction` of the rows drawn at random (a DataError when a side would be empty)."""
    from sklearn.model_selection import train_test_split

    n_out, n_in = held_out(fraction, len(df))
    if min(n_out, n_in) < 1:
        raise DataError(f"Too little data for the {part} split: {SPLIT_SETTINGS[part]}={fraction} of "
                        f"{plural(len(df), 'row')} leaves {n_out} {part} and {n_in} training rows{note}")  # fmt: skip
    return train_test_split(df, test_size=fraction, random_state=seed)


def pooled_questions(cfg) -> tuple[pd.DataFrame, dict, dict]:
    """The questions of the training file and the test file (`given`: which), deduplicated (a question
    in both files stays in the test file), training rows first; how they were read; the cleaning counts."""
    train, how = choice.questions(cfg, cfg.path, "data.path")
    given = cfg.get("test_path") is not None
    test = choice.questions(cfg, cfg.test_path, "data.test_path")[0] if given else train.iloc[:0]
    full, cleaning = pool(train, test, drop_duplicates)
    read = {"train": len(train), **({"test": len(test)} if given else {})}
    return full, {"read": read, **how}, cleaning


def pool(train: pd.DataFrame, test: pd.DataFrame, dedupe) -> tuple[pd.DataFrame, dict]:
    """The rows of a training file and a test file as one frame (column `given`: which file), after
    `dedupe` (frame -> (frame, counts); its first copy is the test file's, so a row in both files
    stays in test), training rows first, with a row id `group`; and dedupe's counts."""
    pooled = pd.concat([test.assign(given="test"), train.assign(given="train")], ignore_index=True)
    full, cleaning = dedupe(pooled)
    full = pd.concat([full[full["given"] == "train"], full[full["given"] == "test"]], ignore_index=True)
    return full.assign(group=range(len(full))), cleaning


def given_split(full: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(training rows, test rows) of a pooled frame as their files gave them."""
    return full[full["given"] == "train"], full[full["given"] == "test"]


def choice_recipe(cfg) -> Prepared:
    """Multiple choice (data/choice.py reads the files): LLM-Adapters' JSON or a table with options.
    `data.test_path` is the test part as given and the validation split is drawn from the training
    file; without it the test part is `data.eval_fraction` of the rows; folds are cut from both
    files' rows pooled. Rows drawn at random (`data.split=random`) or with the answer keys in
    proportion (`stratified`)."""
    if cfg.split not in choice.SPLITS:
        raise DataError(
            f"data.split={cfg.split!r} is not valid for data={cfg.name}: choose one of {list(choice.SPLITS)}"
        )
    full, how, cleaning = pooled_questions(cfg)
    note = cleaning_note(cleaning)
    stratified = cfg.split == "stratified"

    def splitter(df, fraction, part):
        split = stratified_split if stratified else random_split
        return split(df, fraction, cfg.split_seed, part, note)

    if cfg.get("test_path") is not None and cfg.get("folds") is None:
        train, eval_ = given_split(full)
    else:
        train, eval_ = test_part(full, cfg, splitter, None, note, stratified)
    train, val = carve_val(train, cfg, splitter)
    sizes = full["options"].map(len).value_counts().sort_index()
    info = {"source": str(cfg.path), **({"test_source": str(cfg.test_path)} if cfg.get("test_path") else {}),
            "split": cfg.split, "keys": sorted({k for keys in full["keys"] for k in keys}),
            "options": {str(k): int(n) for k, n in sizes.items()}, **how, **cleaning}  # fmt: skip
    full, train, eval_, val = (df.drop(columns="given") for df in (full, train, eval_, val))
    return Prepared(cfg.name, full, train, eval_, info, val)


def arithmetic_recipe(cfg) -> Prepared:
    """Word problems with worked solutions (data/arithmetic.py reads the files): `data.test_path` is
    the test part as given (GSM8K's test file, or a transfer set: MAWPS, AQuA), the validation split is
    drawn at random from the training file; without it the test part is `data.eval_fraction` of the
    rows. A question in both files stays in the test file."""
    from . import arithmetic

    if cfg.get("folds") is not None:
        raise DataError(f"data.folds={cfg.folds} is not supported by the arithmetic recipe (data={cfg.name}): "
                        "its test part is a file of its own; set data.folds=null")  # fmt: skip
    if cfg.split != "random":
        raise DataError(
            f"data.split={cfg.split!r} is not valid for data={cfg.name}: choose one of ['random']"
        )
    train = arithmetic.read(cfg, cfg.path, "data.path", cfg.get("format"))
    given = cfg.get("test_path") is not None
    test = (
        arithmetic.read(cfg, cfg.test_path, "data.test_path", cfg.get("test_format"))
        if given
        else train.iloc[:0]
    )
    read = {"train": len(train), **({"test": len(test)} if given else {})}

    def first_copies(pooled):  # a repeated question is kept once (the test file's copy)
        copies = pooled["text"].duplicated(keep="first")
        return pooled[~copies], {"duplicates_removed": int(copies.sum())}

    full, cleaning = pool(train, test, first_copies)
    removed = cleaning["duplicates_removed"]
    note = f" ({removed} repeated questions dropped)" if removed else ""

    def splitter(df, fraction, part):
        return random_split(df, fraction, cfg.split_seed, part, note)

    if given:
        train, eval_ = given_split(full)
    else:
        train, eval_ = splitter(full, float(cfg.eval_fraction), "test")
    train, val = carve_val(train, cfg, splitter)
    info = {"source": str(cfg.path), **({"test_source": str(cfg.test_path)} if given else {}), "split": cfg.split,
            "read": read,
            "duplicates_removed": removed, "calculator_notes": bool(cfg.get("calculator_notes", False)),
            "answer_line": cfg.get("answer_line")}  # fmt: skip
    full, train, eval_, val = (df.drop(columns="given") for df in (full, train, eval_, val))
    return Prepared(cfg.name, full, train, eval_, info, val)


RECIPES = {"table": table_recipe, "persuasion": persuasion_recipe, "choice": choice_recipe,
           "arithmetic": arithmetic_recipe}  # fmt: skip


def prepare(cfg, caps: bool = True) -> Prepared:
    """Run the dataset's recipe; with `caps`, cap train/eval at max_train/max_eval."""
    if cfg.recipe not in RECIPES:
        raise DataError(f"data.recipe={cfg.recipe!r} is not valid: choose one of {list(RECIPES)}")
    if not 0 < float(cfg.eval_fraction) < 1:
        raise DataError(f"data.eval_fraction={cfg.eval_fraction} must be between 0 and 1")
    if not 0 <= float(cfg.get("val_fraction", 0) or 0) < 1:
        raise DataError(f"data.val_fraction={cfg.val_fraction} must be >= 0 and < 1 (0: no validation split)")
    check_settings(cfg)
    prepared = RECIPES[cfg.recipe](cfg)
    prepared.info = {**described_settings(cfg), **prepared.info}
    return apply_caps(prepared, cfg) if caps else prepared


def check_settings(cfg) -> None:
    """Every data setting is one its recipe applies: a key added with `+data.<key>=...` that the recipe
    does not take (its schema in config/schema.py) would be recorded with the data and the run, yet
    change nothing, so it is a ConfigError naming it and the recipe's settings."""
    from dataclasses import fields

    from ..config.schema import SCHEMAS

    takes = [f.name for f in fields(SCHEMAS["data"][cfg.recipe])]
    extra = [str(k) for k in cfg if k not in takes]
    if extra:
        names = ", ".join(f"data.{k}" for k in extra)
        what = "is not a setting" if len(extra) == 1 else "are not settings"
        raise ConfigError(
            f"{names} {what} of the {cfg.recipe} recipe (data.recipe={cfg.recipe}): recorded, it would change "
            f"nothing; its settings are: {', '.join(takes)}"
        )


def described_settings(cfg) -> dict:
    """The settings (of DESCRIBED) that made a prepared version, as plain values: those it applied,
    so `fold` only with folds and `eval_fraction` only without; a row filter (`data.keep`, which every
    recipe applies) only where it keeps fewer rows."""
    unused = {"eval_fraction"} if cfg.get("folds") is not None else {"fold"}
    if cfg.get("test_path") is not None and cfg.get("folds") is None:
        unused.add("eval_fraction")  # the test file is the test part
    out = {k: cfg.get(k) for k in DESCRIBED if k in cfg and k not in unused}
    if kept(cfg):
        out["keep"] = kept(cfg)
    return out


def apply_caps(prepared: Prepared, cfg) -> Prepared:
    balanced = cfg.recipe not in ("choice", "arithmetic")  # answers are not classes to balance
    for part in ("train", "eval", "val"):
        capped = cap(getattr(prepared, part), cfg.get(f"max_{part}"), cfg.split_seed, balanced)
        setattr(prepared, part, capped.reset_index(drop=True))
    for part in ("train", "eval"):
        if len(getattr(prepared, part)) == 0:
            raise DataError(f"The {part} split of data={cfg.name} is empty")
    return prepared


def counts(df: pd.DataFrame, labels: list[str] | None = None) -> str:
    """'N rows (a Yes / b No)'; with the data's `labels` (k classes, option keys) the count of each."""
    c = df["label"].value_counts()
    if labels == []:  # answers, not classes
        return f"{len(df)} rows"
    if labels is None:
        return f"{len(df)} rows ({c.get(YES, 0)} Yes / {c.get(NO, 0)} No)"
    return f"{len(df)} rows ({' / '.join(f'{c.get(label, 0)} {label}' for label in labels)})"


def counted_labels(prepared: Prepared) -> list[str] | None:
    """The labels the README counts: None for Yes/No data (counted as Yes / No), else every label of
    the data, sorted."""
    if "target" in prepared.full:  # generated answers: no label set to count
        return []
    found = sorted(str(x) for x in prepared.full["label"].unique())
    return None if set(found) <= {YES, NO} else found


def labels_line(info: dict) -> str:
    """What the labels are: which original values became "Yes" (never a blanket "Yes = deceptive"),
    or the columns whose values are kept as labels, or a multiple-choice question's option keys."""
    if info.get("recipe") == "choice":
        return choice.labels_line(info)
    if info.get("recipe") == "arithmetic":
        notes = "kept" if info.get("calculator_notes") else "removed"
        return (f"- Answers: `label` is each question's gold answer (a number, or a letter A-E), `target` the worked "
                f"solution trained on (GSM8K's calculator notes {notes}; its `####` line written as "
                f"{info.get('answer_line')!r}); a test file without solutions has empty targets.")  # fmt: skip
    column = info.get("label_column", "label")
    if info.get("labels") is not None:
        named = (" + ".join(f"`{c}`" for c in column) + " (joined with a space)" if isinstance(column, list)
                 else f"`{column}`")  # fmt: skip
        labels = info["labels"]
        return (f"- Labels: the values of {named}, kept as they are: {len(labels)} labels "
                f"({', '.join(repr(v) for v in labels)}).")  # fmt: skip
    positive = info.get("positive_label")
    if not positive:
        return "- Labels: `Yes` / `No` as the recipe defines them."
    line = f"- Labels: `Yes` = `{column}` is {' or '.join(repr(v) for v in positive)}"
    negative = info.get("negative_label")
    return line + (
        f"; `No` = {' or '.join(repr(v) for v in negative)}." if negative else "; `No` = any other value."
    )


def described(prepared: Prepared, cfg, key: str):
    """A setting the data was prepared with: as recorded in prepared.info, else today's config."""
    return prepared.info[key] if key in prepared.info else cfg.get(key)


def readme(prepared: Prepared, cfg) -> str:
    """The prepared dataset's README: where it came from, how it was made, what was dropped, its splits."""

    def setting(key):
        return described(prepared, cfg, key)

    cleaning = cleaning_text(prepared.info)
    labels = counted_labels(prepared)
    folds = setting("folds")
    keep = prepared.info.get("keep")  # what this version was made with, never today's config
    test_file = prepared.info.get("test_source")  # multiple choice: a test file of its own
    held = (
        ""
        if folds is not None
        else "the test file as given; "
        if test_file
        else f"eval fraction {setting('eval_fraction')}; "
    )
    pooled = ", cut from the training and test files' rows pooled" if test_file else ""
    lines = [
        f"# {prepared.name} (prepared by reftlab)",
        "",
        f"- Source: {redact(prepared.info.get('source'))}"
        + (f"; test file: {redact(test_file)}" if test_file else ""),
        f"- Recipe: {setting('recipe')}; split: {setting('split')}; {held}split seed {setting('split_seed')}",
        *(
            [
                f"- Cross-validation: the test part is fold {setting('fold')} of {folds} (folds numbered from 0"
                f"{pooled}; the eval fraction is not used)"
            ]
            if folds is not None
            else []
        ),  # fmt: skip
        *([f"- Rows kept: {keep}"] if keep else []),
        *(
            [f"- Cleaning (before splitting; row 1 = the file's first data row): {cleaning}"]
            if cleaning
            else []
        ),
        f"- full: {counts(prepared.full, labels)}",
        f"- train: {counts(prepared.train, labels)}",
        f"- val (validation, {setting('val_fraction') or 0} of the training part; settings are chosen on it): "
        f"{counts(prepared.val, labels)}",
        f"- eval (test: reported, never used to choose): {counts(prepared.eval, labels)}",
        f"- Content version (sha256 of train+val+eval text/label, first 16 hex): {prepared.version()}",
        labels_line(prepared.info),
        f"- License: {cfg.get('license') or 'not given (set data.license to the data’s own license)'}",
    ]
    return "\n".join(lines) + "\n"


def record(prepared: Prepared) -> dict:
    """What recipe.json keeps: the settings that made the files and the recipe's counts (credentials masked)."""
    test = {"test_source": redact(prepared.info["test_source"])} if "test_source" in prepared.info else {}
    return {**prepared.info, "source": redact(prepared.info.get("source")), **test}


def write(prepared: Prepared, cfg, folder: Path) -> Path:
    """full/train/val/eval parquet, recipe.json (how they were made) and a README describing them."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for part in ("full", "train", "val", "eval"):
        getattr(prepared, part).to_parquet(folder / f"{part}.parquet", index=False)
    (folder / "recipe.json").write_text(
        json.dumps(record(prepared), indent=2, sort_keys=True, default=str) + "\n"
    )
    (folder / "README.md").write_text(readme(prepared, cfg))
    return folder
