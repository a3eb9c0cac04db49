"""Methods as plugins: a method is a class that registers itself under its names.

`get(name)` finds the method `intervention.method` names; the built-in ones are the modules
listed in BUILTIN, imported on first use (none of them imports torch at import time). A new
method is one module defining a `Method` subclass decorated with `@register`, imported before the
run (add it to BUILTIN, or import it from your own entry point), plus a YAML in conf/intervention/.
"""

from __future__ import annotations

import importlib

from .base import Job, LanguageModelMethod, Method, Outcome

BUILTIN = (
    "reftlab.methods.reft",
    "reftlab.methods.lora",
    "reftlab.methods.zero_shot",
    "reftlab.methods.tfidf",
)
REGISTRY: dict[str, type[Method]] = {}
_loaded = False

__all__ = ["Job", "LanguageModelMethod", "Method", "Outcome", "REGISTRY", "get", "names", "register"]


def register(cls: type[Method]) -> type[Method]:
    """Class decorator: make `cls` available under each of its `names`."""
    for name in cls.names:
        REGISTRY[name] = cls
    return cls


def _load_builtin() -> None:
    global _loaded
    if not _loaded:
        _loaded = True
        for module in BUILTIN:
            importlib.import_module(module)


def names() -> list[str]:
    _load_builtin()
    return list(REGISTRY)


def get(name: str) -> Method:
    """The method registered as `name` (an instance configured for that name)."""
    from ..validate import ConfigError

    _load_builtin()
    if name not in REGISTRY:
        raise ConfigError(f"intervention.method={name!r} is not valid: choose one of {list(REGISTRY)}")
    return REGISTRY[name](name)
