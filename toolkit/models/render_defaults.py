"""What a diffusers card says about rendering with its model (`extra.render`): declared once, so that
`augur models import --steps ...`, the shipped cards' YAML and render read the same ranges."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..core.errors import AugurError
from ..core.settings import Spec, check_value, setting, specs

# short name -> diffusers class (render/backends.py swaps the folder's scheduler for the card's)
SCHEDULERS = {"lcm": "LCMScheduler", "euler": "EulerDiscreteScheduler", "euler-a": "EulerAncestralDiscreteScheduler",
              "ddim": "DDIMScheduler", "pndm": "PNDMScheduler", "dpm++": "DPMSolverMultistepScheduler"}


@dataclass
class RenderDefaults:
    """A model's render defaults; a key left out falls to the pipeline class's own default at render time."""

    steps: int | None = setting(None, "Denoising steps the model is meant for (a distilled one: 1-8).", min=1,
                                max=1000)
    guidance: float | None = setting(None, "Its guidance scale.", min=0.0, max=100.0)
    size: int | None = setting(None, "Its native image side in pixels.", min=8, max=4096, multiple_of=8)
    scheduler: str | None = setting(None, "The scheduler to draw with (the folder's own when not given).",
                                    choices=tuple(SCHEDULERS))
    negative_prompt: str | None = setting(None, "A negative prompt, for pipelines that take one.")

    def given(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f, _, _ in specs(type(self)) if getattr(self, f.name) is not None}


def check_render_defaults(render: Any, where: str) -> None:
    """A card's `extra.render`: the declared keys in range (others, such as lora or strength, are the stages')."""
    if not isinstance(render, dict):
        raise AugurError(f"{where}: extra.render must be a mapping")
    for f, tp, spec in specs(RenderDefaults):
        if render.get(f.name) is None:
            continue
        try:
            check_value(render[f.name], tp, spec)
        except ValueError as e:
            raise AugurError(f"{where}: extra.render.{f.name}: {e}") from None


__all__ = ["RenderDefaults", "SCHEDULERS", "Spec", "check_render_defaults"]
