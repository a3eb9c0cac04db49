"""Multiple-choice data (`data.recipe=choice`): each row a question with its own options and the key
of the right one, as `task=choice` reads them.

A prepared row holds ``text`` (the prompt: the question with its options and the answer format, as
LLM-Adapters' instructions have it), ``question`` (the question alone), ``options`` (a list of the
options' texts), ``keys`` (a list: what names each option, answer1..answerK or true/false),
``label`` (the right key) and ``group`` (a row id).

Two sources:
- LLM-Adapters' JSON (`data.format=llm_adapters`, or a ``.json`` file), the ReFT paper's commonsense
  data: a list of ``{instruction, input, output, answer}``; the question and options are parsed out
  of the instruction ("...: <question>\\n\\nAnswer1: <o1> Answer2: <o2> ...\\n\\nAnswer format:
  answer1/answer2/..."; Solution1/Option1/Ending1 alike; "Answer format: true/false" questions are
  their own options), ``text`` is the instruction as given.
- a table (CSV/TSV/parquet/JSONL): `data.question_column`, the options in `data.options_column` (a
  list, or a JSON list in a CSV cell) or `data.option_columns` (one column each, blank: fewer
  options), the answer in `data.answer_column` (a key answerN, a letter A-E, an index 0..k-1 or
  1..k, or the option's text: `data.answer_type`, null: told by the answers' form); ``text`` is
  built as LLM-Adapters' ARC instructions are.

A question that cannot be read (an answer naming an option it lacks, fewer than 2 options, an empty
answer, an instruction that does not parse) is a DataError naming its row and values. How the
training and test files are deduplicated and split: `recipes.choice_recipe`.
"""

from __future__ import annotations

import functools
import json
import re
from pathlib import Path

import pandas as pd

from ..tracking import redact
from .files import FORMATS, DataError, blank, column, infer_format, keep_rows, plural, read_table

LLM_ADAPTERS = "llm_adapters"
SPLITS = ("random", "stratified")  # stratified: the answer keys in proportion on each side
ANSWER_TYPES = ("key", "letter", "index0", "index1", "text")
LEAD = "Please choose the correct answer to the question: "  # LLM-Adapters' ARC/OBQA instructions
ANSWER_FORMAT = re.compile(r"\n\s*Answer format:[ \t]*(?P<keys>[^\n]*?)\s*$")
ANY_LEAD = re.compile(r"^Please [^:\n]*?:\s*")  # "Please choose the correct solution to the question: "
NUMBERED = re.compile(r"(?P<stem>[A-Za-z]+)(?P<n>[1-9]\d*)")
SELF_NAMED = ["true", "false"]  # BoolQ: the answers are the options
SHOWN_PROBLEMS = 3


def option_keys(n: int) -> list[str]:
    """The keys LLM-Adapters names n options with: answer1 .. answer<n>."""
    return [f"answer{i}" for i in range(1, n + 1)]


def build_text(question: str, options: list[str], keys: list[str] | None = None) -> str:
    """A question and its options as LLM-Adapters' ARC instructions have them ("... Answer1: <option>
    Answer2: ... Answer format: answer1/answer2"): each option after its key, capitalised; the keys
    answer1..answerK unless given. The one definition: the data recipes and a served model use it."""
    keys = list(keys) if keys is not None else option_keys(len(options))
    listed = " ".join(f"{k[:1].upper()}{k[1:]}: {o}" for k, o in zip(keys, options, strict=True))
    return f"{LEAD}{question}\n\n{listed}\n\nAnswer format: {'/'.join(keys)}"


@functools.cache
def marker(key: str) -> re.Pattern:
    """Where option `key` starts in an instruction: "Answer1:" for answer1, at the start or after a space."""
    return re.compile(rf"(?:^|(?<=\s)){re.escape(key)}:\s*", re.IGNORECASE)


def parse_instruction(text: str) -> tuple[str, list[str], list[str]]:
    """(question, options, keys) of an LLM-Adapters instruction: the keys from its closing "Answer
    format: answer1/answer2/...", each option after its marker ("Answer1:", "Solution2:", ...), the
    question before the first marker without its lead ("Please choose ...: "); true/false questions are
    their own options. A ValueError says what does not fit."""
    end = ANSWER_FORMAT.search(text)
    if end is None:
        raise ValueError("it has no closing 'Answer format: ...' line")
    keys, body = end["keys"].split("/"), text[: end.start()]
    if keys == SELF_NAMED:
        return ANY_LEAD.sub("", body, count=1).strip(), list(keys), keys
    numbered = [NUMBERED.fullmatch(k) for k in keys]
    if (
        not all(numbered)
        or len({m["stem"] for m in numbered}) != 1
        or [int(m["n"]) for m in numbered] != list(range(1, len(keys) + 1))
    ):
        raise ValueError(f"its answer format {end['keys']!r} is neither numbered keys (answer1/answer2/...) nor true/false")  # fmt: skip
    marks, at = [], 0
    for key in keys:
        mark = marker(key).search(body, at)
        if mark is None:
            raise ValueError(f"it has no option '{key.capitalize()}:' where its answer format says")
        marks.append(mark)
        at = mark.end()
    ends = [m.start() for m in marks[1:]] + [len(body)]
    options = [body[m.end() : stop].strip() for m, stop in zip(marks, ends, strict=True)]
    return ANY_LEAD.sub("", body[: marks[0].start()], count=1).strip(), options, keys


def answer_text(value) -> str:
    """An answer cell as text: '' for a hole, true/false for a boolean, 2 for 2.0."""
    if value is None or (isinstance(value, float) and value != value):
        return ""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value).strip()


def problem(question: str, options: list[str], keys: list[str], answer: str) -> str:
    """What makes a question unusable ('' if nothing): fewer than 2 options, an empty option or
    question, an empty answer, an answer that names none of its options."""
    if len(options) < 2:
        return f"it has {plural(len(options), 'option')} ({options}): a question needs at least 2"
    empty = [key for key, option in zip(keys, options, strict=True) if not option]
    if empty:
        return f"its option(s) {empty} are empty"
    if not question:
        return "its question is empty"
    if not answer:
        return "its answer is empty"
    if answer not in keys:
        return f"its answer {answer!r} names no option of its {len(keys)} ({', '.join(keys)})"
    return ""


def refuse(problems: list[tuple[int, str]], setting: str, path, rows: int) -> None:
    """One DataError for the rows that cannot be read, naming the first few with their values."""
    if problems:
        shown = "; ".join(f"row {n}: {what}" for n, what in problems[:SHOWN_PROBLEMS])
        more = f"; and {len(problems) - SHOWN_PROBLEMS} more" if len(problems) > SHOWN_PROBLEMS else ""
        raise DataError(f"{setting}={redact(str(path))!r}: {plural(len(problems), 'row')} of {rows} cannot be "
                        f"read as a multiple-choice question: {shown}{more}")  # fmt: skip


def frame(rows: list[dict], index) -> pd.DataFrame:
    return pd.DataFrame(rows, columns=["text", "question", "options", "keys", "label"], index=index)


def read_llm_adapters(path, setting: str) -> pd.DataFrame:
    """An LLM-Adapters file (a JSON list of records, local or a URL) as a frame, its strings kept as they are."""
    try:
        raw = pd.read_json(path, orient="records", dtype=False, convert_dates=False)
    except Exception as e:
        raise DataError(f"Could not read {setting}={redact(str(path))!r} as LLM-Adapters JSON (a list of "
                        f"{{instruction, input, output, answer}} records): {e}") from e  # fmt: skip
    missing = [c for c in ("instruction", "answer") if c not in raw.columns]
    if missing:
        raise DataError(f"{setting}={redact(str(path))!r} lacks {missing}: LLM-Adapters records are "
                        f"{{instruction, input, output, answer}}; its fields are: {', '.join(map(str, raw.columns))}")  # fmt: skip
    return raw


def llm_adapters_rows(cfg, path, setting: str) -> pd.DataFrame:
    """The questions of an LLM-Adapters file: parsed out of each instruction, the instruction kept as `text`."""
    if cfg.get("options_column") is not None or cfg.get("option_columns") is not None:
        raise DataError(f"data.options_column / data.option_columns are for tables; {setting}={redact(str(path))!r} "
                        f"is read as LLM-Adapters JSON, whose options are in its instructions: set them to null")  # fmt: skip
    raw = keep_rows(read_llm_adapters(path, setting), cfg, path)
    rows, problems = [], []
    for row, instruction, value in zip(
        raw.index, raw["instruction"].tolist(), raw["answer"].tolist(), strict=True
    ):
        instruction, answer = "" if instruction is None else str(instruction), answer_text(value)
        try:
            question, options, keys = parse_instruction(instruction)
        except ValueError as e:
            problems.append((int(row) + 1, f"its instruction does not parse ({e}): {instruction[:120]!r}"))
            continue
        bad = problem(question, options, keys, answer)
        if bad:
            problems.append((int(row) + 1, bad))
        rows.append(
            {"text": instruction, "question": question, "options": options, "keys": keys, "label": answer}
        )
    refuse(problems, setting, path, len(raw))
    return frame(rows, raw.index)


def cell_options(value) -> list[str]:
    """An options cell as a list of texts: a list (parquet, JSONL) or a JSON list written in a CSV cell."""
    if isinstance(value, str) and value.strip().startswith("["):
        try:
            value = json.loads(value)
        except ValueError as e:
            raise ValueError(f"its options cell is not a JSON list: {value[:80]!r}") from e
    if isinstance(value, str) or not hasattr(value, "__iter__"):
        raise ValueError(f"its options cell is not a list: {value!r}")
    return [str(option).strip() for option in value]


def hole(value) -> bool:
    """A cell that holds nothing (`blank`'s rule): null/NaN, or a string that is empty or whitespace."""
    return bool(blank(pd.Series([value], dtype=object)).iloc[0])


def column_options(raw: pd.DataFrame, columns: list, row) -> list[str]:
    """A row's options from one column each: blank cells at the end mean fewer options."""
    texts = ["" if hole(raw.at[row, c]) else str(raw.at[row, c]).strip() for c in columns]
    while texts and not texts[-1]:
        texts.pop()
    return texts


def options_of(raw: pd.DataFrame, cfg, path) -> tuple[list, list[tuple[int, str]]]:
    """Each row's options (None where its cell cannot be read) and the rows that cannot."""
    by_list, by_columns = cfg.get("options_column"), cfg.get("option_columns")
    if (by_list is None) == (by_columns is None):
        raise DataError("A multiple-choice table needs its options: set data.options_column (a column holding "
                        "a list) or data.option_columns (one column each, e.g. [A, B, C, D]), one of the two")  # fmt: skip
    if by_columns is not None:
        columns = [column(raw, c, "data.option_columns", path) for c in by_columns]
        return [column_options(raw, columns, row) for row in raw.index], []
    col = column(raw, by_list, "data.options_column", path)
    options, problems = [], []
    for row, value in zip(raw.index, raw[col], strict=True):
        try:
            options.append(cell_options(value))
        except ValueError as e:
            options.append(None)
            problems.append((int(row) + 1, str(e)))
    return options, problems


def answer_type(answers: list[str], setting) -> str:
    """How a table's answers name the right option: `data.answer_type`, or (null) by their form: keys
    (answer2), letters (B), numbers (an index: from 0 if any answer is 0, else from 1), else texts."""
    if setting is not None:
        if setting not in ANSWER_TYPES:
            raise DataError(f"data.answer_type={setting!r} is not valid: choose one of {list(ANSWER_TYPES)} (null: "
                            "told by the answers' form)")  # fmt: skip
        return setting
    given = [a for a in answers if a]
    if given and all(NUMBERED.fullmatch(a) for a in given):
        return "key"
    if given and all(re.fullmatch(r"[A-Z]", a) for a in given):
        return "letter"
    if given and all(a.isdigit() for a in given):
        return "index0" if "0" in given else "index1"
    return "text"


def answer_index(answer: str, options: list[str], kind: str) -> int | None:
    """The 0-based option an answer names (None: it names none)."""
    if kind == "text":
        return options.index(answer) if answer in options else None
    if kind == "key":
        found = NUMBERED.fullmatch(answer)
        i = int(found["n"]) - 1 if found else -1
    elif kind == "letter":
        i = ord(answer) - ord("A") if re.fullmatch(r"[A-Z]", answer) else -1
    else:
        i = int(answer) - (kind == "index1") if answer.isdigit() else -1
    return i if 0 <= i < len(options) else None


def table_problem(
    question: str, options: list[str], keys: list[str], answer: str, label: str, kind: str
) -> str:
    """`problem` for a table's row, whose answer (`answer`, read as `kind`) gave `label` ('' if it names
    no option)."""
    if answer and not label and len(options) >= 2:
        return f"its answer {answer!r} (read as {kind}) names none of its {len(options)} options {options}"
    return problem(question, options, keys, label)


def table_rows(cfg, path, setting: str, fmt: str) -> tuple[pd.DataFrame, dict]:
    """The questions of a table with options (`text` built as LLM-Adapters' ARC instructions), and how
    its answers were read."""
    raw = keep_rows(read_table(path, fmt), cfg, path)
    question_col = column(raw, cfg.question_column, "data.question_column", path)
    answer_col = column(raw, cfg.answer_column, "data.answer_column", path)
    options, problems = options_of(raw, cfg, path)
    answers = [answer_text(a) for a in raw[answer_col]]
    kind = answer_type(answers, cfg.get("answer_type"))
    rows = []
    for row, question, answer, opts in zip(raw.index, raw[question_col], answers, options, strict=True):
        if opts is None:
            continue
        question = "" if hole(question) else str(question).strip()
        keys = [f"answer{i}" for i in range(1, len(opts) + 1)]
        i = answer_index(answer, opts, kind) if answer else None
        label = keys[i] if i is not None else ""
        bad = table_problem(question, opts, keys, answer, label, kind)
        if bad:
            problems.append((int(row) + 1, bad))
        rows.append({"text": build_text(question, opts), "question": question, "options": opts, "keys": keys, "label": label})  # fmt: skip
    refuse(sorted(problems), setting, path, len(raw))
    return frame(rows, [r for r, o in zip(raw.index, options, strict=True) if o is not None]), {
        "question_column": str(question_col), "answer_column": str(answer_col), "answer_type": kind}  # fmt: skip


def file_format(path, fmt: str | None) -> str:
    """llm_adapters (set, or a .json file), else a table format (csv, tsv, parquet, jsonl)."""
    if fmt == LLM_ADAPTERS or (fmt is None and Path(str(path).split("?")[0]).suffix.lower() == ".json"):
        return LLM_ADAPTERS
    if fmt is not None and fmt not in FORMATS:
        raise DataError(f"data.format={fmt!r} is not valid for the choice recipe: choose one of "
                        f"{', '.join((LLM_ADAPTERS, *FORMATS))}")  # fmt: skip
    return infer_format(str(path), fmt)


def questions(cfg, path, setting: str) -> tuple[pd.DataFrame, dict]:
    """One file's questions as the data contract's columns, and how they were read."""
    fmt = file_format(path, cfg.get("format"))
    if fmt == LLM_ADAPTERS:
        return llm_adapters_rows(cfg, path, setting), {"format": fmt}
    rows, how = table_rows(cfg, path, setting, fmt)
    return rows, {"format": fmt, **how}


def labels_line(info: dict) -> str:
    """The README's account of a multiple-choice dataset's labels and options."""
    sizes = ", ".join(f"{k} options: {n}" for k, n in info.get("options", {}).items())
    read = (f"; answers read from column `{info['answer_column']}` as {info['answer_type']}"
            if info.get("answer_column") else "")  # fmt: skip
    return (f"- Labels: the key of each question's right option ({', '.join(info.get('keys', []))}); "
            f"questions with {sizes}{read}. `text` is the question with its options (LLM-Adapters' instruction), "
            "`question` the question alone, `options` and `keys` lists.")  # fmt: skip
