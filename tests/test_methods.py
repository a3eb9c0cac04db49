"""Every method on the tiny model, exact trainable-parameter counts, predict, and the report."""

import subprocess

import mlflow
import pandas as pd
import pytest
from conftest import PYTHON, ROOT, compose, runs, tiny_overrides

from reftlab import report, run

D = 32  # tiny_random hidden size; 4 heads of 8 -> q 32 wide, 2 KV heads -> v 16 wide
R = 4

EXPECTED_PARAMS = {
    "loreft": 2 * D * R + R,  # R (d x r) + W (d x r) + b
    "noreft": 2 * D * R + 2 * R,  # W1 + b1, W2 + b2 (pyreft adds a bias to the projection)
    "direft": 2 * D * R + 2 * R,
    "consreft": D * R + R,  # R + constant b
}


@pytest.mark.parametrize("method", sorted(EXPECTED_PARAMS))
def test_reft_methods_train_and_count_parameters_exactly(method, in_root, mlflow_uri, tmp_path):
    cfg = compose(
        *tiny_overrides(f"intervention={method}", "intervention.layer=1", f"mlflow.tracking_uri={mlflow_uri}")
    )
    metrics = run.run(cfg, output_dir=tmp_path / method)
    assert metrics["trainable_params"] == EXPECTED_PARAMS[method]
    (row,) = runs(mlflow_uri).to_dict("records")
    assert row["status"] == "FINISHED" and row["tags.method"] == method


def test_multiple_layers_and_all(in_root, mlflow_uri, tmp_path):
    listed = run.run(compose(*tiny_overrides("intervention.layer=[0,1]", "intervention.positions=f1+l1",
                                             f"mlflow.tracking_uri={mlflow_uri}")), output_dir=tmp_path / "a")  # fmt: skip
    assert listed["trainable_params"] == 4 * EXPECTED_PARAMS["loreft"]  # 2 layers x (prefix, suffix)
    every = run.run(compose(*tiny_overrides("intervention.layer=all", "intervention.positions=f1+l1",
                                            "intervention.share_weights=true", f"mlflow.tracking_uri={mlflow_uri}")),
                    output_dir=tmp_path / "b")  # fmt: skip
    assert every["trainable_params"] == 2 * EXPECTED_PARAMS["loreft"]  # 2 layers, tied prefix/suffix


@pytest.mark.parametrize(
    "layers,expected",
    [("null", 2 * (8 * D + D * 8 + 8 * D + 16 * 8)), ("[1]", 8 * D + D * 8 + 8 * D + 16 * 8)],
)
def test_lora_counts_parameters_exactly(layers, expected, in_root, mlflow_uri, tmp_path):
    # r=8 on q_proj (32 -> 32) and v_proj (32 -> 16): A is r x in, B is out x r, per layer.
    cfg = compose(
        *tiny_overrides(
            "intervention=lora", f"intervention.layer={layers}", f"mlflow.tracking_uri={mlflow_uri}"
        )
    )
    metrics = run.run(cfg, output_dir=tmp_path / "lora")
    assert metrics["trainable_params"] == expected
    (row,) = runs(mlflow_uri).to_dict("records")
    assert row["tags.method"] == "lora" and row["status"] == "FINISHED"


def test_zero_shot_logs_both_prompts_and_no_training(in_root, mlflow_uri, tmp_path):
    overrides = [o for o in tiny_overrides("intervention=none") if not o.startswith("intervention.layer")]
    metrics = run.run(compose(*overrides, f"mlflow.tracking_uri={mlflow_uri}"), output_dir=tmp_path / "none")
    assert metrics["train_seconds"] == 0 and metrics["trainable_params"] == 0
    assert 0 <= metrics["hint_accuracy"] <= 1 and 0 <= metrics["accuracy"] <= 1
    assert runs(mlflow_uri)["tags.method"].tolist() == ["none"]


def test_tfidf_baseline_on_the_same_split(in_root, mlflow_uri, tmp_path):
    cfg = compose("intervention=tfidf", f"mlflow.tracking_uri={mlflow_uri}")
    metrics = run.run(cfg, output_dir=tmp_path / "tfidf")
    assert metrics["accuracy"] > 0.8  # the published ~90% on this corpus; far above chance
    assert metrics["eval_examples"] == 320 and metrics["trainable_params"] > 1000
    (row,) = runs(mlflow_uri).to_dict("records")
    assert row["tags.method"] == "tfidf" and row["status"] == "FINISHED" and row["tags.data_version"]


def test_bad_lora_module_is_named(in_root, mlflow_uri, tmp_path):
    cfg = compose(
        "intervention=lora", "intervention.target_modules=[q_proj,qkv]", f"mlflow.tracking_uri={mlflow_uri}"
    )
    with pytest.raises(ValueError, match=r"target_modules=\['qkv'\] is not valid: choose from q_proj"):
        run.run(cfg, output_dir=tmp_path / "bad")
    assert runs(mlflow_uri)["status"].tolist() == ["FAILED"]


@pytest.mark.parametrize("method", ["loreft", "lora"])
def test_predict_round_trip(method, in_root, mlflow_uri, tmp_path):
    cfg = compose(*tiny_overrides(f"intervention={method}", f"mlflow.tracking_uri={mlflow_uri}"))
    run.run(cfg, output_dir=tmp_path / "job")
    saved = pd.read_parquet(tmp_path / "job" / "predictions.parquet")
    texts = tmp_path / "texts.csv"
    saved[["text"]].to_csv(texts, index=False)
    run_id = runs(mlflow_uri)["run_id"].iloc[0]
    out = subprocess.run([PYTHON, "predict.py", "--run", run_id, "--tracking-uri", mlflow_uri, "--input", str(texts),
                          "--output", str(tmp_path / "p.csv")], cwd=ROOT, capture_output=True, text=True, timeout=300)  # fmt: skip
    assert out.returncode == 0, out.stderr[-2000:]
    predicted = pd.read_csv(tmp_path / "p.csv")
    assert list(predicted["label"]) == list(saved["prediction"])
    pd.testing.assert_series_equal(predicted["p_yes"], saved["p_yes"], check_names=False, atol=1e-6)
    lines = out.stdout.strip().splitlines()
    assert len(lines) == len(saved) and lines[0].split("\t")[0] in ("Yes", "No")
    stdin = subprocess.run([PYTHON, "predict.py", "--path", str(tmp_path / "job" / "intervention")], input="a text\nanother\n",
                           cwd=ROOT, capture_output=True, text=True, timeout=300)  # fmt: skip
    assert stdin.returncode == 0 and len(stdin.stdout.strip().splitlines()) == 2


def fake_run(method, accuracy, layer=None, rank=None, seed=1, params=100, seconds=10.0, status="FINISHED",
             val=None, lr=0.004, data="d1", budget=None):  # fmt: skip
    """A run logged the way run.py logs one (params, tags, metrics), with chosen numbers."""
    with mlflow.start_run() as active:
        mlflow.set_tags({"method": method, "data_hash": data, "model": "tiny"})
        mlflow.log_params({"intervention.method": method, "intervention.layer": layer, "intervention.rank": rank,
                           "trainer.lr": lr, "seed": seed, "mlflow.experiment": "x", "run_name": f"r{seed}"})  # fmt: skip
        mlflow.log_params(
            {"data.max_train": None, "trainer.max_length": 512, "trainer.epochs": 5, **(budget or {})}
        )
        if status == "FINISHED":
            tp = round(accuracy * 50)
            mlflow.log_metrics({"accuracy": accuracy, "val_accuracy": accuracy if val is None else val,
                                "f1": accuracy, "trainable_params": params, "train_seconds": seconds,
                                "peak_memory_mb": 1000.0, "trainable_percent": 0.01,
                                "tp": tp, "fn": 50 - tp, "tn": tp, "fp": 50 - tp})  # fmt: skip
        else:
            mlflow.set_tag("error", "ConfigError: boom")
            mlflow.end_run(status=status)
    return active.info.run_id


def test_report_on_synthetic_runs(tmp_path, mlflow_uri):
    mlflow.set_tracking_uri(mlflow_uri)
    mlflow.set_experiment("cmp")
    for seed, acc in ((1, 0.70), (2, 0.74)):
        fake_run("loreft", acc, layer=15, rank=4, seed=seed, params=4612, seconds=300)
        fake_run("lora", acc - 0.02, layer="None", rank=8, seed=seed, params=460800, seconds=420)
    fake_run("loreft", 0.66, layer=8, rank=4, params=4612, seconds=300)
    fake_run("none", 0.52, params=0, seconds=0)
    fake_run("tfidf", 0.90, params=50000, seconds=2)
    failed = fake_run("loreft", 0, layer=99, rank=4, status="FAILED")
    out = tmp_path / "report"
    assert report.main(["--experiment", "cmp", "--tracking-uri", mlflow_uri, "--out", str(out)]) == 0
    md = (out / "report.md").read_text()
    # 95% CI over 2 seeds: t(0.975, 1) * sd / sqrt(2) = 12.706 * 0.0283 / 1.414 = 25.4 points
    assert "72.0% ± 25.4" in md and "| LoReFT | 15 | 2 |" in md
    # rank is fixed per method (LoReFT 4, LoRA 8): no column, no plot; listed under each method
    assert "## LoRA settings\n\n- `intervention.rank` = 8" in md
    assert "## LoReFT settings\n\n- `intervention.rank` = 4" in md
    assert failed in md and "ConfigError: boom" in md  # failed runs are listed
    assert all(m in md for m in ("LoReFT", "LoRA", "zero-shot", "TF-IDF"))
    assert "4,612" in md and "460,800" in md and "300 s" in md  # counts as integers, seconds rounded
    html = (out / "report.html").read_text()
    assert (
        "<style>" in html and "<table>" in html and "4612.0" not in html and "0.72000" not in html
    )  # formatted
    # Only the plots of what varies within a method: the layer; and parameters and train times.
    plots = sorted(p.name for p in out.glob("*.png"))
    assert plots == [
        "accuracy_vs_layer.png",
        "accuracy_vs_train_time.png",
        "accuracy_vs_trainable_params.png",
    ]
    table = runs(mlflow_uri, "cmp")
    summary = table[table.get("tags.kind") == "report"]
    assert len(summary) == 1
    client = mlflow.tracking.MlflowClient(mlflow_uri)
    logged = {a.path for a in client.list_artifacts(summary["run_id"].iloc[0], "report")}
    assert "report/report.html" in logged and "report/accuracy_vs_layer.png" in logged


def test_report_chooses_on_validation_never_on_test(tmp_path, mlflow_uri):
    """Layer 8 is best on test, layer 15 on validation: the report must choose 15 and say so."""
    mlflow.set_tracking_uri(mlflow_uri)
    mlflow.set_experiment("sel")
    for seed in (1, 2, 3):
        fake_run("loreft", 0.90, layer=8, rank=4, seed=seed, val=0.70)
        fake_run("loreft", 0.80, layer=15, rank=4, seed=seed, val=0.85)
        fake_run("loreft", 0.75, layer=22, rank=4, seed=seed, val=0.80)
    result = report.write(report.load_runs("sel", mlflow_uri), tmp_path / "r", "sel")
    chosen = result["table"].loc[result["chosen"]["overall"]]
    assert chosen["intervention.layer"] == "15" and chosen["accuracy"] == pytest.approx(0.80)
    md = (tmp_path / "r" / "report.md").read_text()
    assert "**Chosen on the validation split**" in md and "layer=15" in md
    assert "| **15** | **3** |" in md  # the chosen row is bold, not the test-best layer 8
    assert "| 8 | 3 |" in md


def test_reference_lines_from_other_experiments_only_at_the_same_budget(tmp_path, mlflow_uri):
    """LoRA and TF-IDF from another experiment are drawn beside a LoReFT ablation only where they
    saw the same data caps and prompt length (and, LoRA, trained as many epochs)."""
    mlflow.set_tracking_uri(mlflow_uri)
    mlflow.set_experiment("other")
    small = {"data.max_train": 512, "trainer.max_length": 256, "trainer.epochs": 2}
    fake_run("lora", 0.66, rank=8, val=0.99, budget=small)  # best on validation, but a smaller budget
    fake_run("tfidf", 0.85, val=0.99, budget=small)
    fake_run("lora", 0.81, rank=8, val=0.80)  # the same budget as the ablation
    fake_run("tfidf", 0.88, val=0.86, budget={"trainer.epochs": 1})  # TF-IDF has no epochs
    fake_run("lora", 0.77, rank=8, val=0.95, budget={"trainer.epochs": 1})  # LoRA trained less
    mlflow.set_experiment("abl")
    for layer in (3, 15):
        fake_run("loreft", 0.80, layer=layer, rank=4)
    others = report.baseline_runs({"d1"})
    report.write(report.load_runs("abl", mlflow_uri), tmp_path / "r", "abl", others)
    md = (tmp_path / "r" / "report.md").read_text()
    line = next(x for x in md.splitlines() if x.startswith("Reference lines:"))
    assert "LoRA (best by validation) 81.0%" in line and "TF-IDF 88.0%" in line
    assert "66.0%" not in line and "85.0%" not in line and "77.0%" not in line


def test_report_groups_every_differing_setting_and_counts_duplicates_once(tmp_path, mlflow_uri):
    mlflow.set_tracking_uri(mlflow_uri)
    mlflow.set_experiment("grp")
    fake_run("loreft", 0.60, layer=15, rank=4, seed=1, lr=0.004)
    fake_run("loreft", 0.90, layer=15, rank=4, seed=1, lr=0.02)  # another learning rate: not a seed
    fake_run("loreft", 0.70, layer=15, rank=4, seed=1, lr=0.004, data="d2")  # other data: not a seed
    fake_run("loreft", 0.64, layer=15, rank=4, seed=2, lr=0.004)
    # the same seed again: counts once (latest); its data license (logged by newer runs) splits nothing
    fake_run("loreft", 0.66, layer=15, rank=4, seed=2, lr=0.004, budget={"data.license": "CC BY-NC-SA 3.0"})
    result = report.write(report.load_runs("grp", mlflow_uri), tmp_path / "r", "grp")
    assert result["keys"] == ["trainer.lr", "data"]
    table = result["table"].set_index(["trainer.lr", "data"])
    assert table.loc[("0.004", "d1"), "seeds"] == 2
    assert table.loc[("0.004", "d1"), "accuracy"] == pytest.approx((0.60 + 0.66) / 2)
    assert table.loc[("0.02", "d1"), "seeds"] == 1 and table.loc[("0.004", "d2"), "seeds"] == 1
    assert (tmp_path / "r" / "accuracy_vs_learning_rate.png").exists()
    assert not (tmp_path / "r" / "accuracy_vs_layer.png").exists()


def test_reft_vs_lora_preset_is_one_command(tmp_path, mlflow_uri):
    out = subprocess.run(
        [PYTHON, "train.py", "experiment=reft_vs_lora", "model=tiny_random", "model.num_layers=16", "data.max_train=16",
         "data.max_val=16", "data.max_eval=16", "trainer.max_length=64", "trainer.epochs=1",
         "trainer.lr=1e-3,4e-3", "seed=1,2",
         f"mlflow.tracking_uri={mlflow_uri}", f"hydra.sweep.dir={tmp_path / 'sweep'}"],
        cwd=ROOT, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    # none and tfidf depend on neither the seed nor the learning rate: run once each
    assert "16 jobs: 10 finished, 0 failed, 6 skipped" in out.stderr
    table = runs(mlflow_uri, "reft_vs_lora")
    assert sorted(table["tags.method"]) == ["lora"] * 4 + ["loreft"] * 4 + ["none", "tfidf"]
    result = report.write(report.load_runs("reft_vs_lora", mlflow_uri), tmp_path / "r", "r")
    table = result["table"]
    chosen = result["chosen"]["per_method"]
    for method in ("loreft", "lora"):  # each method's learning rate is its best on validation
        rows = table[table["method"] == method]
        assert table.loc[chosen[method], "val_accuracy"] == rows["val_accuracy"].max()
    text = (tmp_path / "r" / "report.md").read_text()
    for method in ("loreft", "lora"):  # each method's best is marked; the overall choice as chosen
        if chosen[method] != result["chosen"]["overall"]:
            assert f"best {report.method_name(method)} (validation)" in text
    assert "**chosen** (best validation)" in text
    for method in ("none", "tfidf"):  # no learning rate: shown as "-", not the grid's first value
        assert table.loc[table["method"] == method, "trainer.lr"].tolist() == ["-"]


@pytest.mark.parametrize("method", ["loreft", "lora"])
def test_saved_weights_load_in_pyreft_and_peft_exactly_with_a_model_card(
    in_root, mlflow_uri, tmp_path, method
):
    import numpy as np
    import torch

    from reftlab import models, training
    from reftlab.methods import get

    extra = ["intervention.positions=f1+l1", "intervention.layer=[0,1]"] if method == "loreft" else []
    cfg = compose(*tiny_overrides(f"intervention={method}", f"mlflow.tracking_uri={mlflow_uri}", *extra))
    metrics = run.run(cfg, output_dir=tmp_path / "job")
    folder = tmp_path / "job" / "intervention"
    model, tok, *_ = models.load_model_and_tokenizer(cfg.model)
    ours, settings = get(method).load(model, folder)
    if method == "loreft":  # pyreft's own loader on the pyreft/ layout: same fp32 weights, same answers
        import zipfile

        from reftlab.hf_compat import pyreft

        unzipped = tmp_path / "from_zip"  # what an MLflow artifact download gives: pyreft.zip
        zipfile.ZipFile(folder / "pyreft.zip").extractall(unzipped)
        assert sorted(p.name for p in unzipped.iterdir()) == sorted(
            p.name for p in (tmp_path / "job" / "intervention_pyreft").iterdir()
        )
        theirs = pyreft().ReftModel.load(str(unzipped), model)
        a = [t for iv in ours.interventions.values() for t in iv.state_dict().values()]
        b = [t for iv in theirs.interventions.values() for t in iv.state_dict().values()]
    else:  # peft's own loader on a fresh copy of the base model
        from peft import PeftModel

        fresh, *_ = models.load_model_and_tokenizer(cfg.model)
        theirs = PeftModel.from_pretrained(fresh, str(folder))
        a = [p for n, p in ours.named_parameters() if "lora_" in n]
        b = [p for n, p in theirs.named_parameters() if "lora_" in n]
    assert len(a) == len(b) > 0 and all(
        x.dtype == torch.float32 and torch.equal(x, y) for x, y in zip(a, b, strict=True)
    )
    prompts = [tok(t)["input_ids"] for t in ("a short text", "another, longer text here")]
    args = (prompts, 1, 2, tok.pad_token_id, "cpu")
    mine = training.predict(ours, settings, *args, progress=False)
    assert np.array_equal(mine, training.predict(theirs, settings, *args, progress=False))
    # the model card says what it is, on which data version, how well it did, and the data's license
    readme = (folder / "README.md").read_text()
    row = runs(mlflow_uri).iloc[0]
    assert f"# {method} on opinion_spam" in readme and row["tags.data_version"] in readme
    assert f"{100 * metrics['accuracy']:.1f}%" in readme and f"{100 * metrics['val_accuracy']:.1f}%" in readme
    assert (
        "CC BY-NC-SA 3.0" in readme
        and ("pyreft.ReftModel.load" if method == "loreft" else "PeftModel") in readme
    )
