"""Recipes: one YAML file naming the stages and their settings; `augur run` runs them in order.

A stage's section is parsed by that stage's own settings dataclass (the same one its command's options
come from), so a recipe accepts exactly the keys and values the command does. A few values refer to
another stage's output instead of a path: `render` (the rendered images) for pretrain.data and
dg.synthetic, `pretrain` (the pretrained backbone) for dg.weights and cl.weights (each stage's `refs`).
The cl section is a grid: `strategies`, `weights` and `class_orders` are lists, and `hp` maps a strategy
to its hyper-parameters.

Everything stage-specific comes from the stages' descriptors (stages/<name>/__init__.py): how a
section is parsed, what it reads, what it checks, how it runs; this module only orders them.

A recipe is checked as a whole before any work: every key and value, that stages feed each other
(render needs extrapolate, ...), that architectures agree (a stage using the pretrained backbone takes
its architecture from the pretrain section), that every model card exists; then, before the first
stage runs, that data folders exist and models are present. Each stage's output lives in
RUN_DIR/<stage>-<hash>, the hash covering its settings, the seed and the hashes of the stages it reads,
so a re-run redoes only what changed. A stage is done when its folder holds DONE.json; a run killed
inside a stage resumes through the stage's own resume. Under `accelerate launch` the main process
claims the run folder and writes its plan and DONE files; training and rendering stages run in every
process (render a shard each), the LLM and the report in the main one while the others wait.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import yaml

from .. import __version__
from ..core import distributed, outdir
from ..core.cache import key_of
from ..core.errors import AugurError
from ..core.faults import kill_point
from ..core.files import write_json
from ..core.names import check_identifier
from ..core.settings import SEED_MAX, Spec, check_value
from ..core.stagerun import StageRun
from ..stages.descriptor import RECIPE, RecipeView, get, names

RECORD = "recipe.json"  # the run folder's record (core/outdir.py), of the pseudo-stage RECIPE


@dataclass
class Recipe:
    name: str
    seed: int
    stages: dict[str, Any]  # stage name -> its settings, in pipeline order
    path: Path
    smoke: bool = False

    def view(self, folders: dict[str, Path] | None = None, progress: bool = True) -> RecipeView:
        return RecipeView(self.path, self.seed, self.stages, folders or {}, progress, self.smoke)


class _UniqueKeys(yaml.SafeLoader):
    """safe_load, except that a key given twice in one mapping is an error (YAML takes the last silently)."""


def _mapping(loader: yaml.SafeLoader, node: yaml.MappingNode, deep: bool = False):
    seen: dict = {}
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if key in seen:
            raise yaml.constructor.ConstructorError(None, None, f"key {key!r} is given twice (line "
                                                    f"{seen[key] + 1} and line {key_node.start_mark.line + 1})",
                                                    key_node.start_mark)
        seen[key] = key_node.start_mark.line
    return loader.construct_mapping(node, deep=deep)


_UniqueKeys.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _mapping)


def load_recipe(path: Path) -> Recipe:
    path = Path(path)
    try:
        raw = yaml.load(path.read_text(encoding="utf-8"), Loader=_UniqueKeys)  # noqa: S506 - a SafeLoader
    except FileNotFoundError:
        raise AugurError(f"{path}: no such recipe") from None
    except IsADirectoryError:
        raise AugurError(f"{path}: is a folder, not a recipe file") from None
    except UnicodeDecodeError:
        raise AugurError(f"{path}: not a text file") from None
    except yaml.YAMLError as e:
        raise AugurError(f"{path}: invalid YAML ({str(e).splitlines()[0]})") from None
    if not isinstance(raw, dict):
        raise AugurError(f"{path}: a recipe is a mapping with 'name', 'seed' and 'stages'")
    unknown = set(raw) - {"name", "seed", "stages"}
    if unknown:
        raise AugurError(f"{path}: unknown key(s) {', '.join(sorted(unknown))} (allowed: name, seed, stages)")
    if not isinstance(raw.get("stages"), dict) or not raw["stages"]:
        raise AugurError(f"{path}: missing key 'stages' (a mapping of stage name to settings)")
    try:
        seed = check_value(raw.get("seed", 0), int, Spec(min=0, max=SEED_MAX))
    except ValueError as e:
        raise AugurError(f"{path}: seed: {e}") from None
    name = str(raw.get("name", path.stem))
    check_identifier(name, f"{path}: name")
    parsed: dict[str, Any] = {}
    for stage, section in raw["stages"].items():
        where = f"{path}: stages.{stage}"
        if stage not in names():
            raise AugurError(f"{where}: unknown stage (known: {', '.join(names())})")
        if section is not None and not isinstance(section, dict):
            raise AugurError(f"{where}: expected a mapping of settings")
        parsed[stage] = get(stage).parse(section or {}, where, seed)
    recipe = Recipe(name, seed, {s: parsed[s] for s in names() if s in parsed}, path)
    check_whole(recipe)
    return recipe


def check_whole(recipe: Recipe) -> None:
    """Stages feed each other (render needs extrapolate, ...), then each stage's checks against the others."""
    view = recipe.view()
    for name, st in recipe.stages.items():
        stage = get(name)
        for need in stage.inputs(st, view):
            if need not in recipe.stages:
                raise AugurError(f"{view.where()}.{name} needs stages.{need} (it reads its output)")
    for name, st in recipe.stages.items():
        get(name).check(view, st)


def preflight(recipe: Recipe) -> None:
    """Before any stage runs (and in --dry-run): data folders and files exist, a stage's name stands only for an
    output that feeds that key, models are present (or can be assembled here)."""
    view = recipe.view()
    for name, st in recipe.stages.items():
        get(name).preflight(view, st)


def stage_hashes(recipe: Recipe) -> dict[str, str]:
    hashes: dict[str, str] = {}
    view = recipe.view()
    for name, st in recipe.stages.items():
        stage = get(name)
        upstream = [hashes.get(n) for n in stage.upstream(st, view)]
        hashes[name] = key_of(name, stage.hash_settings(st, view), recipe.seed, upstream, __version__)[:12]
    return hashes


def plan(recipe: Recipe, run_dir: Path) -> list[dict[str, Any]]:
    hashes = stage_hashes(recipe)
    return [{"stage": name, "folder": run_dir / f"{name}-{h}",
             "cached": (run_dir / f"{name}-{h}" / "DONE.json").exists()} for name, h in hashes.items()]


def smoked(recipe: Recipe, data_root: Path, build: bool = True) -> Recipe:
    from .smoke import smoke_stages

    return Recipe(recipe.name, recipe.seed, smoke_stages(recipe.stages, data_root, build), recipe.path, smoke=True)


def run_recipe(path: Path, run_dir: Path, dry_run: bool = False, progress: bool = True, smoke: bool = False,
               on_result: Callable[[str, Any], None] | None = None) -> list[dict[str, Any]]:
    """Run (or plan) a recipe; the plan comes back, one entry per stage. `on_result(stage, StageResult)` is
    called on the main process as each stage finishes (the CLI prints what the stage's own command would)."""
    recipe = load_recipe(path)
    run_dir = Path(run_dir)
    outdir.check_out_path(run_dir)
    if dry_run:
        if smoke:
            recipe = smoked(recipe, run_dir / "smoke-data", build=False)
        else:
            preflight(recipe)  # what would stop the run: the dry run says it now
        return plan(recipe, run_dir)
    if not smoke:
        preflight(recipe)  # before the run folder is even made
    with StageRun(run_dir, RECIPE, {"recipe": recipe.name, "smoke": smoke}, record=RECORD) as run:
        if smoke:  # the main process pulls the stand-ins and builds the small data; the others then use them
            if run.main:
                recipe = smoked(recipe, run_dir / "smoke-data")
            run.wait()
            if not run.main:
                recipe = smoked(recipe, run_dir / "smoke-data", build=False)
            preflight(recipe)
        steps = plan(recipe, run_dir)
        if run.main:
            write_json(run_dir / "plan.json", {
                "recipe": str(recipe.path), "name": recipe.name, "seed": recipe.seed, "smoke": smoke,
                "stages": {k: get(k).section(v) for k, v in recipe.stages.items()},
                "plan": [{**s, "folder": str(s["folder"])} for s in steps], "toolkit_version": __version__})
        view = recipe.view({s["stage"]: s["folder"] for s in steps}, progress)
        for s in steps:
            if s["cached"]:
                run.log(f"{s['stage']}: cached in {s['folder']}")
                continue
            run.log(f"{s['stage']}: running → {s['folder']}")
            t0 = time.perf_counter()
            result = _run_stage(s["stage"], recipe.stages[s["stage"]], s["folder"], view, run)
            if run.main:
                write_json(s["folder"] / "DONE.json", {"stage": s["stage"], "seconds": round(time.perf_counter() - t0, 2),
                                                       "summary": result.summary(), "toolkit_version": __version__})
                if on_result is not None:
                    on_result(s["stage"], result)
            kill_point("run.after_stage")
        run.finish()
    return steps


def _run_stage(name: str, settings: Any, folder: Path, view: RecipeView, run: StageRun):
    """One stage of the plan, in the processes it runs in (Stage.processes); every process leaves it together."""
    stage = get(name)
    result = None
    if stage.processes == "main":
        if run.main:
            with distributed.alone():
                result = stage.run(settings, folder, view)
    else:
        result = stage.run(settings, folder, view)
    run.wait()
    return result
