"""Classify texts with a trained intervention or adapter (a saved folder or an MLflow run).

python predict.py --run <mlflow run id> --input reviews.csv --column text
echo "Best hotel ever!!!" | python predict.py --path outputs/<date>/<time>/intervention
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


def read_texts(path: str | None, column: str) -> list[str]:
    """The texts to classify: stdin's lines, or a file's column (a row with no text is refused)."""
    if path is None:  # one text per line; a blank line is a (blank) text, so outputs line up with inputs
        return [line.rstrip("\n") for line in sys.stdin]
    from ..data import recipes

    frame = recipes.read_table(path)
    if column not in frame.columns:
        raise SystemExit(
            f"--column {column!r} is not a column of {path}; its columns are: {', '.join(map(str, frame.columns))}"
        )
    holes = recipes.blank(frame[column])
    if holes.any():
        rows = recipes.rows_text(
            recipes.row_numbers(frame.index[holes][: recipes.SHOWN_ROWS]), int(holes.sum())
        )
        raise SystemExit(
            f"--input {path}: column {column!r} has no text in {rows} (row 1 = the first data row): "
            "fill them in or leave those rows out"
        )
    return frame[column].astype(str).tolist()


def load(folder: Path):
    """(model or adapter, settings, tokenizer, device) from a saved folder."""
    from omegaconf import OmegaConf

    from .. import methods, models

    settings = json.loads((Path(folder) / "reft_settings.json").read_text())
    model, tokenizer, device, _ = models.load_model_and_tokenizer(OmegaConf.create(settings["model_config"]))
    trained, _ = methods.get(settings["method"]).load(model, folder)
    return trained, settings, tokenizer, device


class Classifier:
    """A trained intervention or adapter with its model, prompt and length settings, loaded once;
    called on texts it gives labels and P(Yes). predict.py and the MLflow model (`pyfunc`) use it."""

    def __init__(self, folder: Path):
        from .. import methods
        from ..tasks.chat import PromptBuilder

        self.trained, self.settings, self.tokenizer, self.device = load(folder)
        self.method = methods.get(self.settings["method"])
        self.builder = PromptBuilder(
            self.tokenizer, self.settings["system_prompt"], self.settings["max_length"]
        )

    def __call__(self, texts: list[str], batch_size: int = 16, progress: bool = True) -> pd.DataFrame:
        from ..engine import score

        b = self.builder
        scores = score(self.trained, self.method, self.settings, b.prompts(texts), b.yes_id, b.no_id,
                       self.tokenizer.pad_token_id, self.device, batch_size, progress)  # fmt: skip
        return pd.DataFrame(
            {"text": texts, "label": np.where(scores > 0, "Yes", "No"), "p_yes": 1 / (1 + np.exp(-scores))}
        )


def classify(folder: Path, texts: list[str], batch_size: int = 16) -> pd.DataFrame:
    return Classifier(folder)(texts, batch_size)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Classify texts with a trained reftlab intervention or adapter."
    )
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--run", help="MLflow run id (its 'intervention' artifacts are used)")
    source.add_argument("--path", help="a saved intervention/adapter folder (outputs/.../intervention)")
    parser.add_argument(
        "--tracking-uri", default=None, help="MLflow tracking URI (default: sqlite:///mlflow.db)"
    )
    parser.add_argument("--input", help="CSV/TSV/parquet/JSONL file; default: one text per line on stdin")
    parser.add_argument("--column", default="text", help="the text column of --input")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--output", help="also write the predictions to this CSV/parquet file")
    args = parser.parse_args(argv)
    if args.batch_size < 1:
        parser.error(f"--batch-size {args.batch_size} is not valid: it must be an integer >= 1")
    if args.output and args.input and Path(args.output).resolve() == Path(args.input).resolve():
        parser.error(f"--output {args.output} is the input file: choose another file (the input is kept)")
    texts = read_texts(args.input, args.column)
    if not texts:
        empty = f"--input {args.input} has no rows" if args.input else "stdin is empty"
        parser.error(
            f"no texts to classify: {empty} (give one text per line on stdin, or a file with --input)"
        )
    if args.run:
        uri = tracking.tracking_uri(args.tracking_uri)
        folder = fetch(args.run, uri)
    else:
        folder = Path(args.path)
    if not (folder / "reft_settings.json").exists():
        raise SystemExit(f"{folder} holds no trained intervention or adapter (no reft_settings.json)")
    result = classify(folder, texts, args.batch_size)
    for row in result.itertuples():
        print(f"{row.label}\t{row.p_yes:.4f}\t{row.text[:80]}")
    if args.output:
        (result.to_parquet if args.output.endswith(".parquet") else result.to_csv)(args.output, index=False)
    return 0
