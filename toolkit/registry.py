"""Registries where users add variants (DG algorithms, CL strategies, model kinds): one decorator."""

from __future__ import annotations

from typing import Callable


def registrar(table: dict, instantiate: bool = False) -> Callable[[str], Callable[[type], type]]:
    """`register = registrar(TABLE)`; then `@register("name")` on a class puts it (or an instance) in TABLE."""

    def register(name: str) -> Callable[[type], type]:
        def add(cls: type) -> type:
            cls.name = name
            table[name] = cls() if instantiate else cls
            return cls

        return add

    return register
