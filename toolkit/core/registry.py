"""Registries where users add variants (model kinds, render backends, DG algorithms, CL strategies).

    ALGORITHMS = Registry("algorithm")
    @ALGORITHMS.register("ERM")
    class ERM: ...

A name may have aliases (kept for old command lines and recipes). The names feed `click.Choice`
(see core.settings) and recipe validation, so a new entry is usable everywhere at once.
"""

from __future__ import annotations

from typing import Any, Callable, Iterator

from .errors import AugurError


class Registry:
    def __init__(self, what: str, instantiate: bool = False):
        self.what = what
        self.instantiate = instantiate
        self._items: dict[str, Any] = {}
        self._aliases: dict[str, str] = {}

    def register(self, name: str, *aliases: str) -> Callable[[type], type]:
        def add(cls: type) -> type:
            if name in self._items or name in self._aliases:
                raise ValueError(f"{self.what} '{name}' is registered twice")
            cls.name = name
            self._items[name] = cls() if self.instantiate else cls
            for a in aliases:
                self._aliases[a] = name
            return cls

        return add

    def canonical(self, name: str) -> str:
        name = self._aliases.get(name, name)
        if name not in self._items:
            raise AugurError(f"unknown {self.what} '{name}'; choose one of {', '.join(self._items)}")
        return name

    def get(self, name: str) -> Any:
        return self._items[self.canonical(name)]

    def names(self, aliases: bool = False) -> list[str]:
        return list(self._items) + (list(self._aliases) if aliases else [])

    def items(self) -> Iterator[tuple[str, Any]]:
        return iter(self._items.items())

    def __contains__(self, name: object) -> bool:
        return name in self._items or name in self._aliases

    def __iter__(self) -> Iterator[str]:
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)
