"""Stage 3, `augur pretrain`: supervised training on synthetic images; the head is thrown away (Premonition).

This file is the stage's descriptor (stages/descriptor.py); the work is in stage.py, the command in
command.py."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .config import PretrainConfig
from ..descriptor import RecipeView, SmokeContext, Stage, StageResult, check_folder_key, register


@register
class Pretrain(Stage):
    name = "pretrain"
    report_rank = 50
    refs = {"data": ("render", "curate")}
    settings = PretrainConfig

    def command(self):
        from .command import pretrain_cmd  # its Click command (command.py imports this package)

        return pretrain_cmd

    def parse(self, section: dict[str, Any], where: str, seed: int) -> Any:
        return super().parse({"data": "render", **section}, where, seed)  # in a recipe, the rendered images

    def exports(self, settings: Any) -> dict[str, Any]:
        return {"backbone": self.arch(settings), "image_size": settings.image_size}  # what a stage reading it builds

    def arch(self, settings: Any) -> str | None:
        """The architecture of the backbone these settings make."""
        from ...core.files import read_json

        if settings.backbone:
            return settings.backbone
        if settings.weights not in ("none", "imagenet"):
            info = Path(settings.weights) / "card.json"
            if info.is_file():
                return read_json(info).get("backbone")
        return "resnet18"

    def preflight(self, recipe: RecipeView, settings: Any) -> None:
        check_folder_key(recipe, self, "data", settings.data)

    def run(self, settings: Any, out: Path, recipe: RecipeView) -> StageResult:
        import dataclasses

        from .stage import pretrain

        cfg = dataclasses.replace(settings, quiet=not recipe.progress, data=recipe.resolve(settings.data, self.refs["data"]))
        return pretrain(cfg, out)

    def smoke(self, settings: Any, ctx: SmokeContext) -> Any:
        import dataclasses

        from ..smoke_data import smoke_weights

        return dataclasses.replace(settings, epochs=1, image_size=32, batch_size=16,
                                   weights=smoke_weights(settings.weights, settings.backbone, ctx.build))

    def report(self, folders: list[Path], page: Any) -> None:
        from ...core.files import read_json

        for f in folders:
            if not (f / "card.json").is_file():
                continue
            page.section("Pretrained backbone")
            card = read_json(f / "card.json")
            page.table(["backbone", "from", "LoRA", "images", "classes", "steps", "final loss", "seed"],
                       [[card["backbone"], card.get("init_weights", ""), card["lora"], card["images"],
                         len(card["classes"]), card["steps"], f"{card['history'][-1]['loss']:.3f}", card["seed"]]])
            page.provenance("pretrain", card["backbone"], card["files"]["backbone.safetensors"], card["seed"],
                            f"{card['images']} images, {card['steps']} steps")

    def unfinished(self, folder: Path, section: dict[str, Any]) -> str:
        from ...core.files import read_json

        steps = [read_json(p / "progress.json")["step"] + 1 for p in (folder / "checkpoint").glob("step-*")
                 if (p / "progress.json").is_file()]
        return f"{max(steps)} steps trained, no backbone saved yet" if steps else "no epoch finished yet"
