"""Every place reftlab depends on internals of transformers, pyreft or pyvene, in one module.

Written against transformers 5.24.0, pyreft 0.1.0 and pyvene 0.1.8 (see requirements/). Each
function says what it relies on; tests/test_hf_compat.py exercises each one on a tiny model and
fails loudly when a library changes under it. When transformers moves (pyreft's most common
issue), look here first.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import io


@functools.cache
def pyreft():
    """pyreft, imported without the "nnsight is not detected" notice pyvene prints on stdout
    (pyvene 0.1.8)."""
    with contextlib.redirect_stdout(io.StringIO()):
        import pyreft as module
    return module


@contextlib.contextmanager
def outputs_of(module):
    """Context: a list that collects what `module` returns each time it runs inside. A forward hook
    would not do through pyreft: pyvene (0.1.8) removes every forward hook of the model on each
    intervened forward, recorders' included; so the module's forward is wrapped on the instance and
    the class's forward restored after. Generation reads the prompt pass's final norm output this way
    (`methods.reft.ReftMethod.prompt_states`)."""
    captured, forward = [], module.forward
    module.forward = lambda *args, **kwargs: captured.append(forward(*args, **kwargs)) or captured[-1]
    try:
        yield captured
    finally:
        del module.forward  # the class's forward again


def cache_kwarg(forward) -> str:
    """The keyword a decoder layer's / model's forward takes its KV cache by: `cache` in
    transformers 5.24, `past_key_values` in 4.x."""
    params = inspect.signature(forward).parameters
    return "cache" if "cache" in params else "past_key_values"


def layer_output(out):
    """A decoder layer returns a tensor in transformers 5.24, a tuple (hidden, ...) in 4.x."""
    return out[0] if isinstance(out, tuple) else out


def cached_keys_values(kv_cache, layer: int):
    """(keys, values) a DynamicCache holds for one layer, [batch, kv_heads, tokens, head_dim], rotary
    already applied (transformers 5.24: `cache.layers[i].keys/.values`; 4.x had `key_cache[i]`)."""
    entry = kv_cache.layers[layer]
    return entry.keys, entry.values


def new_kv_cache(config):
    """An empty DynamicCache (transformers 5.24 takes the config)."""
    from transformers import DynamicCache

    return DynamicCache(config=config)


def rotary(body, hidden, position_ids):
    """The model's (cos, sin) rotary embeddings for these positions (Llama/Mistral `rotary_emb` of the
    base model, transformers 5.24)."""
    return body.rotary_emb(hidden, position_ids)


def register_attention(name: str, function) -> None:
    """Make `function` selectable as attn_implementation=`name` (transformers 5.24 AttentionInterface;
    the function gets (module, query, key, value, attention_mask, scaling, dropout, **kwargs))."""
    from transformers import AttentionInterface

    AttentionInterface.register(name, function)


def attention_in_use(model) -> str | None:
    """The attention implementation the model's layers use now (the private
    `config._attn_implementation`; transformers 5.24); None for a model without one."""
    return getattr(getattr(model, "config", None), "_attn_implementation", None)


class attention_implementation:
    """Context: the model's layers use the registered attention `name` inside, then the old one
    (reads the private `config._attn_implementation`, switches with `set_attn_implementation`;
    transformers 5.24)."""

    def __init__(self, model, name: str):
        self.model, self.name = model, name

    def __enter__(self):
        self.old = self.model.config._attn_implementation
        self.model.set_attn_implementation(self.name)
        return self

    def __exit__(self, *exc):
        self.model.set_attn_implementation(self.old)


def contiguous_lm_head(model) -> None:
    """Give the output layer contiguous input. transformers slices the last positions
    (`logits_to_keep`) as a strided view, and PyTorch's CPU bf16 linear on a strided 3-D input
    takes a slow path (measured here: 1.4 s instead of 5 ms for 16 x 49,152 logits; torch 2.13,
    transformers 5.24). The class is swapped rather than hooked because pyvene (0.1.8) removes every
    forward hook of the model after each intervened forward."""
    import torch

    head = model.get_output_embeddings()
    if type(head) is torch.nn.Linear:
        head.__class__ = _contiguous_linear()


@functools.cache
def _contiguous_linear():
    import torch

    class ContiguousLinear(torch.nn.Linear):
        def forward(self, x):
            return super().forward(x.contiguous())

    return ContiguousLinear


def householder_wy(A, tau):
    """torch.linalg.householder_product(A, tau) for one real tall matrix (n >= k) in its compact WY
    form, Q = I - V T V^T with T^-1 = diag(1/tau) + striu(V^T V) (V: the unit lower-trapezoidal
    reflectors): the same product in a few matrix operations. For LoReFT's rank-32 R on CPU its
    forward and backward take 1.2 ms against 36 ms for householder_product's (torch 2.13, here);
    the two agree to 2e-7, their gradients to 6e-7."""
    import torch

    n, k = A.shape
    eye = torch.eye(n, k, dtype=A.dtype, device=A.device)
    v = A.tril(diagonal=-1) + eye
    t_inv = torch.triu(v.T @ v, diagonal=1) + torch.diag(1.0 / tau)
    return eye - v @ torch.linalg.solve_triangular(t_inv, v[:k].T, upper=True)


@functools.cache
def _fast_orthogonal():
    from torch.nn.utils.parametrizations import _OrthMaps, _Orthogonal

    class FastOrthogonal(_Orthogonal):
        """torch's orthogonal parametrization with its Householder map computed by `householder_wy`
        (one real matrix); any other case as torch computes it."""

        def forward(self, X):
            n, k = X.size(-2), X.size(-1)
            if self.orthogonal_map != _OrthMaps.householder or X.dim() != 2 or X.is_complex():
                return super().forward(X)
            transposed = n < k
            if transposed:
                X = X.mT
            A = X.tril(diagonal=-1)
            tau = 2.0 / (1.0 + (A * A).sum(dim=-2))
            Q = householder_wy(A, tau) * X.diagonal().int().unsqueeze(-2)  # as torch: signs not trained
            if hasattr(self, "base"):
                Q = self.base @ Q
            return Q.mT if transposed else Q

    return _Orthogonal, FastOrthogonal


def fast_orthogonal(module) -> None:
    """Swap every orthogonal (Householder) parametrization inside `module` for `FastOrthogonal`:
    the same weights and gradients, computed ~30x faster (pyreft's LoReFT rotation is one)."""
    slow, fast = _fast_orthogonal()
    for sub in module.modules():
        if type(sub) is slow:
            sub.__class__ = fast


def plain_copy_of_gguf_model(loaded):
    """transformers 5.24 refuses `save_pretrained` on a GGUF-loaded model: rebuild it from its config
    without the GGUF quantization config (which would keep later loads on slow packed kernels)."""
    import torch
    from transformers import AutoModelForCausalLM

    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(loaded.state_dict())
    return model


@functools.cache
def reft_trainer_class():
    """pyreft's ReftTrainerForCausalLM accepting `num_items_in_batch`, which Trainers since
    transformers 4.46 pass to compute_loss (pyreft 0.1.0 predates it)."""

    class ReftTrainer(pyreft().ReftTrainerForCausalLM):
        def compute_loss(self, intervenable, inputs, return_outputs=False, num_items_in_batch=None):
            return super().compute_loss(intervenable, inputs, return_outputs)

    return ReftTrainer


def mlflow_model_name_problem(name: str) -> str | None:
    """Why MLflow's registry would refuse `name`, or None: its own check
    (`mlflow.utils.validation._validate_model_name`, mlflow 3.17), else the rule it enforces there
    (no '/' or ':')."""
    try:
        from mlflow.utils.validation import _validate_model_name
    except ImportError:  # moved: the rule as of mlflow 3.17
        return "it contains '/' or ':'" if any(c in name for c in "/:") else None
    try:
        _validate_model_name(name)
    except Exception as e:
        return str(getattr(e, "message", e))
    return None


def base_model(model):
    """The causal LM under a peft model (whose adapters sit inside its modules), or the model itself."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model
