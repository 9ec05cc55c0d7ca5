"""Recipes: one YAML file naming the stages and their settings; `augur run` runs them in order.

A stage's section is parsed by that stage's own settings dataclass (the same one its command's options
come from), so a recipe accepts exactly the keys and values the command does. A few values refer to
another stage's output instead of a path: `render` (the rendered images) for pretrain.data and
dg.synthetic, `pretrain` (the pretrained backbone) for dg.weights and cl.weights. The cl section is a
grid: `strategies`, `weights` and `class_orders` are lists, and `hp` maps a strategy to its
hyper-parameters.

A recipe is checked as a whole before any work: every key and value, that stages feed each other
(render needs extrapolate, ...), that architectures agree (a stage using the pretrained backbone takes
its architecture from the pretrain section), that every model card exists; then, before the first
stage runs, that data folders exist and models are present. Each stage's output lives in
RUN_DIR/<stage>-<hash>, the hash covering its settings, the seed and the hashes of the stages it reads,
so a re-run redoes only what changed. A stage is done when its folder holds DONE.json; a run killed
inside a stage resumes through the stage's own resume.
"""

from __future__ import annotations

import copy
import dataclasses
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .. import __version__, models
from ..core import outdir
from ..core.cache import key_of
from ..core.errors import AugurError
from ..core.faults import kill_point
from ..core.files import read_json, write_json
from ..core.names import check_identifier, path_name
from ..core.settings import SEED_MAX, Spec, as_dict, check_hparams, check_value, from_mapping, setting
from ..stages.cl.config import CLConfig
from ..stages.dg.config import DGConfig
from ..stages.extrapolate.config import MODES, DomainsConfig, RealmConfig
from ..stages.pretrain.config import PretrainConfig
from ..stages.render.config import RenderConfig

STAGE_ORDER = ("extrapolate", "render", "pretrain", "dg", "cl", "report")
OUTPUT_REFS = {"render", "pretrain"}


@dataclass
class ReportConfig:
    title: str = setting("Augur run", "The report's title.")


@dataclass
class CLGrid:
    """The cl section: a grid of runs over strategies x weights x class orders."""

    base: CLConfig
    strategies: list[str]
    weights: list[str]
    class_orders: list[str]
    hp: dict[str, dict[str, Any]] = field(default_factory=dict)
    labels: list[str] | None = None  # the recipe's names of the weights (a smoke run swaps in stand-ins)

    def runs(self) -> list[tuple[str, str, str, str]]:
        labels = self.labels or self.weights
        return [(w, label, s, o) for w, label in zip(self.weights, labels) for s in self.strategies
                for o in self.class_orders]


@dataclass
class Recipe:
    name: str
    seed: int
    stages: dict[str, Any]
    path: Path
    smoke: bool = False


# ----------------------------------------------------------------------------- parsing
def _extrapolate(section: dict[str, Any], where: str, seed: int):
    section = dict(section)
    try:
        mode = check_value(section.pop("mode", "realm"), str, Spec(choices=MODES))
    except ValueError as e:
        raise AugurError(f"{where}.mode: {e}") from None
    cls = DomainsConfig if mode == "domains" else RealmConfig
    return from_mapping(cls, {"seed": seed, **section}, where)


def _cl(section: dict[str, Any], where: str, seed: int) -> CLGrid:
    from ..stages.cl.strategies import STRATEGIES

    section = dict(section)
    grid = {}
    for key, default in (("strategies", ["naive"]), ("weights", ["none"]), ("class_orders", ["1993"])):
        value = section.pop(key, default)
        if key == "class_orders" and isinstance(value, list):
            value = [str(v) for v in value]
        try:
            grid[key] = check_value(value, list[str], Spec())
        except ValueError as e:
            raise AugurError(f"{where}.{key}: {e}") from None
        if not grid[key]:
            raise AugurError(f"{where}.{key}: give at least one")
    for s in grid["strategies"]:
        if s not in STRATEGIES:
            raise AugurError(f"{where}.strategies: unknown value {s!r} (choose from {', '.join(STRATEGIES.names(True))})")
    for key in ("strategy", "weights", "class_order"):
        if key in section:
            raise AugurError(f"{where}.{key}: a cl section lists them: strategies, weights, class_orders")
    hp = section.pop("hp", {}) or {}
    if not isinstance(hp, dict):
        raise AugurError(f"{where}.hp: expected a mapping of strategy to hyper-parameters")
    checked = {}
    for strategy, values in hp.items():
        if strategy not in grid["strategies"]:
            raise AugurError(f"{where}.hp.{strategy}: not one of this section's strategies")
        if not isinstance(values, dict):
            raise AugurError(f"{where}.hp.{strategy}: expected a mapping")
        cls = STRATEGIES.get(strategy)
        checked[strategy] = check_hparams(values, cls.hparams, f"strategy '{strategy}'", where=f"{where}.hp: ")
    base = from_mapping(CLConfig, {"seed": seed, **section}, where)
    return CLGrid(base, grid["strategies"], grid["weights"], grid["class_orders"], checked)


PARSERS = {
    "extrapolate": _extrapolate,
    "render": lambda s, where, seed: from_mapping(RenderConfig, {"seed": seed, **s}, where),
    "pretrain": lambda s, where, seed: from_mapping(PretrainConfig, {"seed": seed, "data": "render", **s}, where),
    "dg": lambda s, where, seed: from_mapping(DGConfig, {"seed": seed, **s}, where),
    "cl": _cl,
    "report": lambda s, where, seed: from_mapping(ReportConfig, s, where),
}


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
    stages: dict[str, Any] = {}
    for stage, section in raw["stages"].items():
        where = f"{path}: stages.{stage}"
        if stage not in PARSERS:
            raise AugurError(f"{where}: unknown stage (known: {', '.join(STAGE_ORDER)})")
        if section is not None and not isinstance(section, dict):
            raise AugurError(f"{where}: expected a mapping of settings")
        stages[stage] = PARSERS[stage](section or {}, where, seed)
    recipe = Recipe(name, seed, {s: stages[s] for s in STAGE_ORDER if s in stages}, path)
    check_whole(recipe)
    return recipe


# ----------------------------------------------------------------------------- whole-recipe checks
def needs(name: str, st: Any) -> list[str]:
    """The stages whose outputs `name` reads with these settings: its hash includes theirs."""
    if name == "render":
        return ["extrapolate"]
    if name == "pretrain":
        return ["render"] if st.data == "render" else []
    if name == "dg":
        return (["render"] if st.synthetic == "render" else []) + (["pretrain"] if st.weights == "pretrain" else [])
    if name == "cl":
        return ["pretrain"] if "pretrain" in st.weights else []
    if name == "report":
        return [s for s in STAGE_ORDER if s != "report"]
    return []


def _check_ref(where: str, stage: str, key: str, value) -> None:
    if value in STAGE_ORDER and value != REFS.get((stage, key)):
        allowed = REFS.get((stage, key))
        raise AugurError(f"{where}.{stage}.{key}: '{value}' is a stage, and its output does not feed {stage}.{key}"
                         + (f" (it takes '{allowed}', or a folder)" if allowed else " (give a folder)"))


def pretrain_arch(recipe: Recipe) -> str | None:
    st = recipe.stages.get("pretrain")
    if st is None:
        return None
    if st.backbone:
        return st.backbone
    if st.weights not in ("none", "imagenet"):
        info = Path(st.weights) / "card.json"
        if info.is_file():
            return read_json(info).get("backbone")
    return "resnet18"


def check_whole(recipe: Recipe) -> None:
    where = f"{recipe.path}: stages"
    for name, st in recipe.stages.items():
        for need in needs(name, st):
            if need not in recipe.stages and name != "report":
                raise AugurError(f"{where}.{name} needs stages.{need} (it reads its output)")
    arch = pretrain_arch(recipe)
    dg = recipe.stages.get("dg")
    if dg is not None and dg.weights == "pretrain" and dg.backbone and dg.backbone != arch:
        raise AugurError(f"{where}.dg.backbone: {dg.backbone} does not match the pretrained backbone's architecture "
                         f"{arch} (stages.pretrain.backbone); leave it out to use {arch}")
    cl = recipe.stages.get("cl")
    if cl is not None and "pretrain" in cl.weights and cl.base.backbone and cl.base.backbone != arch:
        raise AugurError(f"{where}.cl.backbone: {cl.base.backbone} does not match the pretrained backbone's "
                         f"architecture {arch} (stages.pretrain.backbone); leave it out to use {arch}")
    for stage in ("dg", "cl"):
        st = recipe.stages.get(stage)
        size = None if st is None else (st.base.image_size if stage == "cl" else st.image_size)
        pt = recipe.stages.get("pretrain")
        uses = st is not None and pt is not None and ("pretrain" in (st.weights if stage == "cl" else [st.weights]))
        if uses and arch and arch.startswith("vit") and size != pt.image_size:
            raise AugurError(f"{where}.{stage}.image_size: {size} differs from stages.pretrain.image_size "
                             f"{pt.image_size}; a {arch} backbone is built for one input size")
    cards = models.load_cards()
    ex = recipe.stages.get("extrapolate")
    if ex is not None and not ex.model.endswith(".gguf"):
        card = cards.get(ex.model)
        if card is None or card.kind != "gguf":
            raise AugurError(f"{where}.extrapolate.model: {ex.model!r} is not a gguf model card "
                             f"({', '.join(n for n, c in cards.items() if c.kind == 'gguf')}) or a .gguf path")
    rd = recipe.stages.get("render")
    if rd is not None and rd.model != "auto" and not Path(rd.model).expanduser().is_dir():
        card = cards.get(rd.model)
        if card is None or card.kind not in ("diffusers", "onnx"):
            raise AugurError(f"{where}.render.model: {rd.model!r} is not a diffusers or onnx model card or a "
                             f"pipeline folder")
    if dg is not None:
        from ..stages.dg.hparams import declared

        check_hparams(dict(dg.hp), declared(dg.algorithm, "resnet", dg.weights != "none", dg.swad), dg.algorithm,
                      where=f"{where}.dg.hp: ")


# Which earlier stage's output a key may name (anything else there is a path, a card or a built-in).
REFS = {("pretrain", "data"): "render", ("dg", "synthetic"): "render", ("dg", "weights"): "pretrain",
        ("cl", "weights"): "pretrain"}


def preflight(recipe: Recipe) -> None:
    """Before any stage runs (and in --dry-run): data folders and files exist, a stage's name stands only for an
    output that feeds that key, models are present (or can be assembled here)."""
    where = f"{recipe.path}: stages"
    for stage, key in (("pretrain", "data"), ("dg", "data"), ("dg", "synthetic"), ("cl", "data")):
        st = recipe.stages.get(stage)
        if st is None:
            continue
        value = getattr(st.base if stage == "cl" else st, key)
        _check_ref(where, stage, key, value)
        if value in (None, "digits") or value == REFS.get((stage, key)):
            continue
        if not Path(value).expanduser().is_dir():
            raise AugurError(f"{where}.{stage}.{key}: {value} is not a folder here")
    for stage in ("dg", "cl"):
        st = recipe.stages.get(stage)
        if st is None:
            continue
        for value in (st.weights if stage == "cl" else [st.weights]):
            _check_ref(where, stage, "weights", value)
            if value in ("none", "imagenet", "pretrain"):
                continue
            p = Path(value).expanduser()
            if not p.exists() and value not in models.load_cards():
                raise AugurError(f"{where}.{stage}.weights: {value} is not a file, folder or model card here")
    cl = recipe.stages.get("cl")
    for order in (cl.class_orders if cl is not None else []):
        if order.strip().isdigit():
            continue
        p = Path(order).expanduser()
        if not p.is_file():
            raise AugurError(f"{where}.cl.class_orders: {order} is neither a seed nor a file here")
        from ..core.files import read_text

        try:
            read_text(p)
        except AugurError as e:
            raise AugurError(f"{where}.cl.class_orders: {e}") from None
    names = []
    ex = recipe.stages.get("extrapolate")
    if ex is not None and not ex.model.endswith(".gguf"):
        names.append(ex.model)
    rd = recipe.stages.get("render")
    if rd is not None and rd.model != "auto" and not Path(rd.model).expanduser().is_dir():
        names.append(rd.model)
    for name in names:
        card = models.get_card(name)
        if models.local_path(card) is None and not ({"pypi", "builtin", "tiny_of"} & set(card.source)):
            raise AugurError(f"{where}: model '{name}' is not present locally; {models.how_to_get(card)}")


# ----------------------------------------------------------------------------- planning and running
def section_dict(st: Any) -> dict[str, Any]:
    if isinstance(st, CLGrid):
        return {**as_dict(st.base), "strategies": st.strategies, "weights": st.weights,
                "class_orders": st.class_orders, "hp": st.hp}
    d = as_dict(st)
    if isinstance(st, (DomainsConfig, RealmConfig)):
        d["mode"] = "domains" if isinstance(st, DomainsConfig) else "realm"
    return d


def stage_hashes(recipe: Recipe) -> dict[str, str]:
    from ..stages.render.pipeline import pick_render_model

    hashes: dict[str, str] = {}
    for name, st in recipe.stages.items():
        params = section_dict(st)
        if name == "render" and params["model"] == "auto":
            params["model"] = pick_render_model()
        upstream = [hashes.get(n) for n in needs(name, st)]
        hashes[name] = key_of(name, params, recipe.seed, upstream, __version__)[:12]
    return hashes


def plan(recipe: Recipe, run_dir: Path) -> list[dict[str, Any]]:
    hashes = stage_hashes(recipe)
    return [{"stage": name, "folder": run_dir / f"{name}-{h}",
             "cached": (run_dir / f"{name}-{h}" / "DONE.json").exists()} for name, h in hashes.items()]


def run_recipe(path: Path, run_dir: Path, dry_run: bool = False, progress: bool = True, smoke: bool = False
               ) -> list[dict[str, Any]]:
    recipe = load_recipe(path)
    run_dir = Path(run_dir)
    outdir.check_out_path(run_dir)
    if dry_run:
        if smoke:
            from .smoke import smoke_recipe

            recipe = smoke_recipe(recipe, run_dir / "smoke-data", build=False)
        else:
            preflight(recipe)  # what would stop the run: the dry run says it now
        return plan(recipe, run_dir)
    if not smoke:
        preflight(recipe)  # before the run folder is even made
    claim = outdir.claim(run_dir, "run", {"recipe": recipe.name, "smoke": smoke})
    try:
        if smoke:
            from .smoke import smoke_recipe

            recipe = smoke_recipe(recipe, run_dir / "smoke-data")
            preflight(recipe)
        steps = plan(recipe, run_dir)
        write_json(run_dir / "plan.json", {"recipe": str(recipe.path), "name": recipe.name, "seed": recipe.seed,
                                           "smoke": smoke, "stages": {k: section_dict(v) for k, v in recipe.stages.items()},
                                           "plan": [{**s, "folder": str(s["folder"])} for s in steps],
                                           "toolkit_version": __version__})
        folders = {s["stage"]: s["folder"] for s in steps}
        for s in steps:
            if s["cached"]:
                print(f"{s['stage']}: cached in {s['folder']}", file=sys.stderr)
                continue
            print(f"{s['stage']}: running → {s['folder']}", file=sys.stderr)
            t0 = time.perf_counter()
            summary = RUNNERS[s["stage"]](recipe, recipe.stages[s["stage"]], s["folder"], folders, progress)
            write_json(s["folder"] / "DONE.json", {"stage": s["stage"], "seconds": round(time.perf_counter() - t0, 2),
                                                   "summary": summary, "toolkit_version": __version__})
            kill_point("run.after_stage")
        claim.finish()
    finally:
        claim.release()
    return steps


def _quiet(cfg: Any, progress: bool) -> Any:
    cfg = copy.copy(cfg)
    cfg.quiet = not progress
    return cfg


def _extrapolate_run(recipe, st, out: Path, folders, progress) -> dict[str, Any]:
    from ..stages.extrapolate.stage import extrapolate_domains, extrapolate_realm

    fn = extrapolate_domains if isinstance(st, DomainsConfig) else extrapolate_realm
    run = fn(_quiet(st, progress), out)
    return {"line": run["summary"]["line"]}


def _render_run(recipe, st, out: Path, folders, progress) -> dict[str, Any]:
    from ..stages.render.stage import render

    res = render(folders["extrapolate"] / "prompts.jsonl", out / "images", _quiet(st, progress))
    return {"line": res["line"]}


def _ref(value: str, folders: dict[str, Path], sub: str = "") -> str:
    if value == "render":
        return str(folders["render"] / "images")
    if value == "pretrain":
        return str(folders["pretrain"])
    return value


def _pretrain_run(recipe, st, out: Path, folders, progress) -> dict[str, Any]:
    from ..stages.pretrain.stage import pretrain

    cfg = dataclasses.replace(_quiet(st, progress), data=_ref(st.data, folders))
    return {"line": pretrain(cfg, out)["line"]}


def _dg_run(recipe, st, out: Path, folders, progress) -> dict[str, Any]:
    from ..stages.dg.stage import run_dg

    cfg = dataclasses.replace(_quiet(st, progress), synthetic=_ref(st.synthetic, folders) if st.synthetic else None,
                              weights=_ref(st.weights, folders))
    return {"table": run_dg(cfg, out)["table"]}


def cl_run_name(weights: str, strategy: str, order: str) -> str:
    tag = weights if weights in ("none", "imagenet", "pretrain") else "custom"
    return path_name(f"{strategy}-{tag}-order{order}")


def _cl_run(recipe, grid: CLGrid, out: Path, folders, progress) -> dict[str, Any]:
    from ..stages.cl.stage import run_cl, table

    arch = grid.base.backbone or pretrain_arch(recipe) if "pretrain" in grid.weights else grid.base.backbone
    results = []
    for weights, label, strategy, order in grid.runs():
        cfg = dataclasses.replace(_quiet(grid.base, progress), strategy=strategy, weights=_ref(weights, folders),
                                  class_order=order, backbone=arch, hp=grid.hp.get(strategy, {}))
        results.append(run_cl(cfg, out / cl_run_name(label, strategy, order)))
    return {"table": table(results)}


def _report_run(recipe, st, out: Path, folders, progress) -> dict[str, Any]:
    from .report import write_report

    paths = write_report(out.parent, out, title=st.title)
    return {"markdown": str(paths["markdown"]), "html": str(paths["html"])}


RUNNERS = {"extrapolate": _extrapolate_run, "render": _render_run, "pretrain": _pretrain_run, "dg": _dg_run,
           "cl": _cl_run, "report": _report_run}
