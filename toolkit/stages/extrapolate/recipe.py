"""The extrapolate section of a recipe: its two modes (domains, realm), its model check, and its smoke settings.
The stage's descriptor (__init__.py) points here."""

from __future__ import annotations

from typing import Any

from ...core.errors import AugurError
from ..descriptor import RecipeView, SmokeContext

SMOKE_CLASSES = 3


def parse(section: dict[str, Any], where: str, seed: int) -> Any:
    from ...core.settings import Spec, check_value, from_mapping
    from .config import MODES, DomainsConfig, RealmConfig

    section = dict(section)
    try:
        mode = check_value(section.pop("mode", "realm"), str, Spec(choices=MODES))
    except ValueError as e:
        raise AugurError(f"{where}.mode: {e}") from None
    return from_mapping(DomainsConfig if mode == "domains" else RealmConfig, {"seed": seed, **section}, where)


def section(settings: Any) -> dict[str, Any]:
    from ...core.settings import as_dict
    from .config import DomainsConfig

    return {**as_dict(settings), "mode": "domains" if isinstance(settings, DomainsConfig) else "realm"}


def check(stage, recipe: RecipeView, settings: Any) -> None:
    from ... import models

    if settings.model.endswith(".gguf"):
        return
    cards = models.load_cards()
    card = cards.get(settings.model)
    if card is None or card.kind != "gguf":
        raise AugurError(f"{recipe.where(stage.name)}.model: {settings.model!r} is not a gguf model card "
                         f"({', '.join(n for n, c in cards.items() if c.kind == 'gguf')}) or a .gguf path")


def smoke(settings: Any, ctx: SmokeContext) -> Any:
    import dataclasses

    from ..smoke_data import stand_in

    # A stand-in LLM checks the plumbing, not the counts: one attempt, and whatever it keeps will do.
    changes: dict[str, Any] = {"model": stand_in(settings.model, ctx.build), "max_attempts": 1,
                               "min_fraction": 0.0}
    if hasattr(settings, "classes_per_group"):
        changes.update(groups=min(settings.groups, 2), classes_per_group=min(settings.classes_per_group, 2))
    else:
        if settings.classes:
            ctx.classes = list(settings.classes)[:SMOKE_CLASSES]
            changes["classes"] = ctx.classes
        changes["domains_per_class"] = 1
        ctx.domains = list(settings.exclude_domains or [])
    return dataclasses.replace(settings, **changes)
