"""Stage 1, `augur extrapolate`: an LLM imagines novel domains per class (Beyond Finite Data) or the
classes of a realm (Premonition); `augur extrapolate import` reads the Premonition paper's own prompt CSVs.

This file is the stage's descriptor (stages/descriptor.py), a table of where each part is: the work in
stage.py, the command in command.py, the recipe's modes, checks and smoke settings in recipe.py, its report
section in report.py."""

from __future__ import annotations

from . import recipe, report
from .config import DomainsConfig
from ..descriptor import Stage, check_model_present, register

__all__ = ["Extrapolate"]


@register
class Extrapolate(Stage):
    name = "extrapolate"
    report_rank = 40
    processes = "main"  # one LLM; the other processes of a launch wait
    settings = DomainsConfig  # two modes, two settings classes: parse() picks one

    def command(self):
        from .command import extrapolate  # its Click command (command.py imports this package)

        return extrapolate

    def parse(self, section, where, seed):
        return recipe.parse(section, where, seed)

    def section(self, settings):
        return recipe.section(settings)

    def hash_settings(self, settings, recipe_view):
        from .stage import identity_of

        return identity_of(self.section(settings))

    def check(self, recipe_view, settings):
        recipe.check(self, recipe_view, settings)

    def preflight(self, recipe_view, settings):
        if not settings.model.endswith(".gguf"):
            check_model_present(recipe_view, settings.model)

    def run(self, settings, out, recipe_view):
        import dataclasses

        from .stage import extrapolate_domains, extrapolate_realm

        fn = extrapolate_domains if isinstance(settings, DomainsConfig) else extrapolate_realm
        return fn(dataclasses.replace(settings, quiet=not recipe_view.progress), out)

    def smoke(self, settings, ctx):
        return recipe.smoke(settings, ctx)

    def report(self, folders, page):
        report.write_section(folders, page)

    def unfinished(self, folder, section):
        return "the LLM's requests are cached as they finish; prompts.jsonl not written yet"
