"""reftlab's MLflow model as a "model from code" (https://mlflow.org/docs/latest/ml/model/models-from-code/).

`pyfunc.log` gives MLflow this file's path, not a pickled object: MLflow copies it into the logged
model and runs it when the model is logged and when it is loaded; `set_model` below names the model.
`predict`'s type hints tell MLflow the input is a DataFrame, so it checks the input against the
model's signature (the task's columns: `text`, or `question` and `options`; the `batch_size` param)
before `predict` runs; `predict` then refuses what the signature lets through (a missing text or
question, fewer than 2 options: the task's `request`; a batch size below 1) with an
INVALID_PARAMETER_VALUE, which MLflow's scoring server answers with a 400 and the message. No rows
give no predictions.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import mlflow
import pandas as pd
from mlflow.exceptions import MlflowException
from mlflow.pyfunc import PythonModel

from reftlab.serving.pyfunc import ARTIFACT


class ReftlabModel(PythonModel):
    def load_context(self, context) -> None:
        from reftlab.serving.predict import Classifier

        self.classifier = Classifier(Path(context.artifacts[ARTIFACT]))

    def predict(
        self, context, model_input: pd.DataFrame, params: dict[str, Any] | None = None
    ) -> pd.DataFrame:
        from reftlab.data.recipes import DataError

        batch = batch_size(params)
        task = self.classifier.task
        try:
            rows = task.request(model_input)
        except DataError as e:
            raise MlflowException.invalid_parameter_value(str(e)) from e
        answers = self.classifier(rows, batch, progress=False)
        return answers[[name for name, _ in task.served_outputs()]]


def batch_size(params: dict | None) -> int:
    """The `batch_size` param (16 if not given); refused unless an integer >= 1."""
    from reftlab.engine.loop import check_batch_size

    try:
        return check_batch_size((params or {}).get("batch_size", 16))
    except ValueError as e:
        raise MlflowException.invalid_parameter_value(
            f"params: {e} (texts scored at once; default 16)"
        ) from e


mlflow.models.set_model(ReftlabModel())
