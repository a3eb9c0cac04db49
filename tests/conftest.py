import os
import sys
import tempfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "conf"
# One converted copy of the bundled model/tokenizer for the whole suite (and the main job).
os.environ.setdefault("REFTLAB_CACHE", str(ROOT / ".cache"))
os.environ.setdefault("TQDM_DISABLE", "1")
# Dataset repositories (Oxen) of the suite live in a temporary folder, not in data/repos.
os.environ["REFTLAB_DATA_REPOS"] = tempfile.mkdtemp(prefix="reftlab-repos-")


_COMPOSED: dict = {}


def compose(*overrides: str):
    """The config `python train.py <overrides>` would run, composed by Hydra (once per overrides and
    conf/ folder in the session; each call gets its own copy to change)."""
    import copy

    from reftlab.config.compose import compose as reftlab_compose
    from reftlab.config.compose import conf_dir

    key = (overrides, conf_dir())
    if key not in _COMPOSED:
        _COMPOSED[key] = reftlab_compose(list(overrides))
    return copy.deepcopy(_COMPOSED[key])


@pytest.fixture
def in_root(monkeypatch):
    """Run from the project root (data paths in conf/ are relative to it)."""
    monkeypatch.chdir(ROOT)


@pytest.fixture
def mlflow_uri(tmp_path):
    import mlflow

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    yield uri
    mlflow.set_tracking_uri(None)


def tiny_overrides(*extra: str) -> list[str]:
    base = [
        "model=tiny_random",
        "intervention.layer=1",
        "data.max_train=24",
        "data.max_eval=16",
        "trainer.max_length=64",
        "trainer.batch_size=8",
        "data.max_val=16",
        "trainer.epochs=1",
    ]
    given = {e.split("=", 1)[0] for e in extra}
    return [b for b in base if b.split("=", 1)[0] not in given] + list(extra)


def runs(uri: str, experiment: str = "reftlab", sweeps: bool = False):
    """The MLflow runs of an experiment as a DataFrame (metrics, params, tags, status): the jobs, and
    with `sweeps` the sweeps' parent runs too (tag kind=sweep)."""
    import contextlib

    import mlflow

    from reftlab.locks import file_lock

    database = Path(uri[len("sqlite:///") :]) if uri.startswith("sqlite:///") else None
    if database is not None and not database.exists():  # nothing logged yet: never race to create it
        import pandas as pd

        return pd.DataFrame()
    # the lock reftlab's jobs take while they create the database (tracking.setup)
    with file_lock(database.with_name(f".{database.name}.lock")) if database else contextlib.nullcontext():
        mlflow.set_tracking_uri(uri)
        exp = mlflow.get_experiment_by_name(experiment)
    if exp is None:
        import pandas as pd

        return pd.DataFrame()
    found = mlflow.search_runs([exp.experiment_id])
    if sweeps or "tags.kind" not in found:
        return found
    return found[found["tags.kind"] != "sweep"].reset_index(drop=True)


PYTHON = sys.executable


def pytest_collection_modifyitems(config, items):
    """`slow`: tests that run whole jobs or sweeps (they use a tracking database) or load the
    bundled model; `make test-fast` (-m "not slow") runs the rest, the unit tests (README gives its measured time)."""
    for item in items:
        fixtures = set(getattr(item, "fixturenames", ()))
        if fixtures & {"mlflow_uri", "repos"} or "bundled" in item.name:
            item.add_marker(pytest.mark.slow)


@pytest.fixture(scope="session")
def tiny4():
    """The tiny random Llama with 4 layers (a stored prefix has real layers above it; GQA: 4 query /
    2 key-value heads), built once for the session, with 24 training examples and 16 test prompts."""
    import torch

    from reftlab import models
    from reftlab.data import recipes
    from reftlab.prompts import PromptBuilder

    cfg = compose("model=tiny_random", "model.num_layers=4")
    model, tokenizer, device, dtype = models.load_model_and_tokenizer(cfg.model)
    assert dtype == torch.float32
    dcfg = compose("data.max_train=24", "data.max_eval=16").data
    dcfg.path = str(ROOT / dcfg.path)
    prepared = recipes.prepare(dcfg)
    builder = PromptBuilder(tokenizer, dcfg.system_prompt, 64)
    examples = builder.examples(prepared.train["text"], prepared.train["label"])
    prompts = builder.prompts(prepared.eval["text"])
    return model, tokenizer, builder, examples, prompts
