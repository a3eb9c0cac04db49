"""reftlab's MLflow model as a "model from code" (https://mlflow.org/docs/latest/ml/model/models-from-code/).

`pyfunc.log` gives MLflow this file's path, not a pickled object: MLflow copies it into the logged
model and runs it when the model is logged and when it is loaded; `set_model` below names the model.
`predict`'s type hints tell MLflow the input is a DataFrame, so it checks the input against the
model's signature (a string column `text`, the `batch_size` param) before `predict` runs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import mlflow
import pandas as pd
from mlflow.pyfunc import PythonModel

from reftlab.serving.pyfunc import ARTIFACT


class ReftlabModel(PythonModel):
    def load_context(self, context) -> None:
        from reftlab.serving.predict import Classifier

        self.classifier = Classifier(Path(context.artifacts[ARTIFACT]))

    def predict(
        self, context, model_input: pd.DataFrame, params: dict[str, Any] | None = None
    ) -> pd.DataFrame:
        batch = int((params or {}).get("batch_size", 16))
        texts = [
            "" if t is None or (isinstance(t, float) and t != t) else str(t) for t in model_input["text"]
        ]  # CSV blanks read as NaN
        return self.classifier(texts, batch, progress=False)[["label", "p_yes"]]


mlflow.models.set_model(ReftlabModel())
