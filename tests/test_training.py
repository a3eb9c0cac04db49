"""LoReFT on the tiny random model: training lowers the loss, parameters are counted exactly,
save/load gives identical predictions, padding does not change results."""

import numpy as np
import pytest
import torch
from conftest import compose

from reftlab import data, models, reft, training
from reftlab.prompts import PromptBuilder

SETTINGS = {"layer": 1, "component": "block_output", "rank": 4, "positions": "l1", "share_weights": False,
            "dropout": 0.0}  # fmt: skip


@pytest.fixture(scope="module")
def tiny():
    cfg = compose("model=tiny_random")
    model, tokenizer, device, dtype = models.load_model_and_tokenizer(cfg.model)
    assert dtype == torch.float32 and device == "cpu"
    dcfg = compose("data.max_train=32", "data.max_eval=16").data
    dcfg.path = str(__import__("conftest").ROOT / dcfg.path)
    prepared = data.prepare(dcfg)
    builder = PromptBuilder(tokenizer, dcfg.system_prompt, 64)
    return cfg, model, tokenizer, prepared, builder


def mean_loss(reft_model, settings, examples, pad_id):
    with torch.no_grad():
        return float(np.mean([training.batch_loss(reft_model, settings, examples[i : i + 8], pad_id, "cpu").item()
                              for i in range(0, len(examples), 8)]))  # fmt: skip


def test_training_lowers_the_loss(tiny):
    cfg, model, tokenizer, prepared, builder = tiny
    examples = builder.examples(prepared.train["text"], prepared.train["label"])
    torch.manual_seed(0)
    reft_model = reft.build(model, SETTINGS)
    before = mean_loss(reft_model, SETTINGS, examples, tokenizer.pad_token_id)
    trainer = compose("trainer.epochs=4", "trainer.lr=0.02").trainer
    result = training.train(reft_model, SETTINGS, examples, trainer, tokenizer.pad_token_id, "cpu", seed=0,
                            progress=False)  # fmt: skip
    after = mean_loss(reft_model, SETTINGS, examples, tokenizer.pad_token_id)
    assert result["steps"] == 4 * 4
    assert after < before - 0.05, (before, after)
    # The frozen model did not move: only the intervention trains.
    assert all(not p.requires_grad for p in model.parameters())


def test_trainable_parameters_are_exact(tiny):
    cfg, model, *_ = tiny
    d, r = model.config.hidden_size, 4
    # LoReFT: R (d x r, orthogonal) + W (d x r) + b (r).
    assert reft.count_trainable(reft.build(model, SETTINGS)) == 2 * d * r + r
    two_sided = {**SETTINGS, "positions": "f1+l1", "layer": [0, 1]}
    assert reft.count_trainable(reft.build(model, two_sided)) == 4 * (2 * d * r + r)
    tied = {**two_sided, "share_weights": True}
    assert reft.count_trainable(reft.build(model, tied)) == 2 * (2 * d * r + r)


def test_save_load_gives_identical_predictions(tiny, tmp_path):
    cfg, model, tokenizer, prepared, builder = tiny
    settings = {**SETTINGS, "positions": "f1+l1"}
    torch.manual_seed(1)
    reft_model = reft.build(model, settings)
    examples = builder.examples(prepared.train["text"], prepared.train["label"])
    trainer = compose("trainer.epochs=1", "trainer.lr=0.02").trainer
    training.train(
        reft_model, settings, examples, trainer, tokenizer.pad_token_id, "cpu", seed=0, progress=False
    )
    prompts = builder.prompts(prepared.eval["text"])
    args = (prompts, builder.yes_id, builder.no_id, tokenizer.pad_token_id, "cpu")
    before = training.predict(reft_model, settings, *args, progress=False)
    reft.save(reft_model, settings, tmp_path / "iv")
    fresh, _, _, _ = models.load_model_and_tokenizer(cfg.model)
    loaded, loaded_settings = reft.load(fresh, tmp_path / "iv")
    assert loaded_settings == settings
    after = training.predict(loaded, settings, *args, progress=False)
    np.testing.assert_array_equal(before, after)
    zero_shot = training.predict(fresh, settings, *args, progress=False)
    assert np.abs(zero_shot - before).max() > 1e-4  # the intervention changed something


def test_predictions_do_not_depend_on_batch_padding(tiny):
    cfg, model, tokenizer, prepared, builder = tiny
    torch.manual_seed(2)
    reft_model = reft.build(model, {**SETTINGS, "positions": "f2+l2"})
    settings = {**SETTINGS, "positions": "f2+l2"}
    prompts = builder.prompts(prepared.eval["text"])
    one = training.predict(reft_model, settings, prompts, builder.yes_id, builder.no_id, tokenizer.pad_token_id,
                           "cpu", batch_size=1, progress=False)  # fmt: skip
    many = training.predict(reft_model, settings, prompts, builder.yes_id, builder.no_id, tokenizer.pad_token_id,
                            "cpu", batch_size=16, progress=False)  # fmt: skip
    np.testing.assert_allclose(one, many, atol=1e-4)


def test_prompts_are_cut_to_max_length_and_keep_the_template(tiny):
    _, _, tokenizer, _, _ = tiny
    builder = PromptBuilder(tokenizer, "Is it deceptive?", 40)
    (prompt,) = builder.prompts(["word " * 500])
    assert len(prompt) == 40
    assert prompt[-len(builder.after) :] == builder.after
    assert tokenizer.decode(prompt).endswith("<|im_start|>assistant\n")
    with pytest.raises(ValueError, match="max_length=5"):
        PromptBuilder(tokenizer, "Is it deceptive?", 5)


def test_metrics_confusion_matrix():
    m = training.metrics(["Yes", "Yes", "No", "No"], np.array([1.0, -1.0, -2.0, 0.5]))
    assert (m["tp"], m["fn"], m["tn"], m["fp"]) == (1, 1, 1, 1)
    assert m["accuracy"] == 0.5 and m["yes_rate"] == 0.5


def test_components_exist_in_pyvene_llama_mapping():
    from pyvene.models.llama.modelings_intervenable_llama import llama_type_to_module_mapping

    from reftlab.positions import COMPONENTS

    assert set(COMPONENTS) <= set(llama_type_to_module_mapping)
