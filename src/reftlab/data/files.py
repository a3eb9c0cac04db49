"""Reading data files: their formats, paths and columns, a row filter (`data.keep`), and the
DataError every recipe raises for bad data settings or a bad data file. Below `recipes` and `choice`."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from ..tracking import redact

FORMATS = ("csv", "tsv", "parquet", "jsonl")
SHOWN_ROWS = 10  # row numbers named in messages and READMEs (the counts are always complete)


class DataError(ValueError):
    """Bad data settings or a bad data file."""


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


def check_path(path, setting: str = "data.path") -> None:
    """Fail early (before any model loading) on a missing data file."""
    if path is None or str(path) == "":
        raise DataError(f"{setting} is not set: give the data file, e.g. {setting}=my_data.csv")
    if not is_url(str(path)) and not Path(str(path)).is_file():
        raise DataError(f"{setting}={str(path)!r}: no such file (working directory: {Path.cwd()})")


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


def plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def blank(values: pd.Series) -> pd.Series:
    """True where a cell holds nothing: null/NaN/None, or a string that is empty or whitespace only."""
    return values.isna() | values.map(lambda v: isinstance(v, str) and not v.strip()).astype(bool)


def kept(cfg) -> dict:
    """`data.keep` without its null entries: column -> the values whose rows are kept (an empty list,
    which would keep no row, is refused)."""
    scalar = (str, int, float, bool)
    out = {str(k): [v] if isinstance(v, scalar) else list(v) for k, v in dict(cfg.get("keep") or {}).items()
           if v is not None}  # fmt: skip
    for name, values in out.items():
        if not values:
            raise DataError(
                f"data.keep.{name}=[] keeps no row: give the value(s) of column {name!r} whose rows are kept "
                "(null: every row)"
            )
    return out


def keep_rows(raw: pd.DataFrame, cfg, path=None) -> pd.DataFrame:
    """Only the rows whose `data.keep` columns hold one of the given values (Ott et al.'s 800
    positive reviews: data.keep.polarity=positive); a column or value the file (`path`, else
    `data.path`) lacks is an error."""
    path = cfg.path if path is None else path
    for name, wanted in kept(cfg).items():
        col = column(raw, name, "data.keep", path)
        values = [str(v) for v in wanted]
        present = sorted(raw[col].astype(str).unique())
        absent = [v for v in values if v not in present]
        if absent:
            raise DataError(
                f"data.keep.{name}={values if len(values) > 1 else values[0]!r}: {absent} does not occur in column {col!r} of "
                f"{redact(path)!r}; its values are: {', '.join(present[:SHOWN_ROWS])}"
            )
        raw = raw[raw[col].astype(str).isin(values)]
    return raw
