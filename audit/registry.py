"""Name -> factory registries filled by decorators (timm style).

``@register_attack("pgd")`` adds a class; :func:`create_attack` builds one by name and
answers unknown names with the list of known ones.
"""
from __future__ import annotations

from typing import Any, Callable, Dict, TypeVar

from .errors import ConfigError

T = TypeVar("T")


class Registry:
    """A small named registry with helpful errors."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._items: Dict[str, Any] = {}

    def register(self, name: str) -> Callable[[T], T]:
        def deco(obj: T) -> T:
            if name in self._items:
                raise ValueError(f"{self.kind} {name!r} is registered twice")
            self._items[name] = obj
            return obj

        return deco

    def get(self, name: str) -> Any:
        try:
            return self._items[name]
        except KeyError:
            known = ", ".join(sorted(self._items)) or "(none)"
            shown = repr(name) if len(repr(name)) <= 60 else f"{repr(name)[:40]}... ({len(str(name))} characters)"
            raise ConfigError(f"unknown {self.kind} {shown}; choose one of: {known}") from None

    def names(self) -> list[str]:
        return sorted(self._items)

    def __contains__(self, name: str) -> bool:
        return name in self._items


ATTACKS = Registry("attack")
DATASETS = Registry("dataset")
METHODS = Registry("repair method")

register_attack = ATTACKS.register
register_dataset = DATASETS.register
register_method = METHODS.register
