"""Datasets: read, label Yes/No, split, cap, and write the prepared files.

Every recipe returns a `Prepared` with `train`, `val` and `eval` frames holding the columns
``text``, ``label`` ("Yes"/"No") and ``group`` (what a leak-free split keeps on one side), plus
``full`` (everything before the split) and a description for the dataset README.

`eval` is the test split: evaluated once per run, never used to choose a setting. `val` is carved
out of the training part (``data.val_fraction``), stratified or grouped like the test split:
presets and reports choose settings on it.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

YES, NO = "Yes", "No"
FORMATS = ("csv", "tsv", "parquet", "jsonl")

# The reference recipe (persuasion): arguments written by these Claude models are kept.
CLAUDE_SOURCES = ("Claude 1.3", "Claude 2", "Claude 3 Haiku", "Claude 3 Opus", "Claude Instant 1.2")
PERSUASION_COLUMNS = ("claim", "argument", "source", "prompt_type")
PERSUASION_SPLITS = ("argument", "claim", "seed")


class DataError(ValueError):
    """Bad data settings or a bad data file."""


@dataclass
class Prepared:
    name: str
    full: pd.DataFrame
    train: pd.DataFrame
    eval: pd.DataFrame
    info: dict = field(default_factory=dict)
    val: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=["text", "label", "group"]))

    def version(self) -> str:
        """Content hash of the train, validation and test rows (text, label): what the run saw."""
        h = hashlib.sha256()
        for part in (self.train, self.eval) + ((self.val,) if len(self.val) else ()):
            h.update(part[["text", "label"]].to_csv(index=False).encode())
        return h.hexdigest()[:16]


def is_url(path: str) -> bool:
    return str(path).startswith(("http://", "https://", "hf://", "s3://", "gs://"))


def infer_format(path: str, fmt: str | None) -> str:
    if fmt:
        if fmt not in FORMATS:
            raise DataError(f"data.format={fmt!r} is not valid: choose one of {', '.join(FORMATS)}")
        return fmt
    suffix = Path(str(path).split("?")[0]).suffix.lower().lstrip(".")
    fmt = {"csv": "csv", "tsv": "tsv", "txt": "tsv", "parquet": "parquet", "pq": "parquet"}.get(suffix)
    fmt = fmt or ("jsonl" if suffix in ("jsonl", "json", "ndjson") else None)
    if fmt is None:
        raise DataError(f"Cannot tell the format of {path!r}: set data.format to one of {', '.join(FORMATS)}")
    return fmt


def check_path(path) -> None:
    """Fail early (before any model loading) on a missing data file."""
    if path is None or str(path) == "":
        raise DataError("data.path is not set: give the data file, e.g. data.path=my_data.csv")
    if not is_url(str(path)) and not Path(str(path)).is_file():
        raise DataError(f"data.path={str(path)!r}: no such file (working directory: {Path.cwd()})")


def read_table(path, fmt: str | None = None, header: bool = True) -> pd.DataFrame:
    check_path(path)
    fmt = infer_format(str(path), fmt)
    hdr = 0 if header else None
    try:
        if fmt == "csv":
            # keep_default_na=False: the persuasion data has a prompt_type "N/A" that must stay a string
            return pd.read_csv(path, header=hdr, keep_default_na=False)
        if fmt == "tsv":
            return pd.read_csv(path, sep="\t", header=hdr, keep_default_na=False)
        if fmt == "parquet":
            return pd.read_parquet(path)
        return pd.read_json(path, lines=True)
    except DataError:
        raise
    except Exception as e:  # pandas/pyarrow errors differ by format: name the file and the format
        raise DataError(f"Could not read {str(path)!r} as {fmt}: {e}") from e


def column(df: pd.DataFrame, name, setting: str, path) -> str | int:
    """Resolve a column setting against the frame; header-less files use numbered columns."""
    if name in df.columns:
        return name
    if isinstance(name, str) and name.isdigit() and int(name) in df.columns:
        return int(name)
    raise DataError(
        f"{setting}={name!r} is not a column of {str(path)!r}; its columns are: {', '.join(map(str, df.columns))}"
    )


def group_split(df: pd.DataFrame, groups: pd.Series, fraction: float, seed: int):
    """Hold out whole groups: no group appears on both sides."""
    from sklearn.model_selection import GroupShuffleSplit

    if groups.nunique() < 2:
        raise DataError(f"A group split needs at least 2 groups, found {groups.nunique()}")
    splitter = GroupShuffleSplit(n_splits=1, test_size=fraction, random_state=seed)
    train_idx, eval_idx = next(splitter.split(df, groups=groups))
    return df.iloc[train_idx], df.iloc[eval_idx]


def stratified_split(df: pd.DataFrame, fraction: float, seed: int):
    from sklearn.model_selection import train_test_split

    return train_test_split(df, test_size=fraction, random_state=seed, stratify=df["label"])


def cap(df: pd.DataFrame, n, seed: int) -> pd.DataFrame:
    """At most n rows, balanced between the labels as far as the rows allow."""
    if n is None or n >= len(df):
        return df
    if n < 1:
        raise DataError(f"max_train/max_eval must be >= 1, got {n}")
    shuffled = df.sample(frac=1.0, random_state=seed)
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


def table_recipe(cfg) -> Prepared:
    """A generic labelled table (opinion_spam, csv): map the label column to Yes/No and split."""
    raw = read_table(cfg.path, cfg.get("format"), cfg.get("header", True))
    text_col = column(raw, cfg.text_column, "data.text_column", cfg.path)
    label_col = column(raw, cfg.label_column, "data.label_column", cfg.path)
    values = raw[label_col].astype(str)
    positive = positive_values(cfg.positive_label, set(values), label_col, cfg.path)
    full = pd.DataFrame(
        {"text": raw[text_col].astype(str), "label": [YES if v in positive else NO for v in values]}
    )
    if full["label"].nunique() < 2:
        raise DataError(
            f"Every value of column {label_col!r} is a positive label {sorted(positive)}: nothing to tell apart"
        )
    split = cfg.split
    group_col = cfg.get("group_column")
    choices = ["stratified"] + ([str(group_col)] if group_col is not None else [])
    if split == "stratified":
        full["group"] = range(len(full))

        def splitter(df, fraction):
            return stratified_split(df, fraction, cfg.split_seed)
    elif group_col is not None and split == str(group_col):
        full["group"] = raw[column(raw, group_col, "data.group_column", cfg.path)].astype(str).values

        def splitter(df, fraction):
            return group_split(df, df["group"], fraction, cfg.split_seed)
    else:
        raise DataError(f"data.split={split!r} is not valid for data={cfg.name}: choose one of {choices}")
    train, eval_ = splitter(full, cfg.eval_fraction)
    train, val = carve_val(train, cfg, splitter)
    info = {
        "source": str(cfg.path),
        "text_column": str(text_col),
        "label_column": str(label_col),
        "positive_label": sorted(positive),
        "negative_label": sorted(set(values) - positive),
        "split": split,
    }
    return Prepared(cfg.name, full, train, eval_, info, val)


def carve_val(train: pd.DataFrame, cfg, splitter) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The validation split: `data.val_fraction` of the training part, split the way the test split
    was (stratified, or whole groups); 0 gives no validation split."""
    fraction = float(cfg.get("val_fraction", 0) or 0)
    if fraction == 0:
        return train, train.iloc[:0]
    return splitter(train, fraction)


def persuasion_balance(raw: pd.DataFrame, upsample_seed: int) -> pd.DataFrame:
    """Steps 1-3 of the reference recipe: Claude rows, Deceptive -> Yes, upsample to balance."""
    from sklearn.utils import resample

    df = raw[raw["source"].isin(CLAUDE_SOURCES)].copy()
    df["label"] = [YES if t == "Deceptive" else NO for t in df["prompt_type"]]
    deceptive = df[df["label"] == YES]
    honest = df[df["label"] == NO]
    if deceptive.empty or honest.empty:
        raise DataError("The persuasion recipe found no deceptive or no honest Claude arguments")
    upsampled = resample(deceptive, replace=True, n_samples=len(honest), random_state=upsample_seed)
    return pd.concat([honest, upsampled])


def persuasion_recipe(cfg) -> Prepared:
    """The reference recipe of the blog post on Anthropic's persuasion data.

    split=seed reproduces the blog exactly (95/5 train_test_split, random_state=42), which leaks:
    upsampled copies of one argument land on both sides. split=argument (default) and split=claim
    keep every copy of an argument (or every argument of a claim) on one side.
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
    balanced = persuasion_balance(raw, cfg.upsample_seed)

    def splitter(df, fraction):
        if cfg.split == "seed":
            return train_test_split(df, test_size=fraction, random_state=cfg.split_seed)
        return group_split(df, df[cfg.split], fraction, cfg.split_seed)

    train, eval_ = splitter(balanced, cfg.eval_fraction)
    train, val = carve_val(train, cfg, splitter)
    eval_ = eval_.drop_duplicates(subset=["argument"])
    val = val.drop_duplicates(subset=["argument"])

    def tidy(df: pd.DataFrame) -> pd.DataFrame:
        group = df["argument"] if cfg.split in ("seed", "argument") else df["claim"]
        out = pd.DataFrame({"text": df["argument"], "label": df["label"], "group": group})
        return pd.concat([out, df[["claim", "source", "prompt_type"]]], axis=1)

    info = {"source": str(cfg.path), "split": cfg.split, "upsample_seed": cfg.upsample_seed,
            "label_column": "prompt_type", "positive_label": ["Deceptive"]}  # fmt: skip
    return Prepared(cfg.name, tidy(balanced), tidy(train), tidy(eval_), info, tidy(val))


RECIPES = {"table": table_recipe, "persuasion": persuasion_recipe}


def prepare(cfg, caps: bool = True) -> Prepared:
    """Run the dataset's recipe; with `caps`, cap train/eval at max_train/max_eval."""
    if cfg.recipe not in RECIPES:
        raise DataError(f"data.recipe={cfg.recipe!r} is not valid: choose one of {list(RECIPES)}")
    if not 0 < float(cfg.eval_fraction) < 1:
        raise DataError(f"data.eval_fraction={cfg.eval_fraction} must be between 0 and 1")
    if not 0 <= float(cfg.get("val_fraction", 0) or 0) < 1:
        raise DataError(f"data.val_fraction={cfg.val_fraction} must be >= 0 and < 1 (0: no validation split)")
    prepared = RECIPES[cfg.recipe](cfg)
    return apply_caps(prepared, cfg) if caps else prepared


def apply_caps(prepared: Prepared, cfg) -> Prepared:
    prepared.train = cap(prepared.train, cfg.get("max_train"), cfg.split_seed).reset_index(drop=True)
    prepared.eval = cap(prepared.eval, cfg.get("max_eval"), cfg.split_seed).reset_index(drop=True)
    prepared.val = cap(prepared.val, cfg.get("max_val"), cfg.split_seed).reset_index(drop=True)
    for part in ("train", "eval"):
        if len(getattr(prepared, part)) == 0:
            raise DataError(f"The {part} split of data={cfg.name} is empty")
    return prepared


def counts(df: pd.DataFrame) -> str:
    c = df["label"].value_counts()
    return f"{len(df)} rows ({c.get(YES, 0)} Yes / {c.get(NO, 0)} No)"


def labels_line(info: dict) -> str:
    """Which original values became "Yes" (never a blanket "Yes = deceptive")."""
    positive = info.get("positive_label")
    if not positive:
        return "- Labels: `Yes` / `No` as the recipe defines them."
    column = info.get("label_column", "label")
    line = f"- Labels: `Yes` = `{column}` is {' or '.join(repr(v) for v in positive)}"
    negative = info.get("negative_label")
    return line + (
        f"; `No` = {' or '.join(repr(v) for v in negative)}." if negative else "; `No` = any other value."
    )


def readme(prepared: Prepared, cfg) -> str:
    from .tracking import redact

    lines = [
        f"# {prepared.name} (prepared by reftlab)",
        "",
        f"- Source: {redact(prepared.info.get('source'))}",
        f"- Recipe: {cfg.recipe}; split: {prepared.info.get('split')}; eval fraction {cfg.eval_fraction}; "
        f"split seed {cfg.split_seed}",
        f"- full: {counts(prepared.full)}",
        f"- train: {counts(prepared.train)}",
        f"- val (validation, {cfg.get('val_fraction', 0)} of the training part; settings are chosen on it): "
        f"{counts(prepared.val)}",
        f"- eval (test: reported, never used to choose): {counts(prepared.eval)}",
        f"- Content version (sha256 of train+val+eval text/label, first 16 hex): {prepared.version()}",
        labels_line(prepared.info),
        f"- License: {cfg.get('license') or 'not given (set data.license to the data’s own license)'}",
    ]
    return "\n".join(lines) + "\n"


def write(prepared: Prepared, cfg, folder: Path) -> Path:
    """full/train/eval parquet plus a README describing the dataset."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for part in ("full", "train", "val", "eval"):
        getattr(prepared, part).to_parquet(folder / f"{part}.parquet", index=False)
    (folder / "README.md").write_text(readme(prepared, cfg))
    return folder
