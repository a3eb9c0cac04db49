"""A run's MLflow model: load_model, `mlflow models predict` and `mlflow models serve` give what
predict.py gives, offline; the model can be registered by name."""

import json
import os
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path

import numpy as np
import pandas as pd
from conftest import ROOT, compose, runs, tiny_overrides
from test_sweeps import free_port, wait_for_port

from reftlab import predict, run

MLFLOW = str(Path(sys.executable).parent / "mlflow")  # the environment's own CLI
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
    uri = f"runs:/{run_id}/model"
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
