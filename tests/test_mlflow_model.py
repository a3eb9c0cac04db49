"""A run's MLflow model: load_model, `mlflow models predict` and `mlflow models serve` give what
predict.py gives, offline; the model is logged from code (nothing pickled) under the run's name, checks
its input, and can be registered by name with the run's results as tags."""

import json
import os
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import ROOT, compose, runs, tiny_overrides
from test_sweeps import free_port, wait_for_port

from reftlab import predict, pyfunc, run

MLFLOW = str(Path(sys.executable).parent / "mlflow")  # the environment's own CLI


def logged_model(run_id: str):
    """The one MLflow model a run logged (MLflow 3: a LoggedModel, URI models:/m-<id>)."""
    import mlflow

    client = mlflow.MlflowClient()
    experiment_id = client.get_run(run_id).info.experiment_id
    (model,) = client.search_logged_models([experiment_id], filter_string=f"source_run_id = '{run_id}'")
    return model


TEXTS = [
    "A lovely stay, the staff were kind.",
    "My family and I had the most amazing, luxurious, perfect time!!!",
    "",
]


def test_the_runs_mlflow_model_predicts_like_predict_py_everywhere(in_root, mlflow_uri, tmp_path):
    import mlflow

    cfg = compose(
        *tiny_overrides(f"mlflow.tracking_uri={mlflow_uri}", "mlflow.register_model=tiny-deception")
    )
    run.run(cfg, output_dir=tmp_path / "job")
    run_id = runs(mlflow_uri)["run_id"].iloc[0]
    want = predict.classify(tmp_path / "job" / "intervention", TEXTS)
    mlflow.set_tracking_uri(mlflow_uri)
    uri = logged_model(run_id).model_uri  # the run's one logged model, whatever its name
    info = mlflow.models.get_model_info(uri)
    assert [c["name"] for c in info.signature.inputs.to_dict()] == ["text"]
    assert {c["name"] for c in info.signature.outputs.to_dict()} == {"label", "p_yes"}
    # in Python
    got = mlflow.pyfunc.load_model(uri).predict(pd.DataFrame({"text": TEXTS}))
    assert list(got["label"]) == list(want["label"]) and np.allclose(got["p_yes"], want["p_yes"], atol=1e-6)
    # the serving command starts its web server by name: the environment's bin folder on PATH, as an
    # activated virtualenv has it (`source .venv/bin/activate`)
    env = {
        **os.environ,
        "MLFLOW_TRACKING_URI": mlflow_uri,
        "PATH": f"{Path(MLFLOW).parent}{os.pathsep}{os.environ['PATH']}",
    }
    # `mlflow models predict`, the current environment
    pd.DataFrame({"text": TEXTS}).to_csv(tmp_path / "texts.csv", index=False)
    done = subprocess.run([MLFLOW, "models", "predict", "-m", uri, "-i", str(tmp_path / "texts.csv"), "-t", "csv",
                           "-o", str(tmp_path / "out.json"), "--env-manager", "local"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    cli = pd.DataFrame(json.loads((tmp_path / "out.json").read_text())["predictions"])
    assert list(cli["label"]) == list(want["label"]) and np.allclose(cli["p_yes"], want["p_yes"], atol=1e-6)
    # `mlflow models serve` on the loopback address: one request
    port = free_port()
    server = subprocess.Popen([MLFLOW, "models", "serve", "-m", uri, "-h", "127.0.0.1", "-p", str(port),
                               "--env-manager", "local", "-w", "1"], cwd=ROOT, env=env, start_new_session=True,
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)  # fmt: skip
    try:
        wait_for_port(port, 120, server)
        body = json.dumps({"dataframe_split": {"columns": ["text"], "data": [[t] for t in TEXTS]}}).encode()
        request = urllib.request.Request(f"http://127.0.0.1:{port}/invocations", data=body,
                                         headers={"Content-Type": "application/json"})  # fmt: skip
        served = pd.DataFrame(json.loads(urllib.request.urlopen(request, timeout=120).read())["predictions"])
    finally:
        if server.poll() is None:
            os.killpg(server.pid, signal.SIGTERM)
            server.wait(30)
    assert list(served["label"]) == list(want["label"]) and np.allclose(
        served["p_yes"], want["p_yes"], atol=1e-6
    )
    # registered by name: version 1 points at this run's model
    (version,) = mlflow.MlflowClient().search_model_versions("name='tiny-deception'")
    assert version.run_id == run_id and int(version.version) == 1


def test_model_names_are_ones_mlflow_accepts():
    assert pyfunc.model_name("loreft-L15-r4-opinion_spam") == "loreft-L15-r4-opinion_spam"
    assert pyfunc.model_name("lora r8/lr:0.5 'x' 10%") == "lora-r8-lr-0-5-x-10"  # / : . ' % refused
    assert pyfunc.model_name("...") == "model"


# Logging as a run does, in a fresh process (MLflow's warnings are shown once per process): every
# warning and every MLflow log record while reftlab's model module is imported and the model logged.
LOG_IN_A_FRESH_PROCESS = """
import json, logging, sys, warnings
from pathlib import Path

uri, folder, tags = sys.argv[1], Path(sys.argv[2]), json.loads(sys.argv[3])
records = []
handler = logging.Handler()
handler.emit = lambda record: records.append(record.getMessage())
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    import mlflow
    logging.getLogger("mlflow").addHandler(handler)
    from reftlab import pyfunc, tracking

    mlflow.set_tracking_uri(uri)
    mlflow.set_experiment("reftlab")
    with mlflow.start_run(run_name=tags["run_name"]) as active:
        info = pyfunc.log(folder, tracking.package_versions(), "tiny-trusted",
                          name=pyfunc.model_name(tags["run_name"]), tags=tags)
said = [str(w.message) for w in caught] + records
print(json.dumps({"run_id": active.info.run_id, "model_uri": info.model_uri,
                  "version": str(info.registered_model_version), "said": said}))
"""


def test_the_model_is_logged_from_code_under_its_name_and_checks_its_input(in_root, mlflow_uri, tmp_path):
    import mlflow
    from mlflow.exceptions import MlflowException

    cfg = compose(*tiny_overrides(f"mlflow.tracking_uri={mlflow_uri}", "mlflow.log_model=false"))
    run.run(cfg, output_dir=tmp_path / "job")
    folder = tmp_path / "job" / "intervention"
    tags = {"val_accuracy": "0.823", "test_accuracy": "0.875", "run_name": "loreft-L1-r4 opinion_spam lr0.5"}
    done = subprocess.run([sys.executable, "-c", LOG_IN_A_FRESH_PROCESS, mlflow_uri, str(folder), json.dumps(tags)],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    logged = json.loads(done.stdout.strip().splitlines()[-1])
    # no "serialized using CloudPickle" and no "Add type hints to the `predict` method"
    said = "\n".join(logged["said"]) + done.stderr
    assert "cloudpickle" not in said.lower() and "type hint" not in said.lower(), said[-3000:]
    mlflow.set_tracking_uri(mlflow_uri)
    # found by the run it came from, named after it, tagged with its results; its URI is models:/m-...
    model = logged_model(logged["run_id"])
    assert model.name == "loreft-L1-r4-opinion_spam-lr0-5"
    assert model.model_uri == logged["model_uri"] and model.model_uri.startswith("models:/m-")
    assert {k: model.tags.get(k) for k in tags} == tags
    assert mlflow.models.get_model_info(f"runs:/{logged['run_id']}/{model.name}").model_id == model.model_id
    # from code: MLflow runs the logged pyfunc_model.py, there is no pickled Python object
    flavor = mlflow.models.Model.load(model.model_uri).flavors["python_function"]
    assert flavor["model_code_path"].endswith("pyfunc_model.py") and "python_model" not in flavor
    # predict.py's labels and probabilities
    loaded = mlflow.pyfunc.load_model(model.model_uri)
    want = predict.classify(folder, TEXTS)
    got = loaded.predict(pd.DataFrame({"text": TEXTS}), params={"batch_size": 2})
    assert list(got["label"]) == list(want["label"]) and np.allclose(got["p_yes"], want["p_yes"], atol=1e-6)
    # a frame without `text` is refused, naming the column
    with pytest.raises(MlflowException, match=r"missing inputs.*'text'"):
        loaded.predict(pd.DataFrame({"review": TEXTS}))
    # the registered version: this run's model, carrying the run's results
    version = mlflow.MlflowClient().get_model_version("tiny-trusted", logged["version"])
    assert version.run_id == logged["run_id"] and version.tags == tags
