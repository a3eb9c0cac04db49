"""Model loading: the bundled GGUF model really predicts text; the hub path loads a folder."""

import numpy as np
import pytest
import torch
from conftest import compose

from reftlab import methods, models, reft
from reftlab.engine import score
from reftlab.spec import COMPONENTS


@pytest.mark.slow  # the bundled model
def test_bundled_model_predicts_text():
    cfg = compose().model
    model, tokenizer, device, dtype = models.load_model_and_tokenizer(cfg)
    assert models.num_layers(model) == cfg.num_layers == 30
    assert (
        models.greedy_continuation(model, tokenizer, "The capital of France is").strip().startswith("Paris")
    )
    assert tokenizer.chat_template and tokenizer.padding_side == "left"
    assert models.bundled_gguf().suffix == ".gguf"
    converted = models.bundled_model_dir() / "config.json"
    assert "quantization_config" not in converted.read_text()  # plain weights, fast kernels


def test_hub_source_loads_a_saved_folder_like_a_hub_id(tmp_path):
    cfg = compose("model=tiny_random").model
    model, tokenizer, _, _ = models.load_model_and_tokenizer(cfg)
    model.save_pretrained(tmp_path / "m")
    tokenizer.save_pretrained(tmp_path / "m")
    hub = compose("model=llama3_8b_instruct", f"model.path={tmp_path / 'm'}", "model.dtype=float32",
                  "model.device=cpu").model  # fmt: skip
    loaded, loaded_tok, _, _ = models.load_model_and_tokenizer(hub)
    ids = torch.tensor([tokenizer("Hello there")["input_ids"]])
    with torch.no_grad():
        torch.testing.assert_close(model(ids).logits, loaded(ids).logits)
    assert loaded_tok.chat_template == tokenizer.chat_template


@pytest.mark.parametrize("dtype,expected", [("float32", torch.float32), ("bfloat16", torch.bfloat16)])
def test_dtype_settings(dtype, expected):
    assert models.resolve_dtype(dtype, "cpu") == expected
    with pytest.raises(ValueError, match="model.dtype='fp8' is not valid"):
        models.resolve_dtype("fp8", "cpu")


@pytest.mark.parametrize(
    "bf16,fp32,expected", [(900.0, 200.0, torch.bfloat16), (115.0, 289.0, torch.float32)]
)
def test_auto_dtype_follows_the_measured_speed_not_a_cpu_flag(bf16, fp32, expected, monkeypatch, tmp_path):
    monkeypatch.setenv("REFTLAB_CACHE", str(tmp_path))
    calls = []

    def fake(dtype, **_):
        calls.append(dtype)
        return {torch.bfloat16: bf16, torch.float32: fp32}[dtype]

    monkeypatch.setattr(models, "measure_matmul", fake)
    chosen, why = models.choose_dtype("auto", "cpu")
    assert chosen == expected and f"{bf16 / fp32:.2f}x fp32" in why
    assert models.choose_dtype("auto", "cpu")[0] == expected and len(calls) == 2  # measured once, then read
    assert (tmp_path / "dtype_probe.json").exists()


def test_matmul_probe_measures_both_dtypes_without_touching_the_seeded_generator():
    torch.manual_seed(3)
    expected = torch.rand(4)
    torch.manual_seed(3)
    assert models.measure_matmul(torch.float32, m=64, reps=1) > 0
    assert models.measure_matmul(torch.bfloat16, m=64, reps=1) > 0
    # a run's initialisation is the same with or without the probe
    assert torch.equal(torch.rand(4), expected)


@pytest.mark.parametrize("component", COMPONENTS)
def test_every_component_runs(tiny4, component):
    model, tokenizer = tiny4[:2]
    settings = {"method": "loreft", "layer": 0, "component": component, "rank": 2, "positions": "f1+l1"}
    torch.manual_seed(0)  # its own draw, not the generator's state after whatever test ran before
    reft_model = reft.build(model, settings)
    prompts = [tokenizer("a short text")["input_ids"], tokenizer("another, longer text here")["input_ids"]]
    args = (prompts, 1, 2, tokenizer.pad_token_id, "cpu")
    scores = score(reft_model, methods.get("loreft"), settings, *args, progress=False)
    frozen = score(model, methods.get("none"), settings, *args, progress=False)
    assert scores.shape == (2,) and np.isfinite(scores).all()
    # the intervention at this component reaches the output (a random LoReFT is not the identity)
    assert not np.allclose(scores, frozen, atol=1e-6)
