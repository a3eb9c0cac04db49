"""The serving wing: a trained intervention or adapter put to use on new texts.

- `predict`: `Classifier` (a saved folder loaded once, called on texts: label and P(Yes)) and the
  `python predict.py` command (texts from a file's column or stdin; weights from a folder or an MLflow run).
- `pyfunc`: the same classifier logged as the run's MLflow model (`log`, `model_name`), for
  `mlflow.pyfunc.load_model`, `mlflow models predict` and `mlflow models serve`.
- `pyfunc_model`: the "model from code" file MLflow copies into that model and runs (imports reftlab
  by absolute name: it runs outside the package).
- `card`: the model card (README.md) written beside the saved weights.

Below it: methods/, engine/, prompts, models, data/. Nothing is imported here: import the module.
"""
