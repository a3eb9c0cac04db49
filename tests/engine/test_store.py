"""The stored prefix: built in one pass, kept on disk by key within its bound, and a cache from a
lower point serves a higher one exactly."""

import numpy as np
import pytest
import torch

from reftlab.engine import prefix, store
from reftlab.engine.plan import train_inputs
from reftlab.engine.suffix import advance


def test_disk_store_round_trip_key_and_bound(tiny4, tmp_path):
    model, tokenizer, _, examples, _ = tiny4
    seqs, suffix = train_inputs(examples, 1)
    a = prefix.build(model, 2, seqs, suffix, tokenizer.pad_token_id, progress=False)
    key = store.cache_key(model, seqs, suffix, {})
    # other tokens (another max length, prompt or data version): another key; the layer is not in it
    assert key != store.cache_key(model, [s[1:] for s in seqs], suffix, {})
    assert key != store.cache_key(model, seqs, suffix, {"role": "eval"})
    disk = store.DiskStore(tmp_path, int(a.nbytes * 1.5))
    assert disk.save(key, a)
    b = disk.load(key, "cpu")
    assert torch.equal(a.keys, b.keys) and torch.equal(a.hidden, b.hidden)
    assert np.array_equal(a.prefix_len, b.prefix_len)
    # an entry from point 2 serves points 2 and above, not 1; nor a job whose memory bound it exceeds
    assert disk.load(key, "cpu", start=3) is not None and disk.load(key, "cpu", start=1) is None
    assert disk.load(key, "cpu", max_bytes=a.nbytes // 2) is None
    # a second entry does not fit beside the first: the older one is removed
    other = store.cache_key(model, seqs, suffix, {"role": "other"})
    assert disk.save(other, a)
    assert disk.load(key, "cpu") is None and disk.load(other, "cpu") is not None
    # larger than the whole bound: not written
    assert not store.DiskStore(tmp_path / "small", a.nbytes // 2).save(key, a)


def test_a_cache_from_a_lower_point_serves_a_higher_one(tiny4):
    model, tokenizer, _, examples, _ = tiny4
    seqs, suffix = train_inputs(examples, 2)
    pad = tokenizer.pad_token_id
    low = prefix.build(model, 1, seqs, suffix, pad, batch_size=5, progress=False)
    for point in (1, 3, 4):  # the same point, one in the middle, after the last layer
        direct = prefix.build(model, point, seqs, suffix, pad, batch_size=5, progress=False)
        derived = advance(model, low, point, batch_size=7)
        assert derived.start == point and derived.keys.shape == direct.keys.shape
        assert torch.equal(derived.keys, direct.keys) and torch.equal(derived.values, direct.values)
        assert torch.allclose(derived.hidden, direct.hidden, rtol=1e-4, atol=1e-5)
        assert (direct.hidden - low.hidden).abs().max() > 1e-2 or point == 1  # it was run on, not copied
    with pytest.raises(ValueError, match="cannot serve point 0"):
        advance(model, low, 0)


def test_the_residual_stream_stored_is_the_models_own(tiny4):
    """build_residual stops at the point (the layers above never run) and stores what the model has there."""
    model, tokenizer, _, examples, _ = tiny4
    seqs = [p for p, _ in examples[:5]]
    cache = prefix.build_residual(model, 2, seqs, tokenizer.pad_token_id, batch_size=2, progress=False)
    with torch.no_grad():
        states = model.model(input_ids=torch.tensor([seqs[0]]), output_hidden_states=True).hidden_states
    row = cache.offset[0]
    assert torch.allclose(cache.hidden[row : row + len(seqs[0])], states[2][0], atol=1e-5)
    assert cache.nbytes == (1 + sum(map(len, seqs))) * model.config.hidden_size * 4
