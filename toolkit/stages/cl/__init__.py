"""Stage 5, `augur cl`: class-incremental learning with the field's protocol and metrics.

This file is the stage's descriptor (stages/descriptor.py), a table of where each part is: the work in
stage.py, the command in command.py, the recipe's grid (strategies x weights x class orders) in recipe.py,
its report section in report.py."""

from __future__ import annotations

from . import recipe, report
from .config import CLConfig
from .recipe import CLGrid, run_name  # noqa: F401 - what callers use

__all__ = ["CL", "CLGrid", "run_name"]
from ..descriptor import Stage, register


@register
class CL(Stage):
    name = "cl"
    report_rank = 20
    refs = {"weights": ("pretrain",)}
    settings = CLConfig

    def command(self):
        from .command import cl  # its Click command (command.py imports this package)

        return cl

    def parse(self, section, where, seed):
        return recipe.parse(section, where, seed)

    def section(self, settings):
        return recipe.section(settings)

    def hash_settings(self, settings, recipe_view):
        section = self.section(settings)
        if not section.get("lora"):  # as before cl took LoRA: recipe folders written then keep their stage folder
            section.pop("lora", None), section.pop("lora_rank", None)
        return section

    def check(self, recipe_view, settings):
        recipe.check(self, recipe_view, settings)

    def preflight(self, recipe_view, settings):
        recipe.preflight(self, recipe_view, settings)

    def run(self, settings, out, recipe_view):
        return recipe.run(self, settings, out, recipe_view)

    def smoke(self, settings, ctx):
        return recipe.smoke(self, settings, ctx)

    def evidence(self, folders, page):
        report.evidence(folders, page)

    def report(self, folders, page):
        report.write_section(folders, page)

    def unfinished(self, folder, section):
        return report.unfinished(folder, section)
