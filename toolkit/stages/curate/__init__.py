"""Stage 3, `augur curate`: the synthetic images judged before anything trains on them (scores, filters,
near-duplicates, set measures, a dataset card); the kept images are a training set like a render folder.

This file is the stage's descriptor (stages/descriptor.py); the work is in stage.py, the command in
command.py."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ...core.errors import AugurError
from .config import CurateConfig
from ..descriptor import RecipeView, SmokeContext, Stage, StageResult, check_folder_key, register


@register
class Curate(Stage):
    name = "curate"
    report_rank = 25
    refs: dict[str, tuple[str, ...]] = {"real": ()}
    settings = CurateConfig

    def command(self):
        from .command import curate  # its Click command (command.py imports this package)

        return curate

    def parse(self, section: dict[str, Any], where: str, seed: int) -> Any:
        from ...core.settings import from_mapping

        return from_mapping(self.settings, section, where)  # deterministic: no seed (config.py)

    def inputs(self, settings: Any, recipe: RecipeView) -> list[str]:
        return ["render"]  # its images

    def check(self, recipe: RecipeView, settings: Any) -> None:
        from ... import models

        if settings.scorer == "auto":
            return
        card = models.load_cards().get(settings.scorer)
        if card is None:
            raise AugurError(f"{recipe.where(self.name)}.scorer: unknown model '{settings.scorer}'")

    def preflight(self, recipe: RecipeView, settings: Any) -> None:
        check_folder_key(recipe, self, "real", settings.real)

    def run(self, settings: Any, out: Path, recipe: RecipeView) -> StageResult:
        import dataclasses

        from .stage import run_curate

        return run_curate(recipe.output("render"), out, dataclasses.replace(settings, quiet=not recipe.progress))

    def smoke(self, settings: Any, ctx: SmokeContext) -> Any:
        import dataclasses

        from ..smoke_data import SMOKE_CLASSES, make_dg_data, stand_in

        scorer = settings.scorer if settings.scorer == "auto" else stand_in(settings.scorer, ctx.build)
        real = settings.real
        if real not in (None, "digits"):  # small real data of the recipe's classes, in a folder of its own
            real = str(ctx.data_root / "curate-real")
            if ctx.build:
                make_dg_data(Path(real), list(ctx.domains) or ["domain_a", "domain_b"],
                             ctx.classes or [f"class_{i}" for i in range(SMOKE_CLASSES)])
        return dataclasses.replace(settings, scorer=scorer, real=real)

    def report(self, folders: list[Path], page: Any) -> None:
        from .report import report

        report(self, folders, page)

    def unfinished(self, folder: Path, section: dict[str, Any]) -> str:
        return "scoring; nothing is kept until manifest.jsonl is written"
