"""The render section of a recipe: its checks, its guides from the dg section's data (`init_images: dg.data`), what
decides its folder, and its smoke settings. The stage's descriptor (__init__.py) points here."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ...core.errors import AugurError
from ..descriptor import RecipeView, SmokeContext, check_model_present


def _is_folder(model: str) -> bool:
    return model == "auto" or Path(model).expanduser().is_dir()


DG_DATA = "dg.data"  # init_images: the dg section's real data guides the rendering


def guide_settings(recipe: RecipeView, settings: Any) -> Any:
    """The settings with `init_images: dg.data` resolved to the dg section's data (after a smoke run shrank it,
    its small data). The guides come from dg's training domains: its single source; every domain in a
    leave-one-domain-out sweep, which tests on each in turn (dg's leakage guard drops, per run, the images
    guided by that run's test domain); with fixed test domains, init_domains must name the others."""
    import dataclasses

    if settings.init_images != DG_DATA:
        return settings
    dg = recipe.stages.get("dg")
    if dg is None:
        raise AugurError(f"{recipe.where('render')}.init_images: {DG_DATA} names the dg section's data, and this "
                         "recipe has no dg section")
    base = dg.base
    domains = settings.init_domains
    if any(cfg.data_free for _, _, cfg in dg.runs):
        raise AugurError(f"{recipe.where('render')}.init_images: a data-free dg section tests on every domain of "
                         f"{base.data}: its photos must not guide the images it trains on")
    if domains is None and base.single_source:
        domains = [base.single_source]
    elif domains is None and base.test_domains:
        raise AugurError(f"{recipe.where('render')}.init_images: dg tests on {', '.join(base.test_domains)} in every "
                         "run, and their photos must not guide: name the guide domains (dg's training domains) in "
                         "init_domains")
    return dataclasses.replace(settings, init_images=base.data, init_domains=domains)


def check(stage, recipe: RecipeView, settings: Any) -> None:
    from ... import models

    if settings.init_images == DG_DATA:
        guide_settings(recipe, settings)  # a recipe that cannot resolve it is one line, before any work
    if _is_folder(settings.model):
        return
    card = models.load_cards().get(settings.model)
    if card is None or card.kind not in ("diffusers", "onnx"):
        raise AugurError(f"{recipe.where(stage.name)}.model: {settings.model!r} is not a diffusers or onnx model "
                         "card or a pipeline folder")


def preflight(stage, recipe: RecipeView, settings: Any) -> None:
    if not _is_folder(settings.model):
        check_model_present(recipe, settings.model)
    guides = settings.init_images
    if guides not in (None, DG_DATA, "digits") and not Path(guides).expanduser().is_dir():
        raise AugurError(f"{recipe.where(stage.name)}.init_images: {settings.init_images} is not a folder here")


def hash_settings(stage, settings: Any, recipe: RecipeView) -> dict[str, Any]:
    from .pipeline import pick_render_model

    if settings.init_images == DG_DATA:  # the data it names decides the images, not the words dg.data
        settings = guide_settings(recipe, settings)
    params = stage.section(settings)
    if params["model"] == "auto":  # the model auto picks here, so that importing one re-renders
        params["model"] = pick_render_model()
    return params


def smoke(settings: Any, ctx: SmokeContext) -> Any:
    import dataclasses

    from ..smoke_data import stand_in

    init_images = settings.init_images
    if init_images not in (None, DG_DATA, "digits"):  # a folder of the user's: small guides of the smoke classes
        from ..smoke_data import make_dg_data

        init_images = str(ctx.data_root / "guides")
        if ctx.build:
            make_dg_data(Path(init_images), settings.init_domains or ["domain_a", "domain_b"],
                         ctx.classes or [])
    return dataclasses.replace(settings, model=stand_in(settings.model, ctx.build), size=None,
                               images_per_prompt=min(settings.images_per_prompt, 2), init_images=init_images,
                               steps=min(settings.steps, 2) if settings.steps and not init_images else None,
                               batch_size=4)
