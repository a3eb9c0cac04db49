"""Answer with a trained intervention or adapter (a saved folder or an MLflow run), as its task does:
texts (Yes/No, a label set) or questions with their options (multiple choice).

python predict.py --run <mlflow run id> --input reviews.csv --column text
echo "Best hotel ever!!!" | python predict.py --path outputs/<date>/<time>/intervention
echo '{"question": "...", "options": ["...", "..."]}' | python predict.py --path <a choice run's folder>
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from .. import tracking


def fetch(run_id: str, tracking_uri: str | None) -> Path:
    import mlflow

    return Path(
        mlflow.artifacts.download_artifacts(
            run_id=run_id, artifact_path="intervention", tracking_uri=tracking_uri
        )
    )


class InputError(ValueError):
    """Input predict.py cannot answer (a usage error: exit status 2, before any model loads)."""


def read_texts(path: str | None, column: str) -> list[str]:
    """The texts to classify: stdin's lines, or a file's column (a row with no text is refused)."""
    if path is None:  # one text per line; a blank line is a (blank) text, so outputs line up with inputs
        return [line.rstrip("\n") for line in sys.stdin]
    frame = read_table(path, [column])
    refuse_blank(frame, column, path, "text")
    return frame[column].astype(str).tolist()


def read_table(path: str, needed: list[str]) -> pd.DataFrame:
    """The file `path` as a frame, refused unless it has the `needed` columns."""
    from ..data import recipes

    frame = recipes.read_table(path)
    absent = [c for c in needed if c not in frame.columns]
    if absent:
        raise InputError(f"--column {absent[0]!r} is not a column of {path}; its columns are: "
                         f"{', '.join(map(str, frame.columns))}")  # fmt: skip
    return frame


def refuse_blank(frame: pd.DataFrame, column: str, path: str, what: str) -> None:
    """Refuse a column with empty cells, naming the rows."""
    from ..data import recipes

    holes = recipes.blank(frame[column])
    if holes.any():
        rows = recipes.rows_text(
            recipes.row_numbers(frame.index[holes][: recipes.SHOWN_ROWS]), int(holes.sum())
        )
        raise InputError(f"--input {path}: column {column!r} has no {what} in {rows} (row 1 = the first data row): "
                         "fill them in or leave those rows out")  # fmt: skip


def read_records(path: str | None, inputs: list[tuple[str, str, bool]], column: str) -> pd.DataFrame:
    """What a task that takes more than a text answers (multiple choice: a question and its options):
    JSON lines on stdin (one object per line with the task's inputs; blank lines skipped), or a file's
    columns: `column` holds the first input, the others are columns of their own names; a list (the
    options) is a JSON list in one column (a list in parquet/JSONL) or columns `option_1`, `option_2`,
    ... (empty cells left out)."""
    if path is None:
        rows = []
        for n, line in enumerate(sys.stdin, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                row = e
            if not isinstance(row, dict):
                example = {
                    name: "..." if kind == "string" else ["...", "..."]
                    for name, kind, needed in inputs
                    if needed
                }
                raise InputError(f"stdin line {n} {line.strip()[:80]!r} is not a JSON object: give one object per "
                                 f"line, e.g. {json.dumps(example)}")  # fmt: skip
            rows.append(row)
        return pd.DataFrame(rows)
    first, *rest = inputs
    frame = read_table(path, [column])
    refuse_blank(frame, column, path, first[0])
    out = {first[0]: frame[column].astype(str).tolist()}
    for name, kind, needed in rest:
        values = listed(frame, name, path) if kind.startswith("list") else frame.get(name)
        if values is None and needed:
            raise InputError(f"--input {path} has no {name!r} column and no {singular(name)}_* columns "
                             f"(its columns: {', '.join(map(str, frame.columns))}): give each row its {name}")  # fmt: skip
        if values is not None:
            out[name] = list(values)
    return pd.DataFrame(out)


def singular(name: str) -> str:
    """The name of one item of a list input: options -> option, keys -> key."""
    return name.removesuffix("s")


def listed(frame: pd.DataFrame, name: str, path: str) -> list | None:
    """A list column of a file: `name` (JSON lists, or lists), or `<singular>_*` columns in order
    (option_1, option_2, ..., option_10; a row's empty cells left out). None: the file has neither."""
    from ..data import recipes

    if name in frame.columns:
        return [json_list(v, name, n, path) for n, v in enumerate(frame[name], start=1)]
    prefix = f"{singular(name)}_"
    columns = sorted(
        (c for c in frame.columns if str(c).startswith(prefix)), key=lambda c: (len(str(c)), str(c))
    )
    if not columns:
        return None
    holes = frame[columns].apply(recipes.blank).to_numpy()
    return [[v for v, hole in zip(row, gaps, strict=True) if not hole]
            for row, gaps in zip(frame[columns].to_numpy(), holes, strict=True)]  # fmt: skip


def json_list(value, name: str, row: int, path: str):
    """A file's cell that holds a list: a list as it is, a JSON list parsed; else refused."""
    if not isinstance(value, str):
        return value
    try:
        parsed = json.loads(value)
    except json.JSONDecodeError:
        parsed = None
    if not isinstance(parsed, list):
        one = singular(name)
        raise InputError(f"--input {path}: {name!r} of row {row} is {value[:80]!r}, not a JSON list: write it as "
                         f'["first", "second", ...] (or use columns {one}_1, {one}_2, ...)')  # fmt: skip
    return parsed


def read_rows(task, path: str | None, column: str | None) -> pd.DataFrame:
    """The rows to answer for `task`, checked by it before any model loads (texts for a task that
    takes texts; records for one that takes more)."""
    from ..data.recipes import DataError

    inputs = task.served_inputs()
    column = column or inputs[0][0]
    if [name for name, _, _ in inputs] == ["text"]:
        frame = pd.DataFrame({"text": read_texts(path, column)})
    else:
        frame = read_records(path, inputs, column)
    try:
        return task.request(frame)
    except DataError as e:
        where = f"--input {path}" if path else "stdin"
        raise InputError(f"{where}: {e}") from e


def load(folder: Path):
    """(model or adapter, settings, tokenizer, device) from a saved folder."""
    from omegaconf import OmegaConf

    from .. import methods, models

    settings = json.loads((Path(folder) / "reft_settings.json").read_text())
    model, tokenizer, device, _ = models.load_model_and_tokenizer(OmegaConf.create(settings["model_config"]))
    trained, _ = methods.get(settings["method"]).load(model, folder)
    return trained, settings, tokenizer, device


def builder_settings(settings: dict):
    """The settings a task's prompt builder reads (`data.system_prompt`, `trainer.max_length`), from a
    saved folder's."""
    from omegaconf import OmegaConf

    return OmegaConf.create({"data": {"system_prompt": settings["system_prompt"]},
                             "trainer": {"max_length": settings["max_length"]}})  # fmt: skip


def task_of(settings: dict):
    """The task a saved model answers (`settings["task"]`; none: yes_no, as runs logged before tasks were)."""
    from .. import tasks

    return tasks.get(settings.get("task"))


def as_frame(rows) -> pd.DataFrame:
    """What a caller sends as a frame: a frame as it is, texts as a `text` column, records (dicts) as rows."""
    if isinstance(rows, pd.DataFrame):
        return rows
    rows = list(rows)
    return pd.DataFrame({"text": rows}) if all(isinstance(r, str) for r in rows) else pd.DataFrame(rows)


class Classifier:
    """A trained intervention or adapter with its model, task, prompt and length settings, loaded once;
    called on what its task takes (texts; for multiple choice, questions and their options) it answers
    as the task scores it (`Task.request`, `score`, `table`, `answers`). predict.py and the MLflow model
    (`pyfunc`) use it."""

    def __init__(self, folder: Path):
        from .. import methods

        self.trained, self.settings, self.tokenizer, self.device = load(folder)
        self.method = methods.get(self.settings["method"])
        self.task = task_of(self.settings)
        self._builder, self._built_for = None, None

    def builder(self):
        """The task's prompt builder, made again only when the task's answers changed (a request named
        a key the run never saw)."""
        answers = json.dumps(self.task.saved(), sort_keys=True)
        if answers != self._built_for:
            self._builder = self.task.builder(self.tokenizer, builder_settings(self.settings))
            self._built_for = answers
        return self._builder

    def __call__(self, rows, batch_size: int = 16, progress: bool = True, on_tokens=None) -> pd.DataFrame:
        """The answers to `rows` (texts, records or a frame): the input shown first, then the task's
        served outputs. What cannot be scored is a DataError naming the rows. A task that generates
        calls `on_tokens(rows, tokens)` after each decoding step (a terminal streams them)."""
        from ..engine import StockScorer

        frame = self.task.request(as_frame(rows))
        scorer = StockScorer(self.trained, self.method, self.settings, self.tokenizer.pad_token_id,
                             self.device, progress)  # fmt: skip
        more = {"on_tokens": on_tokens} if on_tokens is not None else {}
        scores = self.task.score(scorer, self.builder(), frame, batch_size, **more)
        return self.task.answers(self.task.table(frame, scores))


def classify(folder: Path, rows, batch_size: int = 16) -> pd.DataFrame:
    return Classifier(folder)(rows, batch_size)


def shown(value) -> str:
    """A cell as a printed answer shows it: numbers to 4 places, lists of numbers joined by '/'."""
    if isinstance(value, float | np.floating):
        return f"{value:.4f}"
    if isinstance(value, list | tuple | np.ndarray):
        return "/".join(shown(v) for v in value)
    return str(value)[:80]


def lines(task, result: pd.DataFrame) -> list[str]:
    """One printed line per answer: the task's outputs, then its input cut to 80 characters (Yes/No:
    label, P(Yes), text)."""
    first = task.served_inputs()[0][0]
    names = [name for name, _ in task.served_outputs()]
    return [
        "\t".join([*(shown(row[c]) for c in names), str(row[first])[:80]])
        for row in result.to_dict("records")
    ]


def stream(classifier, rows: pd.DataFrame) -> pd.DataFrame:
    """A generating model's answers, one prompt at a time, its text printed token by token as it is
    generated (transformers' TextStreamer), then the answer its extractor reads."""
    import torch
    from transformers import TextStreamer

    parts = []
    for n in range(len(rows)):
        print(f"[{n + 1}] ", end="", flush=True)
        streamer = TextStreamer(classifier.tokenizer, skip_special_tokens=True)

        def put(_, tokens, streamer=streamer):
            for token in tokens:
                if token is not None:
                    streamer.put(torch.tensor([token]))

        part = classifier(rows.iloc[[n]], 1, progress=False, on_tokens=put)
        streamer.end()
        print(f"    answer: {part['answer'].iloc[0] or '(none found)'}", flush=True)
        parts.append(part)
    return pd.concat(parts, ignore_index=True)


def write(result: pd.DataFrame, path: str) -> None:
    """The answers as a parquet file (lists kept) or a CSV (lists as JSON)."""
    if path.endswith(".parquet"):
        result.to_parquet(path, index=False)
        return
    listed = {c: result[c].map(lambda v: json.dumps(list(v))) for c in result.columns
              if len(result) and isinstance(result[c].iloc[0], list | tuple | np.ndarray)}  # fmt: skip
    result.assign(**listed).to_csv(path, index=False)


def main(argv: list[str] | None = None) -> int:
    from ..config import ConfigError

    parser = argparse.ArgumentParser(
        description="Answer with a trained reftlab intervention or adapter, as its task does: texts (Yes/No, "
        "labels), or questions and their options (multiple choice)."
    )
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--run", help="MLflow run id (its 'intervention' artifacts are used)")
    source.add_argument("--path", help="a saved intervention/adapter folder (outputs/.../intervention)")
    parser.add_argument(
        "--tracking-uri", default=None, help="MLflow tracking URI (default: sqlite:///mlflow.db)"
    )
    parser.add_argument("--input", help="CSV/TSV/parquet/JSONL file; default: stdin (one text per line; "
                        "multiple choice: one JSON object per line)")  # fmt: skip
    parser.add_argument("--column", default=None, help="the text column of --input (default: text; "
                        "multiple choice: the question column, default: question)")  # fmt: skip
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--output", help="also write the predictions to this CSV/parquet file")
    parser.add_argument("--no-stream", dest="stream", action="store_false",
                        help="a model that generates: print each answer when it is done, not token by token")  # fmt: skip
    args = parser.parse_args(argv)
    if args.batch_size < 1:
        parser.error(f"--batch-size {args.batch_size} is not valid: it must be an integer >= 1")
    if args.output and args.input and Path(args.output).resolve() == Path(args.input).resolve():
        parser.error(f"--output {args.output} is the input file: choose another file (the input is kept)")
    if args.run:
        uri = tracking.tracking_uri(args.tracking_uri)
        folder = fetch(args.run, uri)
    else:
        folder = Path(args.path)
    if not (folder / "reft_settings.json").exists():
        raise SystemExit(f"{folder} holds no trained intervention or adapter (no reft_settings.json)")
    try:
        task = task_of(json.loads((folder / "reft_settings.json").read_text()))
    except ConfigError as e:
        raise SystemExit(f"{folder}/reft_settings.json: {e}") from e
    try:
        rows = read_rows(task, args.input, args.column)
    except InputError as e:
        parser.error(str(e))
    if not len(rows):
        empty = f"--input {args.input} has no rows" if args.input else "stdin is empty"
        texts = task.served_inputs()[0][0] == "text"
        what, how = ("texts to classify", "one text") if texts else ("questions to answer", "one JSON object")
        parser.error(f"no {what}: {empty} (give {how} per line on stdin, or a file with --input)")
    if task.family == "generate" and args.stream:
        result = stream(Classifier(folder), rows)
    else:
        result = classify(folder, rows, args.batch_size)
        for line in lines(task, result):
            print(line)
    if args.output:
        write(result, args.output)
    return 0
