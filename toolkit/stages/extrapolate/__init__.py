"""Stage 1, `augur extrapolate`: an LLM imagines novel domains per class (Beyond Finite Data) or the
classes of a realm (Premonition); `augur extrapolate import` reads the Premonition paper's own prompt CSVs.

This file is the stage's descriptor (stages/descriptor.py); the work is in stage.py, the command in
command.py."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ...core.errors import AugurError
from .config import DomainsConfig
from ..descriptor import RecipeView, SmokeContext, Stage, StageResult, check_model_present, register

SMOKE_CLASSES = 3


def result_of(run: dict[str, Any]) -> StageResult:
    """An extrapolation's run record -> its StageResult: a warning per class or group short of its count."""
    warnings = []
    for unit, items in (("class", run.get("classes")), ("group", run.get("per_group"))):
        for it in items or []:
            if it["status"] != "ok":
                why = f", {it['stopped']}" if it.get("stopped") else ""
                warnings.append(f"{unit} '{it.get('class') or it.get('group')}' is {it['status']}: {it['kept']}/"
                                f"{it['wanted']} after {it['attempts']} attempts{why} (rejected: "
                                f"{it['rejected'] or 'none'})")
    return StageResult([run["summary"]["line"]], warnings=warnings, data={"run": run})


@register
class Extrapolate(Stage):
    name = "extrapolate"
    report_rank = 40
    processes = "main"  # one LLM; the other processes of a launch wait
    settings = DomainsConfig  # two modes, two settings classes: parse() picks one

    def command(self):
        from .command import extrapolate  # its Click command (command.py imports this package)

        return extrapolate

    def parse(self, section: dict[str, Any], where: str, seed: int) -> Any:
        from ...core.settings import Spec, check_value, from_mapping
        from .config import MODES, DomainsConfig, RealmConfig

        section = dict(section)
        try:
            mode = check_value(section.pop("mode", "realm"), str, Spec(choices=MODES))
        except ValueError as e:
            raise AugurError(f"{where}.mode: {e}") from None
        return from_mapping(DomainsConfig if mode == "domains" else RealmConfig, {"seed": seed, **section}, where)

    def section(self, settings: Any) -> dict[str, Any]:
        from ...core.settings import as_dict
        from .config import DomainsConfig

        return {**as_dict(settings), "mode": "domains" if isinstance(settings, DomainsConfig) else "realm"}

    def hash_settings(self, settings: Any, recipe: RecipeView) -> dict[str, Any]:
        from .stage import identity_of

        return identity_of(self.section(settings))

    def check(self, recipe: RecipeView, settings: Any) -> None:
        from ... import models

        if settings.model.endswith(".gguf"):
            return
        cards = models.load_cards()
        card = cards.get(settings.model)
        if card is None or card.kind != "gguf":
            raise AugurError(f"{recipe.where(self.name)}.model: {settings.model!r} is not a gguf model card "
                             f"({', '.join(n for n, c in cards.items() if c.kind == 'gguf')}) or a .gguf path")

    def preflight(self, recipe: RecipeView, settings: Any) -> None:
        if not settings.model.endswith(".gguf"):
            check_model_present(recipe, settings.model)

    def run(self, settings: Any, out: Path, recipe: RecipeView) -> StageResult:
        import dataclasses

        from .config import DomainsConfig
        from .stage import extrapolate_domains, extrapolate_realm

        fn = extrapolate_domains if isinstance(settings, DomainsConfig) else extrapolate_realm
        return result_of(fn(dataclasses.replace(settings, quiet=not recipe.progress), out))

    def smoke(self, settings: Any, ctx: SmokeContext) -> Any:
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

    def report(self, folders: list[Path], page: Any) -> None:
        from ...core.files import read_json, read_jsonl

        for f in folders:
            if not (f / "prompts.jsonl").is_file():
                continue
            page.section("Extrapolated prompts")
            rows = read_jsonl(f / "prompts.jsonl")
            run = read_json(f / "run.json")
            page.text(f"{len(rows)} prompts. {run['summary']['line']}")
            if (f / "classes.jsonl").is_file():
                page.table(["group", "class", "description"],
                           [[c["group"], c["class"], c["description"]] for c in read_jsonl(f / "classes.jsonl")])
            else:
                page.table(["class", "domain", "prompt"],
                           [[r["class"], r.get("domain_text", r["domain"]), r["prompt"]] for r in rows])
            p = run["provenance"]
            page.provenance("extrapolate", p["model"], p["model_sha256"], p["seed"], ", ".join(p["templates"]))
            if p.get("semantic_dedup"):
                page.provenance("extrapolate (dedup)", p["semantic_dedup"]["model"], p["semantic_dedup"]["sha256"], "",
                                f"threshold {p['semantic_dedup']['threshold']}")

    def progress(self, folder: Path, section: dict[str, Any]) -> str:
        return "the LLM's requests are cached as they finish; prompts.jsonl not written yet"
