"""Plugins by name: methods (`methods/`) and tasks (`tasks/`) register their classes under their
names with a class decorator; the built-in ones are imported on first use, so none is imported
(nor torch with it) before a run asks for one."""

from __future__ import annotations

import importlib


class Registry:
    """The classes registered under their `names`, the built-in modules imported on first use."""

    def __init__(self, builtin: tuple[str, ...]):
        self.builtin = builtin
        self.classes: dict[str, type] = {}
        self._loaded = False

    def register(self, cls: type) -> type:
        """Class decorator: make `cls` available under each of its `names`."""
        for name in cls.names:
            self.classes[name] = cls
        return cls

    def load(self) -> dict[str, type]:
        """Every registered class by name, the built-in ones imported first."""
        if not self._loaded:
            self._loaded = True
            for module in self.builtin:
                importlib.import_module(module)
        return self.classes

    def names(self) -> list[str]:
        return list(self.load())
