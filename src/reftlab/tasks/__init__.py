"""Task families as plugins, the way methods are: a task is a class that registers itself under its
names (`task.name` in the config picks it), one module and one YAML in conf/task/.

- `yes_no` (the default): a Yes or a No after a chat prompt, scored as logit(Yes) - logit(No);
- `classify`: any label set, scored by the log-likelihood of each label's whole answer;
- `choice`: multiple choice, each example with its own options, scored as the ReFT paper trains it
  and as the evaluation harness scores it;
- `generate`: a generated answer (a worked solution) read by an extractor and scored by exact match.

`chat.py` makes the chat prompts, `results.py` turns any task's scores into a run's results.
"""

from __future__ import annotations

from ..plugins import Registry
from .base import CHOICE, GENERATE, LABEL, Task

BUILTIN = ("reftlab.tasks.yes_no", "reftlab.tasks.classify", "reftlab.tasks.choice", "reftlab.tasks.generate")
_PLUGINS = Registry(BUILTIN)
REGISTRY: dict[str, type[Task]] = _PLUGINS.classes
register = _PLUGINS.register
names = _PLUGINS.names

__all__ = ["CHOICE", "GENERATE", "LABEL", "REGISTRY", "Task", "get", "names", "of", "register"]


def get(tcfg) -> Task:
    """The task `tcfg.name` names, configured by `tcfg` (None: yes_no, what runs logged before tasks
    existed were)."""
    from ..config import ConfigError

    _PLUGINS.load()
    name = "yes_no" if tcfg is None else tcfg.get("name", "yes_no")
    if name not in REGISTRY:
        raise ConfigError(f"task.name={name!r} is not valid: choose one of {list(REGISTRY)}")
    return REGISTRY[name](tcfg)


def of(cfg) -> Task:
    """The task of a composed config (told the run's settings: `Task.bind`)."""
    task = get(cfg.get("task"))
    task.bind(cfg)
    return task
