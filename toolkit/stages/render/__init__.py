"""Stage 2, `augur render`: prompt rows become images in the DomainBed layout, with a manifest.

This file is the stage's descriptor (stages/descriptor.py); the work is in stage.py, the command in
command.py."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ...core.errors import AugurError
from ..descriptor import RecipeView, SmokeContext, Stage, StageResult, check_model_present, register


def _is_folder(model: str) -> bool:
    return model == "auto" or Path(model).expanduser().is_dir()


@register
class Render(Stage):
    name = "render"
    order = 20
    report_rank = 30
    settings_from = "config:RenderConfig"
    command_from = "command:render"

    def inputs(self, settings: Any) -> list[str]:
        return ["extrapolate"]  # its prompts

    def check(self, recipe: RecipeView, settings: Any) -> None:
        from ... import models

        if _is_folder(settings.model):
            return
        card = models.load_cards().get(settings.model)
        if card is None or card.kind not in ("diffusers", "onnx"):
            raise AugurError(f"{recipe.where(self.name)}.model: {settings.model!r} is not a diffusers or onnx model "
                             "card or a pipeline folder")

    def preflight(self, recipe: RecipeView, settings: Any) -> None:
        if not _is_folder(settings.model):
            check_model_present(recipe, settings.model)

    def hash_settings(self, settings: Any) -> dict[str, Any]:
        from .pipeline import pick_render_model

        params = self.section(settings)
        if params["model"] == "auto":  # the model auto picks here, so that importing one re-renders
            params["model"] = pick_render_model()
        return params

    def run(self, settings: Any, out: Path, recipe: RecipeView) -> StageResult:
        import dataclasses

        from .stage import render_stage

        return render_stage(recipe.output("extrapolate") / "prompts.jsonl", self.output(out),
                            dataclasses.replace(settings, quiet=not recipe.progress))

    def output(self, folder: Path) -> Path:
        return folder / "images"  # the recipe folder keeps DONE.json beside the DomainBed-layout folder

    def smoke(self, settings: Any, ctx: SmokeContext) -> Any:
        import dataclasses

        from ..smoke_data import stand_in

        return dataclasses.replace(settings, model=stand_in(settings.model, ctx.build), size=None,
                                   images_per_prompt=min(settings.images_per_prompt, 2),
                                   steps=min(settings.steps, 2) if settings.steps else None, batch_size=4)

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
        total = (len(read_jsonl(Path(prompts))) * info.get("identity", {}).get("images_per_prompt", 1)
                 if prompts and Path(prompts).is_file() else None)
        return f"{done} of {total} images" if total else f"{done} images"
