"""The last stage, `augur report DIR`: a self-contained Markdown + HTML report of any Augur folder.

This file is the stage's descriptor (stages/descriptor.py); the page is put together in page.py, each
stage writing its own section (`Stage.report`); the command is in command.py."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .config import NAME, ReportConfig
from ..descriptor import RecipeView, Stage, StageResult, register, stages


@register
class Report(Stage):
    name = NAME
    settings = ReportConfig
    processes = "main"

    def command(self):
        from .command import report_cmd  # its Click command (command.py imports this package)

        return report_cmd

    def parse(self, section: dict[str, Any], where: str, seed: int) -> Any:
        from ...core.settings import from_mapping

        return from_mapping(ReportConfig, section, where)

    def inputs(self, settings: Any, recipe: RecipeView) -> list[str]:
        return [s for s in recipe.stages if s != self.name]  # whatever the recipe has of the other stages

    def upstream(self, settings: Any, recipe: RecipeView) -> list[str]:
        # every other stage's slot, an absent one null: as it always was, so report folders keep their names
        return [s.name for s in stages() if s.name != self.name]

    def run(self, settings: Any, out: Path, recipe: RecipeView) -> StageResult:
        from .page import write_report

        paths = write_report(out.parent, out, title=settings.title)
        return StageResult([f"report: {paths['markdown']} and {paths['html']}"],
                           files={"markdown": str(paths["markdown"]), "html": str(paths["html"])})

    def folders(self, root: Path) -> list[Path]:
        return []  # a report is not reported on
