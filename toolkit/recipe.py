"""Recipes: one YAML file naming the stages and their parameters; `augur run` runs them in order.

Each stage's output lives in RUN_DIR/<stage>-<hash>, the hash covering its parameters, the seed and
the hashes of the stages it reads, so re-running a recipe redoes only what changed. A stage is done
when its folder holds DONE.json; a run killed inside a stage resumes through the stage's own resume.
A recipe is validated completely (unknown stage, key or value, wrong type: file and key named) before
any work starts.
"""

from __future__ import annotations

import dataclasses
import sys
import time
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from . import __version__, models
from .cache import key_of
from .errors import AugurError
from .fileio import read_json, write_json


@dataclass
class ExtrapolateStage:
    mode: str = "realm"  # realm | domains
    realm: str = "birds"
    groups: int = 3
    classes_per_group: int = 4
    classes: list[str] = field(default_factory=list)
    domains_per_class: int = 6
    exclude_domains: list[str] = field(default_factory=list)
    model: str = "gemma3-270m-q4km"
    max_attempts: int = 4


@dataclass
class RenderStage:
    model: str = "auto"  # auto: an imported real diffusion model if there is one, else tiny-lcm
    backend: str = "torch"
    images_per_prompt: int = 4
    batch_size: int = 4
    steps: int | None = None
    size: int | None = None


@dataclass
class PretrainStage:
    backbone: str = "resnet18"
    lora: bool = True
    epochs: int = 2
    image_size: int = 32
    batch_size: int = 64
    lr: float = 1e-3
    precision: str = "auto"


@dataclass
class DGStage:
    data: str = "digits"
    synthetic: bool = False  # add the rendered images as extra training domains
    data_free: bool = False
    single_source: str | None = None
    backbone: str = "resnet18"
    use_pretrained: bool = False
    lora: bool = False
    epochs: int = 3
    image_size: int = 16
    batch_size: int = 64
    precision: str = "auto"
    seeds: list[int] = field(default_factory=lambda: [0])


@dataclass
class CLStage:
    data: str = "digits"
    strategies: list[str] = field(default_factory=lambda: ["naive", "replay", "prototype"])
    backbones: list[str] = field(default_factory=lambda: ["none", "pretrained"])
    initial_classes: int = 2
    increment: int = 2
    epochs: int = 2
    image_size: int = 16


@dataclass
class ReportStage:
    title: str = "Augur run"


STAGES: dict[str, type] = {"extrapolate": ExtrapolateStage, "render": RenderStage, "pretrain": PretrainStage,
                           "dg": DGStage, "cl": CLStage, "report": ReportStage}


def _choices() -> dict[tuple[str, str], tuple[str, ...]]:
    """Parameters with a closed set of values, checked at load so a typo fails before any stage runs."""
    from .backbones import BACKBONES
    from .cl import STRATEGIES
    from .render import BACKENDS
    from .train import PRECISIONS

    return {("extrapolate", "mode"): ("realm", "domains"), ("render", "backend"): BACKENDS,
            ("pretrain", "backbone"): tuple(BACKBONES), ("pretrain", "precision"): PRECISIONS,
            ("dg", "backbone"): tuple(BACKBONES), ("dg", "precision"): PRECISIONS,
            ("cl", "strategies"): tuple(STRATEGIES), ("cl", "backbones"): ("none", "pretrained")}


def needs(name: str, st: Any) -> list[str]:
    """The stages whose outputs `name` reads with these parameters: its hash includes theirs."""
    if name == "render":
        return ["extrapolate"]
    if name == "pretrain":
        return ["render"]
    if name == "dg":
        return (["render"] if st.synthetic or st.data_free else []) + (["pretrain"] if st.use_pretrained else [])
    if name == "cl":
        return ["pretrain"] if "pretrained" in st.backbones else []
    if name == "report":
        return ["extrapolate", "render", "pretrain", "dg", "cl"]
    return []


@dataclass
class Recipe:
    name: str
    seed: int
    stages: dict[str, Any]
    path: Path


def _check_type(value: Any, tp: Any, where: str) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin is typing.Union or (origin is not None and str(origin) == "<class 'types.UnionType'>"):
        if value is None and type(None) in args:
            return None
        return _check_type(value, next(a for a in args if a is not type(None)), where)
    if origin is list:
        if not isinstance(value, list):
            raise AugurError(f"{where}: expected a list, got {type(value).__name__}")
        return [_check_type(v, args[0], f"{where}[{i}]") for i, v in enumerate(value)]
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp is bool and not isinstance(value, bool) or tp is int and (isinstance(value, bool) or not isinstance(value, int)) \
            or tp in (str, float) and not isinstance(value, tp):
        raise AugurError(f"{where}: expected {tp.__name__}, got {type(value).__name__} ({value!r})")
    return value


def load_recipe(path: Path) -> Recipe:
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise AugurError(f"{path}: no such recipe") from None
    except yaml.YAMLError as e:
        raise AugurError(f"{path}: invalid YAML ({str(e).splitlines()[0]})") from None
    if not isinstance(raw, dict):
        raise AugurError(f"{path}: a recipe is a mapping with 'name', 'seed' and 'stages'")
    unknown = set(raw) - {"name", "seed", "stages"}
    if unknown:
        raise AugurError(f"{path}: unknown key(s) {', '.join(sorted(unknown))} (allowed: name, seed, stages)")
    if not isinstance(raw.get("stages"), dict) or not raw["stages"]:
        raise AugurError(f"{path}: missing key 'stages' (a mapping of stage name to parameters)")
    seed = _check_type(raw.get("seed", 0), int, f"{path}: seed")
    stages: dict[str, Any] = {}
    choices = _choices()
    for name, params in raw["stages"].items():
        if name not in STAGES:
            raise AugurError(f"{path}: stages.{name}: unknown stage (known: {', '.join(STAGES)})")
        params = params or {}
        if not isinstance(params, dict):
            raise AugurError(f"{path}: stages.{name}: expected a mapping of parameters")
        cls = STAGES[name]
        hints = typing.get_type_hints(cls)
        fields = {f.name for f in dataclasses.fields(cls)}
        for key in params:
            if key not in fields:
                raise AugurError(f"{path}: stages.{name}.{key}: unknown key (allowed: {', '.join(sorted(fields))})")
        values = {k: _check_type(v, hints[k], f"{path}: stages.{name}.{k}") for k, v in params.items()}
        for key, value in values.items():
            allowed = choices.get((name, key), ())
            for v in (value if isinstance(value, list) else [value]) if allowed else []:
                if v not in allowed:
                    raise AugurError(f"{path}: stages.{name}.{key}: unknown value {v!r} (choose from {', '.join(allowed)})")
        stages[name] = cls(**values)
    for name, st in stages.items():
        for need in needs(name, st):
            if need not in stages and name != "report":
                raise AugurError(f"{path}: stages.{name} needs stages.{need}")
    return Recipe(str(raw.get("name", path.stem)), seed, stages, path)


def stage_hashes(recipe: Recipe) -> dict[str, str]:
    hashes: dict[str, str] = {}
    for name in STAGES:
        if name in recipe.stages:
            params = dataclasses.asdict(recipe.stages[name])
            if name == "render" and params["model"] == "auto":
                params["model"] = pick_render_model()
            upstream = [hashes.get(n) for n in needs(name, recipe.stages[name])]
            hashes[name] = key_of(name, params, recipe.seed, upstream, __version__)[:12]
    return hashes


def pick_render_model() -> str:
    """A real diffusion model the user imported, if any; else the built-in tiny one (which draws noise)."""
    for card in models.load_cards().values():
        if card.kind == "diffusers" and card.name != "tiny-lcm" and models.local_path(card) is not None:
            return card.name
    return "tiny-lcm"


def plan(recipe: Recipe, run_dir: Path) -> list[dict[str, Any]]:
    hashes = stage_hashes(recipe)
    return [{"stage": name, "folder": run_dir / f"{name}-{h}",
             "cached": (run_dir / f"{name}-{h}" / "DONE.json").exists()} for name, h in hashes.items()]


def run_recipe(path: Path, run_dir: Path, dry_run: bool = False, progress: bool = True) -> list[dict[str, Any]]:
    recipe = load_recipe(path)
    run_dir = Path(run_dir)
    steps = plan(recipe, run_dir)
    if dry_run:
        return steps
    run_dir.mkdir(parents=True, exist_ok=True)
    write_json(run_dir / "recipe.json", {"recipe": str(recipe.path), "name": recipe.name, "seed": recipe.seed,
                                         "stages": {k: dataclasses.asdict(v) for k, v in recipe.stages.items()},
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
    return steps


# ----------------------------------------------------------------------------- stage runners
def _extrapolate(recipe, st: ExtrapolateStage, out: Path, folders, progress) -> dict[str, Any]:
    from .extrapolate import ExtrapolateConfig, extrapolate_domains, extrapolate_realm

    cfg = ExtrapolateConfig(model=st.model, seed=recipe.seed, max_attempts=st.max_attempts, progress=progress)
    if st.mode == "realm":
        run = extrapolate_realm(st.realm, out, groups=st.groups, classes_per_group=st.classes_per_group, cfg=cfg,
                                force=True)
    elif st.mode == "domains":
        if not st.classes:
            raise AugurError(f"{recipe.path}: stages.extrapolate.classes is needed in domains mode")
        run = extrapolate_domains(st.classes, st.domains_per_class, out, exclude_domains=st.exclude_domains,
                                  cfg=cfg, force=True)
    else:
        raise AugurError(f"{recipe.path}: stages.extrapolate.mode must be realm or domains")
    return {"line": run["summary"]["line"]}


def _render(recipe, st: RenderStage, out: Path, folders, progress) -> dict[str, Any]:
    from .render import RenderConfig, render

    model = pick_render_model() if st.model == "auto" else st.model
    cfg = RenderConfig(model=model, backend=st.backend, images_per_prompt=st.images_per_prompt,
                       batch_size=st.batch_size, steps=st.steps, size=st.size, seed=recipe.seed, progress=progress)
    res = render(folders["extrapolate"] / "prompts.jsonl", out / "images", cfg)
    return {"line": res["line"], "model": model}


def _pretrain(recipe, st: PretrainStage, out: Path, folders, progress) -> dict[str, Any]:
    from .pretrain import pretrain
    from .train import TrainConfig

    cfg = TrainConfig(epochs=st.epochs, batch_size=st.batch_size, lr=st.lr, image_size=st.image_size,
                      seed=recipe.seed, lora=st.lora, precision=st.precision, progress=progress)
    card = pretrain(folders["render"] / "images", out, backbone=st.backbone, cfg=cfg, force=True)
    return {"line": card["line"]}


def _dg(recipe, st: DGStage, out: Path, folders, progress) -> dict[str, Any]:
    from .dg import DGConfig, run_dg
    from .train import TrainConfig

    cfg = DGConfig(backbone=st.backbone, seeds=tuple(st.seeds), single_source=st.single_source,
                   data_free=st.data_free,
                   synthetic=folders["render"] / "images" if st.synthetic or st.data_free else None,
                   weights=folders["pretrain"] if st.use_pretrained else None,
                   train=TrainConfig(epochs=st.epochs, image_size=st.image_size, batch_size=st.batch_size,
                                     lora=st.lora, precision=st.precision, progress=progress))
    res = run_dg(st.data, out, cfg)
    return {"table": res["table"]}


def _cl(recipe, st: CLStage, out: Path, folders, progress) -> dict[str, Any]:
    from .cl import CLConfig, run_cl, table

    results = []
    for backbone in st.backbones:
        weights = None if backbone == "none" else (folders["pretrain"] if backbone == "pretrained" else Path(backbone))
        for strategy in st.strategies:
            cfg = CLConfig(strategy=strategy, initial_classes=st.initial_classes, increment=st.increment,
                           epochs=st.epochs, image_size=st.image_size, seed=recipe.seed, weights=weights,
                           progress=False)
            results.append(run_cl(st.data, out / f"{strategy}-{backbone if backbone in ('none', 'pretrained') else 'custom'}",
                                  cfg))
    return {"table": table(results)}


def _report(recipe, st: ReportStage, out: Path, folders, progress) -> dict[str, Any]:
    from .report import write_report

    paths = write_report(out.parent, out, title=st.title)
    return {"markdown": str(paths["markdown"]), "html": str(paths["html"])}


RUNNERS = {"extrapolate": _extrapolate, "render": _render, "pretrain": _pretrain, "dg": _dg, "cl": _cl,
           "report": _report}


def stage_folders(run_dir: Path) -> dict[str, Path]:
    """The finished stage folders of a run, from its recipe.json plan."""
    info = read_json(Path(run_dir) / "recipe.json")
    return {s["stage"]: Path(s["folder"]) for s in info["plan"] if (Path(s["folder"]) / "DONE.json").exists()
            or s["stage"] == "report"}
