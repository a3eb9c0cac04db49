"""The stored prefix: built in one pass, kept on disk by key within its bound, and a cache from a
lower point serves a higher one exactly."""

import errno
import json
import os
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import compose, runs, tiny_overrides

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


def test_one_pass_over_the_corpus_serves_every_fold(tiny4, tmp_path):
    """Entries are per example: fold 0's training set and test prompts are all that is ever built;
    the other folds (their training sets mix fold 0's training and test examples) build nothing,
    and what they get is what a pass over exactly their sequences stores."""
    model, tokenizer, builder, examples, _ = tiny4
    disk, pad = store.DiskStore(tmp_path, 10**9), tokenizer.pad_token_id
    folds = [list(range(k, len(examples), 3)) for k in range(3)]
    built = []
    for k, test in enumerate(folds):
        train = [i for i in range(len(examples)) if i not in test]
        for idx, scoring in ((train, False), (test, True)):
            prompts = [examples[i][0] for i in idx]
            tails = [()] * len(idx) if scoring else [tuple(examples[i][1][:-1]) for i in idx]
            store.clear_memory()  # a new job: nothing in memory
            cache, source, _ = store.obtain(
                model, 2, prompts, 1, tails, pad, disk, 5, False, answers=builder.tails
            )
            built.append(cache.meta["built"])
            assert source == ("built" if k == 0 else "disk")
            if scoring:
                seqs, suffix = prompts, [1] * len(idx)
            else:
                seqs, suffix = train_inputs([examples[i] for i in idx], 1)
            direct = prefix.build(model, 2, seqs, suffix, pad, batch_size=4, progress=False)
            assert np.array_equal(cache.suffix_len, direct.suffix_len)
            assert np.array_equal(cache.prefix_len, direct.prefix_len)
            assert torch.allclose(cache.keys, direct.keys, atol=1e-5)
            assert torch.allclose(cache.hidden, direct.hidden, atol=1e-5)
            assert (cache.hidden[1:].abs().sum(-1) > 0).all()  # every row filled, answers' rows too
    assert built[:2] == [16, 8] and sum(built[2:]) == 0  # each example run once, for all three folds
    # a training set whose answers a shard lacks (scoring built it without them): those are built again
    store.clear_memory()
    other = [tuple(a[:-1]) + (7,) for _, a in examples[:3]]
    cache, source, _ = store.obtain(model, 2, [p for p, _ in examples[:3]], 1, other, pad, disk, 5, False)
    assert source == "built" and cache.meta["built"] == 3


def test_shards_from_two_points_make_one_cache_at_the_higher(tiny4, tmp_path):
    model, tokenizer, builder, examples, _ = tiny4
    disk, pad = store.DiskStore(tmp_path, 10**9), tokenizer.pad_token_id
    prompts, tails = [p for p, _ in examples[:10]], [tuple(a[:-1]) for _, a in examples[:10]]
    for point, part in ((1, slice(0, 4)), (2, slice(4, 7))):
        store.clear_memory()
        store.obtain(model, point, prompts[part], 1, tails[part], pad, disk, 5, False)
    store.clear_memory()
    cache, source, _ = store.obtain(model, 2, prompts, 1, tails, pad, disk, 5, False, build_at=1)
    assert source == "disk+built" and cache.meta["built"] == 3 and cache.start == 2  # point-1 parts advanced
    direct = prefix.build(model, 2, *train_inputs(examples[:10], 1), pad, progress=False)
    for i in range(10):  # example by example: the rows of a joined cache are not in the request's order
        for got, want in zip(example_rows(cache, i), example_rows(direct, i), strict=True):
            assert torch.allclose(got, want, rtol=1e-4, atol=1e-5)


def test_a_request_of_stored_and_new_examples_keeps_its_order(tiny4, tmp_path):
    """Examples 0, 2, 4 on disk, 1, 3, 5 new, all from one point: each example of the request gets its
    own rows (the cache was the stored ones first, then the built ones, each under another's index)."""
    model, tokenizer, _, examples, _ = tiny4
    disk, pad = store.DiskStore(tmp_path, 10**9), tokenizer.pad_token_id
    prompts, tails = [p for p, _ in examples[:6]], [tuple(a[:-1]) for _, a in examples[:6]]
    store.clear_memory()
    store.obtain(model, 2, prompts[::2], 1, tails[::2], pad, disk, 5, False)
    saved_shard(disk, model, 2)
    store.clear_memory()
    cache, source, _ = store.obtain(model, 2, prompts, 1, tails, pad, disk, 5, False)
    assert source == "disk+built" and cache.meta["built"] == 3 and cache.meta["reused"] == 3
    direct = prefix.build(model, 2, *train_inputs(examples[:6], 1), pad, progress=False)
    assert np.array_equal(cache.prefix_len, direct.prefix_len)
    for i in range(6):
        for got, want in zip(example_rows(cache, i), example_rows(direct, i), strict=True):
            assert got.shape == want.shape and torch.allclose(got, want, rtol=1e-4, atol=1e-5)


def example_rows(cache, i):
    """Example i's prefix keys, values and suffix stream in a packed cache."""
    p, m = cache.prefix_offset[i], cache.prefix_len[i]
    s, k = cache.suffix_offset[i], cache.suffix_len[i]
    return cache.keys[:, p : p + m], cache.values[:, p : p + m], cache.hidden[s : s + k]


def test_a_shard_still_being_saved_at_another_point_is_waited_for(tiny4, tmp_path, monkeypatch):
    """A shard is saved in the background while its job trains; the next request that it serves
    (here from point 2 for a request built from point 1, as a sweep's jobs at two layers ask) waits
    for it instead of building its examples again, however slow the save."""
    model, tokenizer, _, examples, _ = tiny4
    disk, pad = store.DiskStore(tmp_path, 10**9), tokenizer.pad_token_id
    prompts, tails = [p for p, _ in examples[:6]], [tuple(a[:-1]) for _, a in examples[:6]]
    save = store.DiskStore.save

    def slow_save(self, *args, **kwargs):  # a large shard on a busy disk
        time.sleep(0.5)
        return save(self, *args, **kwargs)

    monkeypatch.setattr(store.DiskStore, "save", slow_save)
    store.clear_memory()
    store.obtain(model, 2, prompts[:3], 1, tails[:3], pad, disk, 5, False)
    store.clear_memory()
    cache, source, _ = store.obtain(model, 2, prompts, 1, tails, pad, disk, 5, False, build_at=1)
    assert source == "disk+built" and cache.meta == {**cache.meta, "built": 3, "reused": 3}


def saved_shard(disk, model, point: int, n: int = 1) -> str:
    """The key of the newest shard of `model` once the background save of the request built from
    `point` is done (the save holds that request's lock until its shard is complete)."""
    model_id = store.model_identity(model)
    with disk.lock(store.builder_lock(model_id, n, point)):
        return disk.shards(model_id)[-1][0]


def test_a_shard_whose_bytes_were_corrupted_is_built_again_not_used(tiny4, tmp_path, caplog):
    """Same size, other bytes (a bad disk, a copy cut short and padded): the checksum recorded in
    the metadata when the shard was written no longer matches; its examples are built again (a
    warning names it) and the bad shard is replaced. A shard written before checksums is read."""
    model, tokenizer, _, examples, _ = tiny4
    disk, pad = store.DiskStore(tmp_path, 10**9), tokenizer.pad_token_id
    prompts, tails = [p for p, _ in examples[:4]], [tuple(a[:-1]) for _, a in examples[:4]]
    store.clear_memory()
    good, _, _ = store.obtain(model, 2, prompts, 1, tails, pad, disk, 5, False)
    shard = saved_shard(disk, model, 2)
    path = disk.path(shard)
    size = path.stat().st_size
    with path.open("r+b") as f:  # zero the second half of the file: the tensors' bytes, same size
        f.seek(size // 2)
        f.write(bytes(size - size // 2))
    assert path.stat().st_size == size
    assert disk.load(shard, "cpu") is None  # whole-entry reads check it too
    store.clear_memory()
    with caplog.at_level("WARNING"):
        cache, source, _ = store.obtain(model, 2, prompts, 1, tails, pad, disk, 5, False)
    assert source == "built" and cache.meta["built"] == 4
    assert shard in caplog.text and "checksum" in caplog.text
    assert torch.equal(cache.keys, good.keys) and torch.equal(cache.hidden, good.hidden)
    rebuilt = saved_shard(disk, model, 2)
    store.clear_memory()
    again, source, _ = store.obtain(model, 2, prompts, 1, tails, pad, disk, 5, False)
    assert source == "disk" and torch.equal(again.keys, good.keys) and torch.equal(again.hidden, good.hidden)
    # a shard written before checksums (no checksum in its metadata) is read, unverified
    meta = json.loads(disk.meta_path(rebuilt).read_text())
    assert meta.pop("checksum").startswith("xxh3_128:")
    disk.meta_path(rebuilt).write_text(json.dumps(meta))
    store.clear_memory()
    assert store.obtain(model, 2, prompts, 1, tails, pad, disk, 5, False)[1] == "disk"


def read_only(monkeypatch, folder: Path) -> None:
    """`folder` as a read-only mount answers (Errno 30 for whatever would write under it). A
    chmod'ed folder does that only for other users than root, and these tests may run as root
    (root ignores file modes), so where they do the OS calls answer as a read-only mount would."""
    if os.geteuid() != 0:
        folder.chmod(0o555)
        return
    real_open, real_mkdir = os.open, os.mkdir
    writes = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND

    def refused(path) -> OSError:
        return OSError(errno.EROFS, os.strerror(errno.EROFS), str(path))

    def under(path) -> bool:
        return Path(os.path.abspath(path)).is_relative_to(folder)

    def open_(path, flags, mode=0o777, *, dir_fd=None):
        if under(path) and flags & writes:
            raise refused(path)
        return real_open(path, flags, mode, dir_fd=dir_fd)

    def mkdir(path, mode=0o777, *, dir_fd=None):
        if under(path):
            raise refused(path)
        return real_mkdir(path, mode, dir_fd=dir_fd)

    monkeypatch.setattr(os, "open", open_)
    monkeypatch.setattr(os, "mkdir", mkdir)


def warnings_in(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]


def test_a_prefix_folder_that_cannot_be_written_means_no_disk_cache_and_one_warning(
    tiny4, tmp_path, monkeypatch, caplog
):
    """A read-only trainer.cache_dir (a team's disk mounted read-only) and a full disk are the same
    to a job: one warning naming the folder, then its caches in memory only; the run goes on."""
    model, tokenizer, _, examples, _ = tiny4
    pad = tokenizer.pad_token_id
    prompts, tails = [p for p, _ in examples[:6]], [tuple(a[:-1]) for _, a in examples[:6]]
    team = tmp_path / "team"
    team.mkdir()
    read_only(monkeypatch, team)
    caplog.set_level("WARNING")
    disk = store.store_for(compose(f"trainer.cache_dir={team}").trainer)
    for part in (slice(0, 3), slice(3, 6)):  # a job's training set and its test prompts
        store.clear_memory()
        cache, source, _ = store.obtain(model, 2, prompts[part], 1, tails[part], pad, disk, 5, False)
        assert source == "built" and cache.meta["built"] == 3
    assert len(warnings_in(caplog)) == 1 and str(team) in warnings_in(caplog)[0]
    assert not list(team.iterdir())
    # a full disk: the first save fails, then the store is left alone
    caplog.clear()
    full, writes = store.DiskStore(tmp_path / "full", 10**9), []

    def no_space(tensors, path, *args, **kwargs):
        writes.append(path)
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), path)

    monkeypatch.setattr("safetensors.torch.save_file", no_space)
    for part in (slice(0, 3), slice(3, 6)):
        store.clear_memory()
        assert store.obtain(model, 2, prompts[part], 1, tails[part], pad, full, 5, False)[1] == "built"
        with full.lock(store.builder_lock(store.model_identity(model), 1, 2)):  # its save is over
            pass
    assert len(writes) == 1 and len(warnings_in(caplog)) == 1 and "No space" in warnings_in(caplog)[0]


@pytest.mark.slow  # a whole job
def test_a_job_whose_cache_dir_is_read_only_finishes_with_one_warning(
    in_root, mlflow_uri, tmp_path, monkeypatch, caplog
):
    from reftlab import run

    team = tmp_path / "team"
    team.mkdir()
    read_only(monkeypatch, team)
    caplog.set_level("WARNING")
    store.clear_memory()
    cfg = compose(*tiny_overrides(f"mlflow.tracking_uri={mlflow_uri}", f"trainer.cache_dir={team}"))
    assert run.run(cfg, tmp_path / "job")["accuracy"] >= 0
    (row,) = runs(mlflow_uri).to_dict("records")
    assert row["status"] == "FINISHED" and row["tags.train_path"] == "cached"
    assert row["tags.cache_source"] == "built" and not list(team.iterdir())
    assert sum("cannot be written" in m for m in warnings_in(caplog)) == 1
