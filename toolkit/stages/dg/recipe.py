"""The dg section of a recipe: one DomainBed sweep, or a grid of them over algorithms x synthetic arms; parsed,
checked, run and cut down for a smoke run. The stage's descriptor (__init__.py) points here."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ...core.errors import AugurError
from ..descriptor import (RecipeView, SmokeContext, StageResult, check_backbone_source, check_folder_key,
                          check_weights_key)


NONE = "none"  # the arm without synthetic data


@dataclass
class DGGrid:
    """The dg section of a recipe: one sweep per algorithm x synthetic arm (`algorithms: [ERM, CORAL]`,
    `synthetic: [none, render]`), each a DGConfig. A grid of one sweep is the section as it always was: the
    same settings (so the same stage hash) and the sweep in the stage's folder itself; a larger grid puts
    each sweep in a folder of its own, `<algorithm>-<arm>` in lower case (`erm-none`). The `none` arm of a data-free section trains on
    the real training domains (DomainBed's leave-one-domain-out): the baseline data-free is compared with."""

    runs: list[tuple[str, str, Any]]  # (algorithm, arm: none / a stage / a folder, its DGConfig)
    algorithms: list[str]
    synthetic: list[str]  # the arms, `none` included

    @property
    def base(self) -> Any:
        return self.runs[0][2]

    @property
    def weights(self) -> str:
        return self.base.weights  # every sweep of the grid starts from the same weights

    def folder(self, algorithm: str, arm: str, out: Path) -> Path:
        from ...core.names import path_name

        if len(self.runs) == 1:
            return out
        tag = arm if arm in (NONE, "render", "curate") else f"synthetic{self.synthetic.index(arm)}"
        return out / path_name(f"{algorithm.lower()}-{tag}")


def _grid_list(section: dict[str, Any], one: str, many: str, where: str, default: str) -> list[str]:
    from ...core.settings import Spec, check_value

    if one in section and many in section and one != many:
        raise AugurError(f"{where}.{many}: give {one} or {many}, not both")
    value = section.pop(many, section.pop(one, default) if one != many else default)
    if value is None:
        value = NONE
    try:
        value = check_value(value if isinstance(value, list) else [value], list[str], Spec())
    except ValueError as e:
        raise AugurError(f"{where}.{many}: {e}") from None
    if not value:
        raise AugurError(f"{where}.{many}: give at least one")
    if len(set(value)) < len(value):
        raise AugurError(f"{where}.{many}: {value} names one twice")
    return value


def parse(section: dict[str, Any], where: str, seed: int) -> DGGrid:
    from ...core.settings import from_mapping
    from .config import DGConfig
    from .hparams import ALGORITHM_HPARAMS

    section = dict(section or {}) if isinstance(section, dict) or section is None else section
    if not isinstance(section, dict):
        raise AugurError(f"{where}: expected a mapping of parameters")
    algorithms = _grid_list(section, "algorithm", "algorithms", where, "ERM")
    arms = _grid_list(section, "synthetic", "synthetic", where, NONE)
    for a in algorithms:
        if a not in ALGORITHM_HPARAMS:
            raise AugurError(f"{where}.algorithms: unknown value {a!r} (choose from {', '.join(ALGORITHM_HPARAMS)})")
    hp = section.pop("hp", {}) or {}
    if len(algorithms) > 1:  # one mapping per algorithm, as a cl section's hp per strategy
        if not isinstance(hp, dict) or not all(k in algorithms and isinstance(v, dict) for k, v in hp.items()):
            raise AugurError(f"{where}.hp: with several algorithms, a mapping of algorithm (one of "
                             f"{', '.join(algorithms)}) to its hyper-parameters")
    data_free = bool(section.get("data_free"))
    runs = []
    for arm in arms:
        for a in algorithms:
            values = {"seed": seed, **section, "algorithm": a, "synthetic": None if arm == NONE else arm,
                      "hp": hp.get(a, {}) if len(algorithms) > 1 else hp}
            if arm == NONE and data_free and len(arms) > 1:
                values["data_free"] = False  # the baseline: the real training domains (see DGGrid)
            runs.append((a, arm, from_mapping(DGConfig, values, where)))
    return DGGrid(runs, algorithms, arms)


def section(settings: DGGrid) -> dict[str, Any]:
    from ...core.settings import as_dict

    if len(settings.runs) == 1:
        return as_dict(settings.base)  # as a section of one sweep always was (its stage hash unchanged)
    hp = {a: cfg.hp for a, _, cfg in settings.runs if cfg.hp}
    return {**as_dict(settings.base), "algorithm": None, "algorithms": settings.algorithms,
            "synthetic": settings.synthetic, "hp": hp if len(settings.algorithms) > 1 else settings.base.hp,
            "data_free": any(cfg.data_free for _, _, cfg in settings.runs)}


def check(stage, recipe: RecipeView, settings: DGGrid) -> None:
    base = settings.base
    check_backbone_source(recipe, stage, [base.weights], base.backbone, base.image_size)


def preflight(stage, recipe: RecipeView, settings: DGGrid) -> None:
    check_folder_key(recipe, stage, "data", settings.base.data)
    for arm in settings.synthetic:
        if arm != NONE:
            check_folder_key(recipe, stage, "synthetic", arm)
    check_weights_key(recipe, stage, [settings.base.weights])


def run(stage, settings: DGGrid, out: Path, recipe: RecipeView) -> StageResult:
    import dataclasses

    from ...core.distributed import is_main_process
    from .collect import tables
    from .stage import run_dg

    results = []
    for algorithm, arm, cfg in settings.runs:
        cfg = dataclasses.replace(cfg, quiet=not recipe.progress,
                                  synthetic=recipe.resolve(arm, stage.refs["synthetic"]) if arm != NONE else None,
                                  weights=recipe.resolve(cfg.weights, stage.refs["weights"]))
        results.append(run_dg(cfg, settings.folder(algorithm, arm, out)))
    if len(results) == 1:
        return results[0]
    results = [res.data for res in results]
    rows = [r for res in results for r in res["rows"]]
    lines = [f"dg: {len(results)} sweeps ({' x '.join(map(str, (len(settings.algorithms), len(settings.synthetic))))} "
             f"algorithms x arms), {len(rows)} result rows → {out}"]
    return StageResult(lines, tables=[tables(rows, selections=settings.base.selection)],
                       files={"results": [res["results"] for res in results]}, data={"sweeps": results},
                       printed=is_main_process())


def smoke(grid: DGGrid, ctx: SmokeContext) -> DGGrid:
    return DGGrid([(a, arm, _smoke(cfg, ctx)) for a, arm, cfg in grid.runs], grid.algorithms, grid.synthetic)


def _smoke(settings: Any, ctx: SmokeContext) -> Any:
    import dataclasses

    from ..smoke_data import SMOKE_CLASSES, make_dg_data, smoke_weights

    domains = ctx.domains
    if settings.single_source and settings.single_source not in domains:
        domains.append(settings.single_source)
    # at least three real domains: leave-one-out selection and single-source testing need the others
    domains += [f"domain_{c}" for c in "abc"][:max(0, 3 - len(domains))]
    data = settings.data
    if settings.data != "digits":
        data = str(ctx.data_root / "dg")
        if ctx.build:
            make_dg_data(Path(data), domains, ctx.classes or [f"class_{i}" for i in range(SMOKE_CLASSES)])
    # evaluated (and checkpointed) at the first and the last step: selection has two to choose from, and each
    # further checkpoint of a ResNet-50 and its Adam state costs a second here (resume has tests of its own)
    return dataclasses.replace(settings, data=data, steps=6, checkpoint_freq=6, batch_size=4, trials=1, seeds=None,
                               hparams_seed=[0], image_size=32,
                               weights=smoke_weights(settings.weights, settings.backbone, ctx.build))
