"""Methods as plugins: a method is a class that registers itself under its names.

`get(name)` finds the method `intervention.method` names; the built-in ones are the modules
listed in BUILTIN, imported on first use (none of them imports torch at import time). A new
method is one module defining a `Method` subclass decorated with `@register`, imported before the
run (add it to BUILTIN, or import it from your own entry point), plus a YAML in conf/intervention/.
"""

from __future__ import annotations

from ..plugins import Registry
from .base import Job, LanguageModelMethod, Method, Outcome

BUILTIN = (
    "reftlab.methods.reft",
    "reftlab.methods.lora",
    "reftlab.methods.zero_shot",
    "reftlab.methods.tfidf",
)
_PLUGINS = Registry(BUILTIN)
REGISTRY: dict[str, type[Method]] = _PLUGINS.classes
register = _PLUGINS.register
names = _PLUGINS.names

__all__ = ["Job", "LanguageModelMethod", "Method", "Outcome", "REGISTRY", "get", "names", "register"]


def get(name: str) -> Method:
    """The method registered as `name` (an instance configured for that name)."""
    from ..validate import ConfigError

    if name not in _PLUGINS.load():
        raise ConfigError(f"intervention.method={name!r} is not valid: choose one of {list(REGISTRY)}")
    return REGISTRY[name](name)
