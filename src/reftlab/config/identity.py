"""A job's identity: what decides its result (for resume), and the one list of settings that do not.

`config_hash` keys resume: the resolved config without the settings in `NO_RESULT` (and, for a
method that does not train, without `UNTRAINED`), plus `identity`: a local data file's content,
reftlab's own code, the package versions and a local model's files. The report groups runs by the
same lists (`reftlab.report`), so resume and the report never disagree on what a result depends on.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
from pathlib import Path

from .. import tracking

# Settings that change no result: bookkeeping, where things are stored or logged. A name stands for
# that key and every key under it ("mlflow" is mlflow.*). Resume ignores them and the report never
# splits a group by them.
NO_RESULT = ("force", "run_name", "mlflow", "hydra", "save_intervention", "trainer.log_every", "optimized_metric",
             "search.trial", "search.per_epoch",
             "trainer.cache_from", "trainer.cache_dir", "trainer.cache_disk_gb", "data.license")  # fmt: skip
# Settings that choose how a job computes its result, not what it is (an exact prefix-cache path,
# the scoring batch): the report groups across them; resume keeps them, so a job run one way can
# be compared with the same job run another (trainer.cache=off beside auto).
SAME_RESULT = ("trainer.cache", "trainer.cache_max_gb", "trainer.eval_batch_size")
# What a method that does not train (zero-shot, TF-IDF) ignores: a sweep over them runs it once,
# and the report shows them as "-" for it.
UNTRAINED = ("seed", "intervention.layer", "intervention.rank", "trainer.lr", "trainer.epochs",
             "trainer.batch_size", "trainer.grad_accum", "trainer.weight_decay", "trainer.warmup_ratio",
             "trainer.group_by_length")  # fmt: skip


def among(key: str, names) -> bool:
    """Whether the dotted `key` is one of `names` or lies under one ("mlflow.tracking_uri" under "mlflow")."""
    return any(key == name or key.startswith(name + ".") for name in names)


def changes_no_result(key: str, trains: bool = True) -> bool:
    """Whether the dotted setting `key` changes no result of a job (of a method that trains or not)."""
    return among(key, NO_RESULT) or (not trains and among(key, UNTRAINED))


def without(resolved: dict, drop, prefix: str = "") -> dict:
    """`resolved` (nested dicts) without the keys for which `drop(dotted_key)` is true."""
    out = {}
    for k, v in resolved.items():
        key = f"{prefix}{k}"
        if drop(key):
            continue
        out[k] = without(v, drop, key + ".") if isinstance(v, dict) else v
    return out


def data_fingerprint(data_cfg) -> str:
    """The content of a local data file (sha256), so resume notices an edited file at the same path;
    a URL or a pinned revision is identified by the config itself."""
    path = data_cfg.get("path")
    if (
        not path
        or "://" in str(path)  # a URL (http, hf, s3, ...): the config names it
        or data_cfg.get("revision") is not None
        or not Path(str(path)).is_file()
    ):
        return ""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()[:16]


@functools.cache
def code_version() -> str:
    """The content of reftlab's own source files (sha256): a fix, committed or not, is new code."""
    package = Path(__file__).resolve().parents[1]  # src/reftlab, every wing of it
    h = hashlib.sha256()
    for path in sorted(package.rglob("*.py")):
        h.update(path.relative_to(package).as_posix().encode() + b"\0" + path.read_bytes())
    return h.hexdigest()[:16]


def model_fingerprint(model_cfg) -> str:
    """A local `model.path` (file or folder) by its files' names, sizes and first/last MiB, so new
    weights at the same path are a new job (a hub id or the bundled wheel is named by the config
    and the package versions)."""
    path = model_cfg.get("path")
    folder = Path(str(path)) if path else None
    if folder is None or not folder.exists():
        return ""
    h = hashlib.sha256()
    for f in [folder] if folder.is_file() else sorted(p for p in folder.rglob("*") if p.is_file()):
        size = f.stat().st_size
        h.update(f"{f.relative_to(folder) if f != folder else f.name}|{size}".encode())
        with open(f, "rb") as handle:
            h.update(handle.read(1 << 20))
            if size > 2 << 20:
                handle.seek(-(1 << 20), os.SEEK_END)
                h.update(handle.read())
    return h.hexdigest()[:16]


def identity(cfg) -> dict:
    """What besides the resolved config decides a job's result: the data file's content, the code,
    the package versions and a local model's files."""
    return {"data_content": data_fingerprint(cfg.data), "code": code_version(),
            "versions": tracking.package_versions(), "model_content": model_fingerprint(cfg.model)}  # fmt: skip


def config_hash(resolved: dict, trains: bool = True, data_content: str | dict = "") -> str:
    """Identity of a job for resume: the resolved config without the settings that change no result
    (`changes_no_result`: for a method that does not train, the seed and training settings too),
    and `identity` (or a data file's content alone)."""
    extra = data_content if isinstance(data_content, dict) else {"data_content": data_content}
    kept = without(resolved, lambda key: changes_no_result(key, trains)) | extra
    return hashlib.sha256(json.dumps(kept, sort_keys=True, default=str).encode()).hexdigest()[:20]
