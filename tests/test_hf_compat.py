"""Each dependence on library internals (reftlab.hf_compat) checked on a tiny model: when
transformers, pyreft or pyvene change under one of them, the test that names it fails."""

import inspect

import pytest
import torch
from conftest import compose

from reftlab import hf_compat, models


@pytest.fixture(scope="module")
def tiny():
    model, tokenizer, _, _ = models.load_model_and_tokenizer(compose("model=tiny_random").model)
    return model, tokenizer


def test_pyreft_imports_quietly_with_what_reftlab_uses(capsys):
    module = hf_compat.pyreft()
    for name in ("LoreftIntervention", "NoreftIntervention", "NodireftIntervention", "ConsreftIntervention",
                 "get_reft_model", "ReftConfig", "ReftTrainerForCausalLM", "ReftDataCollator"):  # fmt: skip
        assert hasattr(module, name), name
    assert "nnsight" not in capsys.readouterr().out


def test_decoder_layers_take_the_cache_by_the_keyword_we_pass(tiny):
    model, _ = tiny
    for forward in (model.model.forward, model.model.layers[0].forward):
        assert hf_compat.cache_kwarg(forward) in inspect.signature(forward).parameters


def test_dynamic_cache_holds_rotated_keys_values_per_layer(tiny):
    model, _ = tiny
    ids = torch.arange(5, 12)[None]
    kv = hf_compat.new_kv_cache(model.config)
    with torch.no_grad():
        model.model(input_ids=ids, use_cache=True, **{hf_compat.cache_kwarg(model.model.forward): kv})
    cfg = model.config
    keys, values = hf_compat.cached_keys_values(kv, cfg.num_hidden_layers - 1)
    assert keys.shape == values.shape == (1, cfg.num_key_value_heads, 7, models.head_dim(cfg))


def test_layer_output_and_rotary_embeddings(tiny):
    model, _ = tiny
    h = torch.randn(1, 3, model.config.hidden_size)
    positions = torch.arange(3)[None]
    cos, sin = hf_compat.rotary(model.model, h, positions)
    out = model.model.layers[0](
        h, attention_mask=None, position_ids=positions, position_embeddings=(cos, sin)
    )
    assert hf_compat.layer_output(out).shape == h.shape


def test_registered_attention_is_used_inside_the_context_and_restored(tiny):
    model, _ = tiny
    calls = []

    def spy(module, query, key, value, attention_mask, scaling, dropout=0.0, **kwargs):
        from transformers.integrations.sdpa_attention import sdpa_attention_forward

        calls.append(query.shape)
        return sdpa_attention_forward(
            module, query, key, value, attention_mask, scaling=scaling, dropout=dropout
        )

    hf_compat.register_attention("reftlab_test_spy", spy)
    before = model.config._attn_implementation
    ids = torch.arange(5, 12)[None]
    with torch.no_grad():
        want = model(input_ids=ids).logits
        with hf_compat.attention_implementation(model, "reftlab_test_spy"):
            got = model(input_ids=ids).logits
    assert len(calls) == model.config.num_hidden_layers
    assert model.config._attn_implementation == before
    torch.testing.assert_close(got, want)


def test_contiguous_lm_head_keeps_the_logits(tiny):
    model, _ = tiny
    head = model.get_output_embeddings()
    assert type(head).__name__ == "ContiguousLinear"  # swapped at load
    x = torch.randn(2, 6, model.config.hidden_size)[:, -3:]  # a strided view, as logits_to_keep slices
    torch.testing.assert_close(head(x), torch.nn.functional.linear(x.contiguous(), head.weight))


def test_reft_trainer_accepts_num_items_in_batch():
    trainer = hf_compat.reft_trainer_class()
    assert "num_items_in_batch" in inspect.signature(trainer.compute_loss).parameters
    assert issubclass(trainer, hf_compat.pyreft().ReftTrainerForCausalLM)


def test_plain_copy_drops_the_gguf_quantization_config_and_keeps_the_weights(tiny):
    model, _ = tiny
    model.config.quantization_config = {"quant_method": "gguf"}
    try:
        copy = hf_compat.plain_copy_of_gguf_model(model)
    finally:
        model.config.__dict__.pop("quantization_config", None)
    assert not hasattr(copy.config, "quantization_config")
    for (name, a), (_, b) in zip(model.state_dict().items(), copy.state_dict().items(), strict=True):
        assert torch.equal(a.float(), b), name


@pytest.mark.parametrize("shape", [(576, 32), (16, 4), (4, 16), (9, 1)])
def test_the_fast_orthogonal_map_gives_torchs_weights_and_gradients(shape):
    from torch.nn.utils.parametrizations import orthogonal

    torch.manual_seed(0)
    layer = orthogonal(torch.nn.Linear(shape[1], shape[0], bias=False))
    original = layer.parametrizations.weight.original
    with torch.no_grad():  # away from the initial point, where every reflector is trivial
        original.add_(0.3 * torch.randn_like(original))
    upstream = torch.randn(shape)
    want = layer.weight.detach().clone()
    (layer.weight * upstream).sum().backward()
    want_grad, original.grad = original.grad.clone(), None
    hf_compat.fast_orthogonal(layer)
    assert type(layer.parametrizations.weight[0]).__name__ == "FastOrthogonal"
    have = layer.weight
    (have * upstream).sum().backward()
    assert torch.allclose(have, want, atol=1e-6)
    assert torch.allclose(original.grad, want_grad, atol=1e-5 * want_grad.abs().max().item())


def test_a_loreft_intervention_gets_the_fast_orthogonal_map(tiny):
    from reftlab import reft

    trained = reft.build(
        tiny[0],
        {
            "method": "loreft",
            "layer": 1,
            "rank": 2,
            "positions": "l1",
            "component": "block_output",
            "dropout": 0.0,
            "share_weights": False,
        },
    )
    (iv,) = reft.interventions(trained)
    assert type(iv.rotate_layer.parametrizations.weight[0]).__name__ == "FastOrthogonal"


def test_outputs_of_collects_a_modules_outputs_through_pyvenes_hook_clearing(tiny):
    """Generation reads the prompt pass's final norm output through pyreft (which removes every
    forward hook on each call); the wrapper collects it, equals the body's last hidden state, and the
    module is left as it was."""
    from reftlab import reft

    model, _ = tiny
    trained = reft.build(model, {"method": "loreft", "layer": 1, "component": "block_output", "rank": 2,
                                 "positions": "l1", "share_weights": False, "dropout": 0.0})  # fmt: skip
    with torch.no_grad():
        for iv in reft.interventions(trained):
            iv.learned_source.weight.copy_(iv.rotate_layer.weight.T)  # identity: the frozen model's states
            iv.learned_source.bias.zero_()
    ids = torch.arange(5, 12)[None]
    norm = model.model.norm
    with torch.no_grad(), hf_compat.outputs_of(norm) as captured:
        trained(
            {"input_ids": ids, "attention_mask": torch.ones_like(ids)},
            unit_locations={"sources->base": (None, [[[6]]])},
        )
    assert len(captured) == 1 and "forward" not in vars(norm)
    with torch.no_grad():
        want = model.model(input_ids=ids).last_hidden_state
    torch.testing.assert_close(captured[0], want, rtol=1e-5, atol=1e-5)
