"""Stage 5, `augur cl`: class-incremental learning with the field's protocol and metrics.

This file is the stage's descriptor (stages/descriptor.py); the work is in stage.py, the command in
command.py. In a recipe the cl section is a grid (`CLGrid`): strategies x weights x class orders."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ...core.errors import AugurError
from .config import CLConfig
from ..descriptor import (RecipeView, SmokeContext, Stage, StageResult, check_folder_key, check_weights_key,
                          pretrained_arch, register)

CL_CLASSES = 4  # a smoke run's small folder dataset: two tasks (B2-Inc2), one increment after the first
# What makes a results.jsonl row a CL run's final row (a report leaves other rows out).
ROW_KEYS = {"strategy", "weights", "backbone", "protocol", "incremental_accuracy", "average_incremental_accuracy",
            "last_accuracy", "average_forgetting", "class_order", "seed"}


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


def result_of(results: list[dict[str, Any]], lines: list[str], main: bool = True) -> StageResult:
    from .stage import table

    return StageResult(lines, tables=[table(results)], data={"results": results}, printed=main)


@register
class CL(Stage):
    name = "cl"
    report_rank = 20
    refs = {"weights": ("pretrain",)}
    settings = CLConfig

    def command(self):
        from .command import cl  # its Click command (command.py imports this package)

        return cl

    def parse(self, section: dict[str, Any], where: str, seed: int) -> CLGrid:
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

    def section(self, settings: CLGrid) -> dict[str, Any]:
        from ...core.settings import as_dict

        return {**as_dict(settings.base), "strategies": settings.strategies, "weights": settings.weights,
                "class_orders": settings.class_orders, "hp": settings.hp}

    def hash_settings(self, settings: CLGrid, recipe: RecipeView) -> dict[str, Any]:
        section = self.section(settings)
        if not section.get("lora"):  # as before cl took LoRA: recipe folders written then keep their stage folder
            section.pop("lora", None), section.pop("lora_rank", None)
        return section

    def check(self, recipe: RecipeView, settings: CLGrid) -> None:
        pretrained_arch(recipe, self.name, settings.base.backbone, settings.base.image_size,
                        "pretrain" in settings.weights)

    def preflight(self, recipe: RecipeView, settings: CLGrid) -> None:
        from ...core.files import read_text

        check_folder_key(recipe, self, "data", settings.base.data)
        check_weights_key(recipe, self, settings.weights)
        for order in settings.class_orders:
            if order.strip().isdigit():
                continue
            p = Path(order).expanduser()
            if not p.is_file():
                raise AugurError(f"{recipe.where(self.name)}.class_orders: {order} is neither a seed nor a file here")
            try:
                read_text(p)
            except AugurError as e:
                raise AugurError(f"{recipe.where(self.name)}.class_orders: {e}") from None

    def run(self, settings: CLGrid, out: Path, recipe: RecipeView) -> StageResult:
        import dataclasses

        from ...core.distributed import is_main_process
        from .stage import run_cl

        grid = settings
        arch = grid.base.backbone
        if "pretrain" in grid.weights and not arch:
            arch = recipe.pretrain_arch()
        results = []
        for weights, label, strategy, order in grid.runs():
            cfg = dataclasses.replace(grid.base, quiet=not recipe.progress, strategy=strategy,
                                      weights=recipe.resolve(weights, "pretrain"), class_order=order, backbone=arch,
                                      hp=grid.hp.get(strategy, {}))
            results.append(run_cl(cfg, out / run_name(label, strategy, order)))
        return result_of(results, [f"cl: {len(results)} run(s) → {out}"], is_main_process())

    def smoke(self, grid: CLGrid, ctx: SmokeContext) -> CLGrid:
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
        weights = [smoke_weights(w, base.backbone or ctx.pretrain_arch, ctx.build) for w in grid.weights]
        hp = {s: dict(h) for s, h in grid.hp.items()}
        for s in grid.strategies:  # each hyper-parameter's toy value, declared with it (hparams.py)
            for k, declared in strategy_hparams(s).items():
                if declared.smoke is not None:
                    hp.setdefault(s, {})[k] = declared.smoke(hp.get(s, {}).get(k, declared.default))
        return CLGrid(dataclasses.replace(base, data=data, epochs=1, image_size=32, batch_size=16,
                                          initial_classes=initial, increment=increment),
                      grid.strategies, weights, grid.class_orders[:1], hp, labels=grid.labels or grid.weights)

    def evidence(self, folders: list[Path], page: Any) -> None:
        from .compare import evidence

        evidence(_final_rows(folders), page)

    def report(self, folders: list[Path], page: Any) -> None:
        from .stage import table

        results = _final_rows(folders)
        if not results:
            return
        page.section("Continual learning")
        page.text("Class-incremental, single head. Average incremental accuracy (mean over steps of the accuracy "
                  "on all classes seen so far), last accuracy, average forgetting (Chaudhry et al.), in %.")
        page.markdown(table(results, "markdown"))
        _curves(results, page.path("cl_curves.png"))
        page.figure("cl_curves.png", "accuracy on all seen classes after each step")
        for f in folders:
            if (f / "accuracy_matrix.png").is_file():
                page.image(f / "accuracy_matrix.png", f"accuracy matrix {f.name}", prefix="cl_matrix")
        for r in results:
            page.provenance("cl", r["strategy"], r.get("weights_sha256") or "random init", r["seed"],
                            f"{r['backbone']}, {r['protocol']}, order {r['class_order']}")

    def progress(self, folder: Path, section: dict[str, Any]) -> str:
        from ...core.files import read_jsonl

        total = 1
        for key in ("strategies", "weights", "class_orders"):
            total *= len(section.get(key) or [1])
        done = sum(1 for f in folder.glob("*/results.jsonl")
                   if any(r.get("final") for r in read_jsonl(f, tolerate_torn_tail=True)))
        return f"{done} of {total} runs finished"


def _final_rows(folders: list[Path]) -> list[dict[str, Any]]:
    """The final row of each folder's run (a foreign or corrupt row is left out)."""
    from ...core.files import read_jsonl
    from ...core.schema import fits
    from .stage import ROW_SCHEMA

    results = [rows[-1] for f in folders if (f / "results.jsonl").is_file()
               for rows in [read_jsonl(f / "results.jsonl", tolerate_torn_tail=True)] if rows]
    return [r for r in results if isinstance(r, dict) and r.get("final") and ROW_KEYS <= set(r) and fits(r, ROW_SCHEMA)]


def _curves(results: list[dict[str, Any]], path: Path) -> None:
    from ..report.page import finish_plot, pyplot

    plt = pyplot()
    fig, ax = plt.subplots(figsize=(4.5, 3))
    for r in results:
        inc = r["incremental_accuracy"]
        ax.plot(range(1, len(inc) + 1), [100 * v for v in inc], marker="o",
                label=f"{r['strategy']} ({r['weights']}, order {r['class_order']})")
    finish_plot(fig, ax, "after step", "accuracy on all seen classes (%)", path, 6)
