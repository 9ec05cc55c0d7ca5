"""Stage 4, `augur dg`: domain generalization the DomainBed way (algorithms, hyper-parameter registry,
sweeps, three model-selection methods, collect_results tables).

This file is the stage's descriptor (stages/descriptor.py), a table of where each part is: the work in
stage.py, the command in command.py, the recipe's sweeps (algorithms x synthetic arms) in recipe.py, its
report section in report.py."""

from __future__ import annotations

from . import recipe, report
from .config import DGConfig
from .recipe import NONE, DGGrid  # noqa: F401 - what callers use
from ..descriptor import Stage, register

__all__ = ["DG", "DGGrid", "NONE"]


@register
class DG(Stage):
    name = "dg"
    report_rank = 10
    refs = {"synthetic": ("render", "curate"), "weights": ("pretrain",)}
    settings = DGConfig

    def command(self):
        from .command import dg  # its Click command (command.py imports this package)

        return dg

    def parse(self, section, where, seed):
        return recipe.parse(section, where, seed)

    def section(self, settings):
        return recipe.section(settings)

    def check(self, recipe_view, settings):
        recipe.check(self, recipe_view, settings)

    def preflight(self, recipe_view, settings):
        recipe.preflight(self, recipe_view, settings)

    def run(self, settings, out, recipe_view):
        return recipe.run(self, settings, out, recipe_view)

    def smoke(self, settings, ctx):
        return recipe.smoke(settings, ctx)

    def evidence(self, folders, page):
        report.evidence(folders, page)

    def report(self, folders, page):
        report.write_section(folders, page)

    def unfinished(self, folder, section):
        return report.unfinished(folder, section)
