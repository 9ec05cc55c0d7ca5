"""Stage 2, `augur render`: prompt rows become images in the DomainBed layout, with a manifest.

This file is the stage's descriptor (stages/descriptor.py); the work is in stage.py, the command in
command.py."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ...core.errors import AugurError
from .config import RenderConfig
from ..descriptor import RecipeView, SmokeContext, Stage, StageResult, check_model_present, register


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


@register
class Render(Stage):
    name = "render"
    report_rank = 30
    settings = RenderConfig

    def command(self):
        from .command import render  # its Click command (command.py imports this package)

        return render

    def inputs(self, settings: Any) -> list[str]:
        return ["extrapolate"]  # its prompts

    def check(self, recipe: RecipeView, settings: Any) -> None:
        from ... import models

        if settings.init_images == DG_DATA:
            guide_settings(recipe, settings)  # a recipe that cannot resolve it is one line, before any work
        if _is_folder(settings.model):
            return
        card = models.load_cards().get(settings.model)
        if card is None or card.kind not in ("diffusers", "onnx"):
            raise AugurError(f"{recipe.where(self.name)}.model: {settings.model!r} is not a diffusers or onnx model "
                             "card or a pipeline folder")

    def preflight(self, recipe: RecipeView, settings: Any) -> None:
        if not _is_folder(settings.model):
            check_model_present(recipe, settings.model)
        guides = settings.init_images
        if guides not in (None, DG_DATA, "digits") and not Path(guides).expanduser().is_dir():
            raise AugurError(f"{recipe.where(self.name)}.init_images: {settings.init_images} is not a folder here")

    def hash_settings(self, settings: Any, recipe: RecipeView) -> dict[str, Any]:
        from .pipeline import pick_render_model

        if settings.init_images == DG_DATA:  # the data it names decides the images, not the words dg.data
            settings = guide_settings(recipe, settings)
        params = self.section(settings)
        if params["model"] == "auto":  # the model auto picks here, so that importing one re-renders
            params["model"] = pick_render_model()
        return params

    def run(self, settings: Any, out: Path, recipe: RecipeView) -> StageResult:
        import dataclasses

        from .stage import render_stage

        return render_stage(recipe.output("extrapolate") / "prompts.jsonl", self.output(out),
                            dataclasses.replace(guide_settings(recipe, settings), quiet=not recipe.progress))

    def output(self, folder: Path) -> Path:
        return folder / "images"  # the recipe folder keeps DONE.json beside the DomainBed-layout folder

    def smoke(self, settings: Any, ctx: SmokeContext) -> Any:
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

    def folders(self, root: Path) -> list[Path]:
        from ...core.outdir import record_of

        if record_of(root) is None and record_of(root / "images") == self.name:
            return [root / "images"]  # a recipe's render folder
        return super().folders(root)

    def report(self, folders: list[Path], page: Any) -> None:
        from ...core.files import read_json

        for f in folders:
            ident = read_json(f / self.record)["identity"]
            page.section("Generated images")
            if ident["model"] == "tiny-lcm" or "-tiny" in ident["model"]:
                page.text(f"**These images were drawn by `{ident['model']}`, a random-weight model: they are noise.** "
                          "Import a real diffusion model (`augur models import NAME PATH`) for real images.")
            else:
                page.text(f"These images were drawn by `{ident['model']}` (sha256 `{ident['model_sha256'][:16]}…`).")
            guides = ident.get("init_images")
            if isinstance(guides, dict):
                rec = read_json(f / self.record)
                page.text(f"Guided by real images ({ident.get('pipeline', 'image-to-image')}): each image started from "
                          f"a photo of its class in `{rec.get('init_images')}` (domains "
                          f"{', '.join(map(str, guides.get('domains') or []))}), at strength "
                          f"{', '.join(f'{x:g}' for x in ident.get('strengths') or [])}; manifest.jsonl names each "
                          "image's guide (`init_image`).")
            if (f / "contact_sheet.png").is_file():
                page.image(f / "contact_sheet.png", "contact sheet")
            page.provenance("render", ident["model"], ident["model_sha256"], ident["seed"],
                            f"{ident['backend']}/{ident['device']}/{ident['dtype']}, {ident['scheduler']}, "
                            f"{ident['steps']} steps, {ident['size']} px")

    def progress(self, folder: Path, section: dict[str, Any]) -> str:
        from ...core.files import read_json, read_jsonl

        images = self.output(folder)
        done = sum(len(read_jsonl(m, tolerate_torn_tail=True)) for m in images.glob("manifest*.jsonl"))
        record = images / self.record
        info = read_json(record) if record.is_file() else {}
        prompts = info.get("prompts")
        ident = info.get("identity", {})
        total = (len(read_jsonl(Path(prompts))) * ident.get("images_per_prompt", 1) * len(ident.get("strengths") or [1])
                 if prompts and Path(prompts).is_file() else None)
        return f"{done} of {total} images" if total else f"{done} images"
