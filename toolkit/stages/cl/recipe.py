"""The cl section of a recipe: a grid of runs (strategies x weights x class orders), parsed, checked, run and cut
down for a smoke run. The stage's descriptor (__init__.py) points here."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ...core.errors import AugurError
from ..descriptor import (RecipeView, SmokeContext, StageResult, backbone_of, check_backbone_source, check_folder_key,
                          check_weights_key)

CL_CLASSES = 4  # a smoke run's small folder dataset: two tasks (B2-Inc2), one increment after the first


@dataclass
class CLGrid:
    """The cl section of a recipe: a grid of runs over strategies x weights x class orders, with each
    strategy's hyper-parameters."""

    base: Any  # CLConfig: what every run of the grid shares
    strategies: list[str]
    weights: list[str]
    class_orders: list[str]
    hp: dict[str, dict[str, Any]] = field(default_factory=dict)
    labels: list[str] | None = None  # the recipe's names of the weights (a smoke run swaps in stand-ins)

    def runs(self) -> list[tuple[str, str, str, str]]:
        labels = self.labels or self.weights
        return [(w, label, s, o) for w, label in zip(self.weights, labels) for s in self.strategies
                for o in self.class_orders]


def run_name(weights: str, strategy: str, order: str) -> str:
    """The folder of one run of a grid."""
    from ...core.names import path_name

    tag = weights if weights in ("none", "imagenet", "pretrain") else "custom"
    return path_name(f"{strategy}-{tag}-order{order}")


def parse(section: dict[str, Any], where: str, seed: int) -> CLGrid:
    from ...core.settings import Spec, check_hparams, check_value, from_mapping
    from .config import CLConfig
    from .hparams import strategy_hparams
    from .strategies import STRATEGIES

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
            raise AugurError(f"{where}.strategies: unknown value {s!r} (choose from "
                             f"{', '.join(STRATEGIES.names(True))})")
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
        checked[strategy] = check_hparams(values, strategy_hparams(strategy), f"strategy '{strategy}'",
                                          where=f"{where}.hp: ")
    base = from_mapping(CLConfig, {"seed": seed, **section}, where)
    if base.image_size is None and len(set(grid["weights"])) > 1:
        # auto takes each weights' own size: 32 for random init, 224 for ImageNet's, so the arms would differ
        # in more than their weights
        raise AugurError(f"{where}.image_size: give one size for the weights {', '.join(grid['weights'])}; "
                         "auto would train each at its weights' own size")
    return CLGrid(base, grid["strategies"], grid["weights"], grid["class_orders"], checked)


def section(settings: CLGrid) -> dict[str, Any]:
    from ...core.settings import as_dict

    return {**as_dict(settings.base), "strategies": settings.strategies, "weights": settings.weights,
            "class_orders": settings.class_orders, "hp": settings.hp}


def check(stage, recipe: RecipeView, settings: CLGrid) -> None:
    check_backbone_source(recipe, stage, settings.weights, settings.base.backbone, settings.base.image_size)


def preflight(stage, recipe: RecipeView, settings: CLGrid) -> None:
    from ...core.files import read_text

    check_folder_key(recipe, stage, "data", settings.base.data)
    check_weights_key(recipe, stage, settings.weights)
    for order in settings.class_orders:
        if order.strip().isdigit():
            continue
        p = Path(order).expanduser()
        if not p.is_file():
            raise AugurError(f"{recipe.where(stage.name)}.class_orders: {order} is neither a seed nor a file here")
        try:
            read_text(p)
        except AugurError as e:
            raise AugurError(f"{recipe.where(stage.name)}.class_orders: {e}") from None


def run(stage, settings: CLGrid, out: Path, recipe: RecipeView) -> StageResult:
    import dataclasses

    from ...core.distributed import is_main_process
    from .stage import run_cl, table

    grid = settings
    arch = backbone_of(recipe, stage, grid.weights, grid.base.backbone)
    results = []
    for weights, label, strategy, order in grid.runs():
        cfg = dataclasses.replace(grid.base, quiet=not recipe.progress, strategy=strategy,
                                  weights=recipe.resolve(weights, stage.refs["weights"]), class_order=order,
                                  backbone=arch, hp=grid.hp.get(strategy, {}))
        results.append(run_cl(cfg, out / run_name(label, strategy, order)).data)
    return StageResult([f"cl: {len(results)} run(s) → {out}"], tables=[table(results)], data={"results": results},
                       printed=is_main_process())


def smoke(stage, grid: CLGrid, ctx: SmokeContext) -> CLGrid:
    import dataclasses

    from ..smoke_data import make_cl_data, smoke_weights
    from .hparams import strategy_hparams

    base = grid.base
    # digits too: its 1,797 images per strategy and weight made one smoke run take minutes. The small
    # set keeps the recipe's own B{initial}-Inc{increment} with the fewest digit classes that fit it: two tasks.
    data = str(ctx.data_root / "cl")
    if base.data == "digits" and base.initial_classes + base.increment <= 10:
        initial, increment = base.initial_classes, base.increment
        n_classes = initial + increment
    else:
        n_classes, initial, increment = CL_CLASSES, 2, 2
    if ctx.build:
        make_cl_data(Path(data), n_classes)
    made = [ctx.exports.get(w, {}).get("backbone") for w in grid.weights if w in stage.refs["weights"]]
    weights = [smoke_weights(w, base.backbone or next(filter(None, made), None), ctx.build) for w in grid.weights]
    hp = {s: dict(h) for s, h in grid.hp.items()}
    for s in grid.strategies:  # each hyper-parameter's toy value, declared with it (hparams.py)
        for k, declared in strategy_hparams(s).items():
            if declared.smoke is not None:
                hp.setdefault(s, {})[k] = declared.smoke(hp.get(s, {}).get(k, declared.default))
    return CLGrid(dataclasses.replace(base, data=data, epochs=1, image_size=32, batch_size=16,
                                      initial_classes=initial, increment=increment),
                  grid.strategies, weights, grid.class_orders[:1], hp, labels=grid.labels or grid.weights)
