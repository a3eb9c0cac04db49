"""Word problems with worked solutions (`data.recipe=arithmetic`), as `task=generate` reads them.

A prepared row holds ``text`` (the question), ``target`` (the worked solution the model is trained
to write; empty in a test file that has none), ``label`` (the gold answer: a number, or a letter for
AQuA) and ``group`` (a row id). Two file formats:

- GSM8K's own JSON lines (`gsm8k`, a ``.jsonl`` file): ``{question, answer}``, the answer a worked
  solution with calculator notes ``<<48/2=24>>`` ending ``#### 72``. The target is the solution
  without the notes (`data.calculator_notes=false`: they are a calculator's output, which the model
  does not have at test time) and its ``#### 72`` line written as `data.answer_line` ("The answer is
  72."); the gold answer is the number after ``####``, commas removed.
- LLM-Adapters' JSON (`llm_adapters`, a ``.json`` file): ``{instruction, input, output, answer}``
  (MAWPS, AQuA): the text is the instruction (with its input, where one is given), the target its
  output, the gold answer its `answer`.

A row without a question or a gold answer is a DataError naming it. How the files are split:
`recipes.arithmetic_recipe`.
"""

from __future__ import annotations

import re

import pandas as pd

from ..tracking import redact
from .files import DataError, check_path, keep_rows

FORMATS = ("gsm8k", "llm_adapters")
NOTE = re.compile(r"<<[^<>]*>>")
FINAL = re.compile(r"\n?####\s*(?P<answer>[^\n]*)\s*$")
SHOWN = 5


def file_format(path, fmt: str | None, setting: str) -> str:
    if fmt is not None:
        if fmt not in FORMATS:
            raise DataError(f"{setting.replace('path', 'format')}={fmt!r} is not valid for the arithmetic recipe: "
                            f"choose one of {list(FORMATS)}")  # fmt: skip
        return fmt
    name = str(path).split("?")[0].lower()
    if name.endswith(".jsonl"):
        return "gsm8k"
    if name.endswith(".json"):
        return "llm_adapters"
    raise DataError(f"{setting}={redact(str(path))!r}: the arithmetic recipe reads GSM8K's .jsonl or LLM-Adapters' "
                    f".json; name the format with {setting.replace('path', 'format')}=gsm8k|llm_adapters")  # fmt: skip


def target_of(solution: str, cfg) -> tuple[str, str]:
    """(target, gold answer) of a GSM8K solution."""
    found = FINAL.search(solution)
    if found is None:
        return solution.strip(), ""
    answer = found["answer"].strip().replace(",", "")
    steps = solution[: found.start()]
    if not cfg.get("calculator_notes", False):
        steps = NOTE.sub("", steps)
    line = str(cfg.get("answer_line") or "").format(answer=answer)
    return (steps.rstrip() + ("\n" + line if line else "")).strip(), answer


def read(cfg, path, setting: str, fmt: str | None) -> pd.DataFrame:
    """The rows of one file: text, target, label."""
    kind = file_format(path, fmt, setting)
    check_path(path, setting)
    try:
        raw = pd.read_json(path, lines=kind == "gsm8k", orient="records", dtype=False, convert_dates=False)
    except Exception as e:
        raise DataError(f"Could not read {setting}={redact(str(path))!r} as {kind} JSON: {e}") from e
    need = ["question", "answer"] if kind == "gsm8k" else ["instruction", "answer"]
    missing = [c for c in need if c not in raw.columns]
    if missing:
        raise DataError(f"{setting}={redact(str(path))!r} lacks {missing} ({kind} records have {need}); its fields "
                        f"are: {', '.join(map(str, raw.columns))}")  # fmt: skip
    raw = keep_rows(raw, cfg, path)
    rows, bad = [], []
    for n, rec in zip(raw.index, raw.to_dict("records"), strict=True):
        if kind == "gsm8k":
            text = rec["question"]
            target, label = target_of(str(rec["answer"] or ""), cfg)
        else:
            extra = rec.get("input")
            text = rec["instruction"] if not extra else f"{rec['instruction']}\n\n{extra}"
            target, label = (
                str(rec.get("output") or "").strip(),
                str(rec["answer"] if rec["answer"] is not None else ""),
            )
        text, label = ("" if text is None else str(text)).strip(), label.strip()
        if not text or not label:
            bad.append(int(n) + 1)
        rows.append({"text": text, "target": target, "label": label})
    if bad:
        raise DataError(f"{len(bad)} row(s) of {setting}={redact(str(path))!r} have no question or no gold answer "
                        f"(rows {', '.join(map(str, bad[:SHOWN]))}{' ...' if len(bad) > SHOWN else ''}, row 1 = the first)")  # fmt: skip
    return pd.DataFrame(rows, columns=["text", "target", "label"])
