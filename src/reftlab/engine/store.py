"""The store of prefix caches: on disk (bounded, shared by the jobs of a sweep) and in memory.

On disk, entries are per example (`shards`): an example is named by the model (config, dtype,
weights), its prompt's exact token ids (which carry the prompt, the text and the max length) and
the number of suffix positions, not by the data version, fold, split or role. A request (a job's
training set, its evaluation prompts) takes every example a stored shard holds and runs only the
rest through the model, saved as a new shard: one pass over a corpus serves every fold of it. A
shard from a lower point serves a higher one (`suffix.advance`), so jobs at different layers share
one pass too.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import re
import socket
import threading
import time
from pathlib import Path

import numpy as np
import torch

from ..locks import LockPathError, file_lock, try_file_lock
from .prefix import PrefixCache, build
from .shards import Source, assemble, combine, example_keys, lookup, shape_of, tails_about

log = logging.getLogger(__name__)


def weights_fingerprint(model) -> str:
    """A cheap identity of the frozen weights (sums of every parameter), for the cache key."""
    h = hashlib.sha256()
    with torch.no_grad():
        for name, p in model.named_parameters():
            flat = p.detach().reshape(-1)
            h.update(name.encode())
            h.update(np.float64(flat.sum(dtype=torch.float64).item()).tobytes())
            h.update(
                np.float64(
                    flat[:: max(1, flat.numel() // 4096)].abs().sum(dtype=torch.float64).item()
                ).tobytes()
            )
    return h.hexdigest()[:16]


def model_identity(model) -> str:
    """The frozen model's name in the store: its config, dtype, the library versions and its weights."""
    import transformers

    h = hashlib.sha256()
    h.update(model.config.to_json_string(use_diff=False).encode())
    h.update(f"{model.dtype}|{transformers.__version__}|{torch.__version__}".encode())
    h.update(weights_fingerprint(model).encode())
    return h.hexdigest()[:24]


def cache_key(
    model, seqs: list[list[int]], suffix_lens: list[int], describe: dict, model_id: str | None = None
) -> str:
    """A name for these sequences' cache as a whole: the model, `describe` and the exact token ids,
    not the intervention point."""
    h = hashlib.sha256()
    h.update(repr(sorted(describe.items())).encode())
    h.update((model_id or model_identity(model)).encode())
    h.update(np.asarray(suffix_lens, dtype=np.int64).tobytes())
    for s in seqs:
        h.update(np.asarray(s, dtype=np.int64).tobytes())
        h.update(b"|")
    return h.hexdigest()[:24]


class DiskStore:
    """Prefix caches on disk, at most `max_bytes` in all (least recently used removed first).

    The store keeps its entries in its own subfolder (`<folder>/reftlab-prefix-v3/`): tensors as
    `<key>.safetensors` (no pickle: a shared cache folder cannot run code in a job), metadata as
    `<key>.json`, written last (an entry without it is incomplete), with a checksum of both that is
    checked whenever the entry is read (a corrupted one is deleted and built again). It only ever
    deletes files it wrote there, evicts under one store-wide lock, and clears temp files left by a
    killed job (`<key>.tmp-<host>-<pid>.*`: this host's whose pid is gone, or any host's an hour
    old) and tensors a killed job left without their metadata (counted in the bound, evicted first).
    A folder that cannot be written (read-only, full) is given up: one warning, caches in memory only.
    """

    # v3: per-example tails (format 3 shards). A reftlab from before them reads `reftlab-prefix-v2/`
    # and would take a format 3 shard's tails for every example's: it never sees this folder.
    SUBFOLDER = "reftlab-prefix-v3"
    TENSORS = ("keys", "values", "hidden", "prefix_offset", "prefix_len", "suffix_offset", "suffix_len")
    STALE_TEMP_SECONDS = 3600

    def __init__(self, folder: Path, max_bytes: int):
        self.folder = Path(folder) / self.SUBFOLDER
        self.max_bytes = int(max_bytes)
        self.unusable: str | None = None  # why this store is no longer used (`give_up`)

    def path(self, key: str) -> Path:
        return self.folder / f"{key}.safetensors"

    def meta_path(self, key: str) -> Path:
        return self.folder / f"{key}.json"

    def give_up(self, error: OSError) -> None:
        """Use this store no more (its folder cannot be written: read-only, full, not ours): one warning;
        the run goes on with its caches in memory."""
        if self.unusable is None:
            self.unusable = str(error)
            log.warning(
                "The prefix-cache folder %s (trainer.cache_dir) cannot be written (%s): no disk cache for "
                "this run, its caches are kept in memory only (set trainer.cache_dir to a writable folder)",
                self.folder.parent,
                error,
            )

    def lock(self, key: str):
        """One builder per key across processes (parallel jobs of a sweep wait, then load)."""
        self.folder.mkdir(parents=True, exist_ok=True)
        return file_lock(self.folder / f"{key}.lock")

    def load(
        self, key: str, device, start: int | None = None, max_bytes: int | None = None
    ) -> PrefixCache | None:
        """The stored entry, or None. With `start`: only an entry from that point or a lower one
        (which serves it); with `max_bytes`: only one at most that large (a lower point's entry is
        larger)."""
        import json

        from safetensors.torch import load_file

        meta_path, path = self.meta_path(key), self.path(key)
        if not meta_path.exists():
            return None
        try:
            meta = json.loads(meta_path.read_text())
            if start is not None and int(meta["start"]) > start:
                log.info(
                    "Stored prefix cache %s starts at point %s, above %s: building from lower",
                    key,
                    meta["start"],
                    start,
                )
                return None
            if max_bytes is not None and int(meta.get("nbytes", path.stat().st_size)) > max_bytes:
                log.info("Stored prefix cache %s is larger than the in-memory bound: not loaded", key)
                return None
            self.verify(key, meta)
            tensors = load_file(str(path), device=str(device))
        except Exception as e:  # evicted meanwhile, truncated, corrupted or foreign: rebuild
            log.warning("Prefix cache %s is unreadable (%s): rebuilding it", path, e)
            self.remove_corrupt(key, e)
            return None
        for p in (path, meta_path):
            with contextlib.suppress(OSError):
                os.utime(p)
        arrays = {k: tensors[k].cpu().numpy() for k in self.TENSORS[3:]}
        return PrefixCache(
            int(meta["start"]), tensors["keys"], tensors["values"], tensors["hidden"], **arrays
        )

    def save(self, key: str, cache: PrefixCache, about: dict | None = None) -> bool:
        """Store `cache` as entry `key` (evicting old ones to stay in the bound), with `about` in its
        metadata (a shard's model, examples and tails); False if it does not fit."""
        import json

        from safetensors.torch import save_file

        if self.max_bytes <= 0:
            return False
        if cache.nbytes > self.max_bytes:
            log.warning(
                "Prefix cache (%.0f MB) is larger than trainer.cache_disk_gb=%.1f: kept in memory only",
                cache.nbytes / 2**20,
                self.max_bytes / 2**30,
            )
            return False
        self.folder.mkdir(parents=True, exist_ok=True)
        tmp_tensors, tmp_meta = (self.temp_path(key, ext) for ext in ("safetensors", "json"))
        tensors = {k: getattr(cache, k) for k in self.TENSORS}
        tensors = {k: (v if torch.is_tensor(v) else torch.from_numpy(np.asarray(v))).cpu().contiguous()
                   for k, v in tensors.items()}  # fmt: skip
        with file_lock(self.folder / ".store.lock"):  # eviction and writing: one process at a time
            self.evict(self.max_bytes - cache.nbytes)
        try:
            save_file(tensors, str(tmp_tensors))
            meta = {"start": cache.start, "nbytes": cache.nbytes, "format": 2, **(about or {})}
            meta["checksum"] = checksum(tmp_tensors, meta)
            tmp_tensors.replace(self.path(key))
            tmp_meta.write_text(json.dumps(meta))
            tmp_meta.replace(self.meta_path(key))  # last: the entry is complete
        finally:
            for p in (tmp_tensors, tmp_meta):
                p.unlink(missing_ok=True)
        return True

    def shards(self, model_id: str) -> list[tuple[str, dict]]:
        """(key, metadata) of every complete per-example shard of this model, oldest use first."""
        import json

        out = []
        for path in self.entries():
            try:
                meta = json.loads(path.with_suffix(".json").read_text())
            except (OSError, ValueError):  # evicted meanwhile, or being written
                continue
            if meta.get("model") == model_id and "examples" in meta:
                out.append((path.stem, meta))
        return out

    def verify(self, key: str, meta: dict) -> None:
        """Raise CorruptEntry if entry `key`'s tensor file and `meta` (its metadata) are not what was
        written: their checksum differs from the one recorded. An entry written before checksums (or
        with an algorithm this version does not know) is read unverified."""
        recorded = meta.get("checksum")
        if not isinstance(recorded, str) or not recorded.startswith(f"{CHECKSUM}:"):
            return
        found = checksum(self.path(key), meta)
        if found != recorded:
            raise CorruptEntry(f"its bytes do not match the checksum recorded when it was written ({found})")

    def remove_corrupt(self, key: str, error: Exception) -> None:
        """Delete entry `key` if `error` says it is corrupted, under its lock and checked again there (a
        job rewriting it holds the lock: its entry is left alone): its examples are built again."""
        if not isinstance(error, CorruptEntry):
            return
        import json

        try:
            with try_file_lock(self.folder / f"{key}.lock") as free:
                if not free:
                    return
                try:
                    self.verify(key, json.loads(self.meta_path(key).read_text()))
                except (OSError, ValueError):  # still corrupted (or unreadable, or gone meanwhile)
                    self.meta_path(key).unlink(missing_ok=True)  # first: never loaded again
                    self.path(key).unlink(missing_ok=True)
                    log.info("Removed the corrupted prefix cache %s", key)
        except LockPathError as e:
            log.warning("%s; the corrupted prefix cache %s is left alone", e, key)

    @contextlib.contextmanager
    def reading(self, key: str, meta: dict):
        """The shard `key` open for slicing (safetensors' safe_open, no pickle) once its bytes are
        checked against `meta` (its metadata), its use recorded."""
        from safetensors import safe_open

        self.verify(key, meta)
        with safe_open(str(self.path(key)), framework="pt") as handle:
            yield handle
        for p in (self.path(key), self.meta_path(key)):
            with contextlib.suppress(OSError):
                os.utime(p)

    def temp_path(self, key: str, ext: str) -> Path:
        """Where this process writes `<key>.<ext>` before renaming it: named by host and pid."""
        return self.folder / f"{key}.tmp-{this_host()}-{os.getpid()}.{ext}"

    def entries(self) -> list[Path]:
        """The complete entries this store wrote (their tensor files), oldest use first."""
        found = [p for p in self.folder.glob("*.safetensors") if p.with_suffix(".json").exists()]
        return sorted(found, key=_mtime)

    def orphans(self) -> list[Path]:
        """Tensor files named by a key of the store, without their metadata, whose writer is gone
        (a kill between the two renames of `save`; a writer holds the key's lock until it is done)."""
        found = [p for p in self.folder.glob("*.safetensors")
                 if KEY.fullmatch(p.stem) and not p.with_suffix(".json").exists() and self.unlocked(p.stem)]  # fmt: skip
        return sorted(found, key=_mtime)

    def unlocked(self, key: str) -> bool:
        """Whether no job holds the lock of `key` now (an unsafe lock file counts as held)."""
        try:
            with try_file_lock(self.folder / f"{key}.lock") as free:
                return free
        except LockPathError as e:
            log.warning("%s; the prefix-cache files of key %s are left alone", e, key)
            return False

    def remove_orphan(self, path: Path) -> bool:
        """Delete an orphan tensor file under its key's lock (a new writer may have begun since)."""
        try:
            with try_file_lock(self.folder / f"{path.stem}.lock") as free:
                if free and not path.with_suffix(".json").exists():
                    path.unlink(missing_ok=True)
                    log.info("Removed a prefix-cache file left without its metadata %s", path.name)
                    return True
        except LockPathError as e:
            log.warning("%s; %s is left alone", e, path.name)
        return False

    def stale_temps(self) -> list[Path]:
        """Temp files of this store left by a job that died: this host's whose pid is gone, or any
        host's older than STALE_TEMP_SECONDS (another host's pid cannot be checked from here)."""
        out = []
        for p in self.folder.glob("*.tmp-*"):
            host, pid = temp_writer(p.name)
            if host is None:
                continue
            gone = host == this_host() and not Path(f"/proc/{pid}").exists()
            with contextlib.suppress(OSError):
                if gone or time.time() - p.stat().st_mtime > self.STALE_TEMP_SECONDS:
                    out.append(p)
        return out

    def evict(self, budget: int) -> None:
        """Remove dead temp files, then orphans and the oldest entries until at most `budget` bytes."""
        for p in self.stale_temps():
            p.unlink(missing_ok=True)
            log.info("Removed a leftover prefix-cache temp file %s", p.name)
        orphans, files = self.orphans(), self.entries()
        total = sum(_size(p) for p in orphans + files)
        for old in orphans:
            if total <= budget:
                return
            size = _size(old)
            total -= size if self.remove_orphan(old) else 0
        while files and total > budget:
            old = files.pop(0)
            total -= _size(old)
            old.with_suffix(".json").unlink(missing_ok=True)  # incomplete first: never loaded again
            old.unlink(missing_ok=True)
            log.info("Removed old prefix cache %s (trainer.cache_disk_gb bound)", old.name)


KEY = re.compile(r"[0-9a-f]{24}")  # the names `cache_key` gives
CHECKSUM = "xxh3_128"  # against corruption (a bad disk, a copy cut short), not a defence against tampering


class CorruptEntry(ValueError):
    """A stored entry whose bytes differ from those its checksum was computed on when it was written."""


def checksum(path: Path, meta: dict) -> str:
    """`xxh3_128:<digest>` of the tensor file at `path` and of `meta` but its checksum (xxh3 hashes
    ~10 GB/s from the page cache: 0.06 s for a 600 MB shard, measured)."""
    import json

    import xxhash

    digest, chunk = xxhash.xxh3_128(), memoryview(bytearray(1 << 24))
    with open(path, "rb", buffering=0) as f:
        while size := f.readinto(chunk):
            digest.update(chunk[:size])
    digest.update(json.dumps({k: v for k, v in meta.items() if k != "checksum"}, sort_keys=True).encode())
    return f"{CHECKSUM}:{digest.hexdigest()}"


TEMP = re.compile(r"[^.]+\.tmp-(?:(?P<host>.+)-)?(?P<pid>\d+)\.[a-z]+")  # <key>.tmp-[<host>-]<pid>.<ext>


def this_host() -> str:
    """This host's name as it goes into a temp file's name (only letters, digits, '.', '-', '_')."""
    return re.sub(r"[^A-Za-z0-9._-]", "_", socket.gethostname()) or "unknown"


def temp_writer(name: str) -> tuple[str | None, int]:
    """(host, pid) of the job that writes the temp file `name`; the old name without a host is this
    host's; (None, 0) for a name that is not one of the store's temp files."""
    m = TEMP.fullmatch(name)
    if not m:
        return None, 0
    return m["host"] or this_host(), int(m["pid"])


def _mtime(path: Path) -> float:
    """A file's last use, or 0 if it is gone (another job evicted it meanwhile)."""
    try:
        return path.stat().st_mtime
    except OSError:
        return 0.0


def _size(path: Path) -> int:
    """A file's size, or 0 if it is gone."""
    try:
        return path.stat().st_size
    except OSError:
        return 0


_MEMORY: dict[str, PrefixCache] = {}  # this process's caches: jobs of an in-process sweep share them
MEMORY_ENTRIES = 2  # a training and an evaluation cache


def obtain(model, start, prompts, n, tails, pad_id, store: DiskStore | None, batch_size, progress,
           build_at: int | None = None, answers=(), max_bytes: int | None = None):  # fmt: skip
    """A cache with one entry per request entry i: `prompts[i]` with its last `n` tokens and, after
    them, `tails[i]` (the answer but its last token when training; () when scoring a prompt's last
    position; a continuation but its last token when scoring continuations) as its suffix, from point
    `start` or below (the caller advances it to `start`).

    Each entry comes from memory, else from the stored shard that holds its prompt with that tail
    (once any job building or saving one from build_at..start is done); the rest are built from point
    `build_at` (default `start`; lower lets other layers of a sweep share it) and saved as a new
    shard. A prompt is built once however many entries name it (one per continuation), with each
    of its own tails and, where those are all among `answers` (the task's shared answers: training,
    scoring the answers), every one of `answers` too: one entry then serves training and scoring,
    while continuations of one example's own (the options of a question) are stored with it alone.
    Shards from below `build_at` serve too where the cache from them stays within `max_bytes` (a
    lower point's is larger). Returns (cache, source, seconds); cache.meta counts the distinct
    prompts built and reused."""
    t0 = time.perf_counter()
    build_at = start if build_at is None else min(build_at, start)
    tails = [tuple(t) for t in tails]
    answers = [tuple(a) for a in answers]
    model_id = model_identity(model)
    names = example_keys(model_id, prompts, n)
    key = cache_key(model, [[len(t), *t] for t in tails], [n], {"examples": names}, model_id)
    hit = _MEMORY.get(key)
    if hit is not None and hit.start <= start and (max_bytes is None or hit.nbytes <= max_bytes):
        return hit, "memory", time.perf_counter() - t0
    _MEMORY.pop(key, None)
    while len(_MEMORY) >= MEMORY_ENTRIES:  # make room first: two large caches plus a third may not fit
        _MEMORY.pop(next(iter(_MEMORY)))
    # one builder per model, n and point: a parallel job waits, then reuses
    lock, store = _enter_lock(store, builder_lock(model_id, n, build_at))
    try:
        if store:
            _wait_for_builders(store, model_id, n, range(build_at + 1, start + 1))
        with contextlib.ExitStack() as stack:
            found, opened = _find(store, model_id, list(zip(names, tails, strict=True)), build_at, start,
                                  max_bytes, stack)  # fmt: skip
            where = [None if f is None else (opened[f[0]], f[1]) for f in found]
            todo = to_build(names, tails, found, answers)  # prompt name -> its entries and its tails
            built = None
            if todo:
                firsts = [entries[0] for entries, _ in todo.values()]
                built = build(model, build_at, [prompts[i] for i in firsts], [n] * len(firsts), pad_id,
                              batch_size, progress, tails=[own for _, own in todo.values()])  # fmt: skip
                source = Source.of_cache(built, [own for _, own in todo.values()])
                for pos, (entries, _) in enumerate(todo.values()):
                    for i in entries:
                        where[i] = (source, pos)
            cache = _gather(model, where, n, tails, batch_size)
    except BaseException:
        lock.__exit__(None, None, None)
        raise
    if store and built is not None:
        # written while training runs; the lock is held until the shard is complete, so a parallel
        # job of the sweep waits for it instead of building the same examples again
        about = shard_about(model_id, n, [own for _, own in todo.values()], list(todo))
        name = cache_key(model, [prompts[i] for i in firsts], [n, build_at],
                         {"tails": about["tails"], "example_tails": about["example_tails"]}, model_id)  # fmt: skip
        threading.Thread(
            target=_save_then_unlock, args=(store, name, built, about, lock), daemon=False
        ).start()
    else:
        lock.__exit__(None, None, None)
    distinct = len(set(names))
    source = "disk" if not todo else "built" if len(todo) == distinct else "disk+built"
    cache.meta = {"key": key, "built": len(todo), "reused": distinct - len(todo)}
    _MEMORY[key] = cache
    return cache, source, time.perf_counter() - t0


def to_build(names, tails, found, answers) -> dict[str, tuple[list[int], list[tuple]]]:
    """The prompts to run through the model: each prompt (by name) that an entry no shard serves
    names, with all its entries (each then served from the new pass) and the tails it is built with:
    its own tails and, where they are all among `answers`, every one of those too."""
    todo: dict[str, tuple[list[int], list[tuple]]] = {}
    missing = {names[i] for i, f in enumerate(found) if f is None}
    for i, name in enumerate(names):
        if name in missing:
            todo.setdefault(name, ([], []))[0].append(i)
    for entries, own in todo.values():
        own.extend(dict.fromkeys(tails[i] for i in entries if tails[i]))
        if set(own) <= set(answers):
            own.extend(a for a in answers if a and a not in own)
    return todo


def _enter_lock(store: DiskStore | None, name: str) -> tuple:
    """(the store's lock `name`, entered; the store), or (no lock, None) where there is no store to use:
    none, or one whose folder cannot be written (it is given up)."""
    if store is None or store.unusable:
        return contextlib.nullcontext(), None
    try:
        lock = store.lock(name)
        lock.__enter__()
    except LockPathError:  # planted: refused, not taken for a full disk
        raise
    except OSError as e:
        store.give_up(e)
        return contextlib.nullcontext(), None
    return lock, store


def builder_lock(model_id: str, n: int, point: int) -> str:
    """The name of the lock a request holds while it builds and saves the examples of this model and
    n from `point`."""
    return hashlib.sha256(f"{model_id}|{n}|{point}".encode()).hexdigest()[:24]


def _wait_for_builders(store: DiskStore, model_id: str, n: int, points) -> None:
    """Wait until no job (another process, or this one's save in the background) builds or saves a
    shard of this model and n from `points` (above the caller's own: a shard from there serves it).
    The caller holds its own point's lock and these are taken in rising order, after it, so two
    requests never wait on each other; a point whose lock file was never made has no builder."""
    for point in points:
        path = store.folder / f"{builder_lock(model_id, n, point)}.lock"
        if path.exists():
            with file_lock(path):
                pass


def shard_about(model_id: str, n: int, tails: list[list[tuple]], names) -> dict:
    """What a shard's metadata says of it: the model, n, its examples' keys in order and the tails
    stored after each one's suffix (`shards.tails_about`: format 3)."""
    return {"model": model_id, "n": n, "examples": list(names), **tails_about(tails)}


def _find(store, model_id, wanted, build_at, start, max_bytes, stack) -> tuple[list, dict]:
    """Which stored shard serves each wanted example (None: none does), with those shards open (in
    `stack`): one from build_at..start, else one from below where the whole cache would stay
    within `max_bytes`. A shard evicted or unreadable before it could be opened no longer counts:
    its examples are looked up again (and built, if no other shard has them)."""
    index = store.shards(model_id) if store else []
    while True:
        meta, opened, gone = dict(index), {}, set()
        found = lookup(index, wanted, build_at, start)
        if max_bytes is not None and None in found:
            lower = [f or g for f, g in zip(found, lookup(index, wanted, 0, start), strict=True)]
            size = sum(meta[f[0]]["nbytes"] / len(meta[f[0]]["examples"]) for f in lower if f is not None)
            found = lower if size <= max_bytes else found
        for shard in dict.fromkeys(f[0] for f in found if f is not None):
            try:
                handle = stack.enter_context(store.reading(shard, meta[shard]))
                opened[shard] = Source.of_file(handle, meta[shard])
            except Exception as e:  # evicted meanwhile, truncated, corrupted or foreign: rebuilt
                log.warning("Prefix cache %s is unreadable (%s): building its examples again", shard, e)
                store.remove_corrupt(shard, e)
                gone.add(shard)
        if not gone:
            return found, opened
        index = [(k, m) for k, m in index if k not in gone]


def _gather(model, where, n, tails, batch_size) -> PrefixCache:
    """The request's cache from the sources that hold its entries (`where[i]`: (source, position),
    the open shards and the part just built): one cache per point, each advanced to the highest of
    them, then joined in the request's order."""
    from .suffix import advance

    by_point: dict[int, list] = {}  # point -> [(entry, source, position)]
    for i, (src, pos) in enumerate(where):
        by_point.setdefault(src.start, []).append((i, src, pos))
    shape, top = shape_of(model), max(by_point)
    caches, members = [], []
    for point, items in sorted(by_point.items()):
        cache = assemble([(src, pos, tails[i]) for i, src, pos in items], n, shape)
        caches.append(advance(model, cache, top, batch_size) if point < top else cache)
        members.append([i for i, _, _ in items])
    return combine(caches, members, len(where))


def _save_then_unlock(store, key, cache, about, lock) -> None:
    try:
        with store.lock(key):  # the shard's own lock too: its files are not taken for a dead job's
            store.save(key, cache, about)
    except LockPathError as e:
        log.warning("Could not store the prefix cache %s: %s", key, e)
    except OSError as e:  # a full or read-only disk must not fail the run: the cache is in memory
        store.give_up(e)
    except Exception as e:
        log.warning("Could not store the prefix cache %s: %s", key, e)
    finally:
        lock.__exit__(None, None, None)


def clear_memory() -> None:
    _MEMORY.clear()


def store_for(trainer_cfg) -> DiskStore | None:
    """The on-disk store of prefix caches (trainer.cache_dir, default $REFTLAB_CACHE/prefix), or None
    if trainer.cache_disk_gb=0. A folder that cannot be written is given up at its first use."""
    from ..models import cache_root

    gb = float(trainer_cfg.cache_disk_gb)
    folder = trainer_cfg.get("cache_dir") or cache_root() / "prefix"
    return DiskStore(Path(folder), int(gb * 2**30)) if gb > 0 else None
