"""A run's splits as MLflow dataset inputs: what the UI's Dataset column shows and filters on."""

from __future__ import annotations

import warnings

from .. import tracking
from . import versioning

DATASET_CONTEXTS = (("train", "training"), ("val", "validation"), ("eval", "testing"))


def log_datasets(cfg, prepared, data_version: str) -> None:
    """The splits as MLflow dataset inputs (the UI's Dataset column and filters): source = the Oxen
    repository's parquet file, digest = the data content hash, tags = the Oxen commit; schema and
    row counts come with the dataset."""
    import mlflow
    from mlflow.data.pandas_dataset import from_pandas

    repo = versioning.repo_dir(cfg.data.name).resolve()
    digest = prepared.version()
    for part, context in DATASET_CONTEXTS:
        df = getattr(prepared, part)
        if df is None or not len(df):
            continue
        with warnings.catch_warnings():  # "can be interpreted in multiple ways": a local file, either way
            warnings.simplefilter("ignore", UserWarning)
            dataset = from_pandas(df[["text", "label"]], source=str(repo / f"{part}.parquet"),
                                  name=f"{cfg.data.name}-{part}", digest=digest, targets="label")  # fmt: skip
        tags = {"oxen_commit": data_version, "split": part}
        if cfg.data.get("remote"):
            tags["oxen_remote"] = tracking.redact(str(cfg.data.remote))
        mlflow.log_input(dataset, context=context, tags=tags)
