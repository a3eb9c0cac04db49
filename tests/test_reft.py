"""pyreft interventions (reftlab.reft): parameters counted exactly, save/load gives identical predictions."""

import numpy as np
import torch
from conftest import compose

from reftlab import methods, models, reft
from reftlab.engine import Engine, score

SETTINGS = {"method": "loreft", "layer": 1, "component": "block_output", "rank": 4, "positions": "l1",
            "share_weights": False, "dropout": 0.0}  # fmt: skip


def test_trainable_parameters_are_exact(tiny4):
    model = tiny4[0]
    d, r = model.config.hidden_size, 4
    # LoReFT: R (d x r, orthogonal) + W (d x r) + b (r).
    assert reft.count_trainable(reft.build(model, SETTINGS)) == 2 * d * r + r
    two_sided = {**SETTINGS, "positions": "f1+l1", "layer": [0, 1]}
    assert reft.count_trainable(reft.build(model, two_sided)) == 4 * (2 * d * r + r)
    tied = {**two_sided, "share_weights": True}
    assert reft.count_trainable(reft.build(model, tied)) == 2 * (2 * d * r + r)


def test_save_load_gives_identical_predictions(tiny4, tmp_path):
    model, tokenizer, builder, examples, prompts = tiny4
    settings = {**SETTINGS, "positions": "f1+l1"}
    method = methods.get("loreft")
    torch.manual_seed(1)
    reft_model = reft.build(model, settings)
    trainer = compose("trainer.epochs=1", "trainer.lr=0.02", "trainer.cache=off").trainer
    Engine(reft_model, method, settings, trainer, tokenizer.pad_token_id, store=None, progress=False).train(
        examples, 0
    )
    args = (prompts, builder.yes_id, builder.no_id, tokenizer.pad_token_id, "cpu")
    before = score(reft_model, method, settings, *args, progress=False)
    reft.save(reft_model, settings, tmp_path / "iv")
    fresh, _, _, _ = models.load_model_and_tokenizer(compose("model=tiny_random", "model.num_layers=4").model)
    loaded, loaded_settings = reft.load(fresh, tmp_path / "iv")
    assert loaded_settings == settings
    after = score(loaded, method, settings, *args, progress=False)
    np.testing.assert_array_equal(before, after)
    zero_shot = score(fresh, methods.get("none"), settings, *args, progress=False)
    assert np.abs(zero_shot - before).max() > 1e-4  # the intervention changed something
