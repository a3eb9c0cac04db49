"""Every method on the tiny model: it trains, counts its parameters exactly, and saves weights its library loads."""

import pytest
from conftest import compose, runs, tiny_overrides

from reftlab import models, run

pytestmark = pytest.mark.slow  # every test runs a job

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


LISTED = ("intervention=loreft", "intervention.positions=f1+l1", "intervention.layer=[0,1]")


def test_multiple_layers_and_all(in_root, mlflow_uri, tmp_path, tiny_job):
    listed, *_ = tiny_job(*LISTED)  # the job whose weights pyreft loads below
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
    # the share of the frozen model's own parameters (peft's wrapper counts the adapters in too)
    frozen = sum(p.numel() for p in models.load_model_and_tokenizer(cfg.model)[0].parameters())
    assert metrics["trainable_percent"] == pytest.approx(100 * expected / frozen, rel=1e-9)
    (row,) = runs(mlflow_uri).to_dict("records")
    assert row["tags.method"] == "lora" and row["status"] == "FINISHED"


def test_zero_shot_logs_both_prompts_and_no_training(in_root, mlflow_uri, tmp_path):
    overrides = [o for o in tiny_overrides("intervention=none") if not o.startswith("intervention.layer")]
    metrics = run.run(compose(*overrides, f"mlflow.tracking_uri={mlflow_uri}"), output_dir=tmp_path / "none")
    assert metrics["train_seconds"] == 0 and metrics["trainable_params"] == 0
    assert 0 <= metrics["hint_accuracy"] <= 1 and 0 <= metrics["accuracy"] <= 1
    (row,) = runs(mlflow_uri).to_dict("records")
    assert row["tags.method"] == "none" and row["params.intervention.hint"].startswith("Answer with only")
    assert not isinstance(row.get("tags.unused_settings"), str)  # the hint is applied on Yes/No


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
def test_saved_weights_load_in_pyreft_and_peft_exactly_with_a_model_card(in_root, tmp_path, method, tiny_job):
    import numpy as np
    import torch

    from reftlab import models
    from reftlab.engine import score
    from reftlab.methods import get

    overrides = LISTED if method == "loreft" else ("intervention=lora",)  # jobs other tests read too
    metrics, job, mlflow_uri = tiny_job(*overrides)
    cfg = compose(*tiny_overrides(*overrides))
    folder = job / "intervention"
    model, tok, *_ = models.load_model_and_tokenizer(cfg.model)
    ours, settings = get(method).load(model, folder)
    if method == "loreft":  # pyreft's own loader on the pyreft/ layout: same fp32 weights, same answers
        import zipfile

        from reftlab.hf_compat import pyreft

        unzipped = tmp_path / "from_zip"  # what an MLflow artifact download gives: pyreft.zip
        zipfile.ZipFile(folder / "pyreft.zip").extractall(unzipped)
        assert sorted(p.name for p in unzipped.iterdir()) == sorted(
            p.name for p in (job / "intervention_pyreft").iterdir()
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
    mine = score(ours, get(method), settings, *args, progress=False)
    assert np.array_equal(mine, score(theirs, get(method), settings, *args, progress=False))
    # the model card says what it is, on which data version, how well it did, and the data's license
    readme = (folder / "README.md").read_text()
    row = runs(mlflow_uri).iloc[0]
    assert f"# {method} on opinion_spam" in readme and row["tags.data_version"] in readme
    assert f"{100 * metrics['accuracy']:.1f}%" in readme and f"{100 * metrics['val_accuracy']:.1f}%" in readme
    assert (
        "CC BY-NC-SA 3.0" in readme
        and ("pyreft.ReftModel.load" if method == "loreft" else "PeftModel") in readme
    )


def test_dora_adds_a_magnitude_per_adapted_output_and_reloads_in_peft(tiny4, tmp_path):
    """DoRA = LoRA's A and B plus one magnitude per output feature of each adapted weight (peft's
    use_dora), and its saved folder loads back to the same outputs."""
    import torch

    from reftlab import methods

    model = tiny4[0]
    cfg = compose("model=tiny_random", "model.num_layers=4", "intervention=dora", "intervention.layer=[1]")
    dora = methods.get("dora")
    settings = dora.settings(cfg, 4)
    trained = dora.build(model, settings).eval()  # no dropout
    names = [n for n, p in trained.named_parameters() if p.requires_grad]
    # r=8 on q_proj (32 -> 32) and v_proj (32 -> 16) of layer 1: LoRA's A, B and DoRA's magnitudes
    assert (
        sum(p.numel() for p in trained.parameters() if p.requires_grad)
        == 8 * (32 + 32) + 8 * (32 + 16) + 32 + 16
    )
    assert any("magnitude" in n for n in names)
    with torch.no_grad():
        for p in trained.parameters():
            if p.requires_grad:
                p.add_(0.01)
        ids = torch.tensor([[1, 2, 3, 4]])
        before = trained(input_ids=ids).logits
        dora.save(trained, settings, tmp_path / "dora")
        trained.unload()  # the frozen model back as it was
        again, saved = dora.load(model, tmp_path / "dora")
        again.eval()
        assert saved["use_dora"] is True
        assert torch.allclose(again(input_ids=ids).logits, before, atol=1e-5)
        again.unload()
