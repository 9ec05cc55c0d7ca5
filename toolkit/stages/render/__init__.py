"""Stage 2, `augur render`: prompt rows become images in the DomainBed layout, with a manifest.

This file is the stage's descriptor (stages/descriptor.py), a table of where each part is: the work in
stage.py (the model in pipeline.py and backends.py), the command in command.py, the recipe's checks, guides
and smoke settings in recipe.py, its report section in report.py."""

from __future__ import annotations

from pathlib import Path

from . import recipe, report
from .config import RenderConfig
from .recipe import DG_DATA, guide_settings  # noqa: F401 - what callers use

__all__ = ["DG_DATA", "Render", "guide_settings"]
from ..descriptor import Stage, register


@register
class Render(Stage):
    name = "render"
    report_rank = 30
    settings = RenderConfig

    def command(self):
        from .command import render  # its Click command (command.py imports this package)

        return render

    def inputs(self, settings, recipe_view):
        return ["extrapolate"]  # its prompts

    def check(self, recipe_view, settings):
        recipe.check(self, recipe_view, settings)

    def preflight(self, recipe_view, settings):
        recipe.preflight(self, recipe_view, settings)

    def hash_settings(self, settings, recipe_view):
        return recipe.hash_settings(self, settings, recipe_view)

    def run(self, settings, out, recipe_view):
        import dataclasses

        from .stage import render_stage

        return render_stage(recipe_view.output("extrapolate") / "prompts.jsonl", self.output(out),
                            dataclasses.replace(guide_settings(recipe_view, settings), quiet=not recipe_view.progress))

    def output(self, folder: Path) -> Path:
        return folder / "images"  # the recipe folder keeps DONE.json beside the DomainBed-layout folder

    def smoke(self, settings, ctx):
        return recipe.smoke(settings, ctx)

    def folders(self, root: Path) -> list[Path]:
        from ...core.outdir import stage_in

        if stage_in(root) is None and stage_in(root / "images") == self.name:
            return [root / "images"]  # a recipe's render folder
        return super().folders(root)

    def report(self, folders, page):
        report.write_section(folders, page)

    def unfinished(self, folder, section):
        return report.unfinished(self.output(folder))
