"""Settings every training stage shares, declared once (pretrain, dg and cl take them by inheritance)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from ..core.device import PRECISIONS
from ..core.settings import ShowsProgress, quiet_setting, seed_setting, setting, threads_setting


def _backbones():
    from .backbones import BACKBONES

    return BACKBONES.names()


@dataclass
class BackboneSettings:
    backbone: str | None = setting(None, "Architecture (timm); default resnet18, or the one --weights carries.",
                                   choices=_backbones)
    weights: str = setting("none", "none (random init), imagenet (the architecture's ImageNet card), or a "
                                   "folder from `augur pretrain`, a .safetensors file, a backbone card.",
                           metavar="none|imagenet|PATH")
    image_size: int | None = setting(None, "Images are resized to SIZE x SIZE (auto: the size the weights were "
                                           "trained at: 224 for ImageNet and CLIP weights, 240/260 for "
                                           "EfficientNet-Lite1/2, a pretrain folder's own; 32 for random init).",
                                     min=16, max=1024, none_word="auto")

    def sized(self, arch: str, weights: Any) -> tuple[Any, str]:
        """These settings with the image size decided (an explicit one stays), and why: before a stage's
        identity is taken, so a folder records the size it trained at."""
        if self.image_size is not None:
            return self, "--image-size"
        from .backbones import trained_input_size

        size, why = trained_input_size(arch, weights)
        return dataclasses.replace(self, image_size=size), f"auto: {why}"


@dataclass
class LoopSettings(ShowsProgress):
    precision: str = setting("auto", "fp32, bf16 or fp16 (mixed precision); auto: bf16/fp16 on CUDA, fp32 on CPU.",
                             choices=PRECISIONS)
    workers: int | None = setting(None, "DataLoader worker processes (default: 0 when decoded images fit in "
                                        "memory, else up to 8).", min=0, max=64, none_word="auto")
    seed: int = seed_setting()
    threads: int | None = threads_setting('every result')
    quiet: bool = quiet_setting()

    def train_precision(self) -> str:
        """fp32, bf16 or fp16 on this process's device, resolved once (core/device.py's policy); an
        impossible request (fp16 on a CPU) is refused here, before a stage claims its folder."""
        from ..core.device import pick_device, resolve_precision

        if getattr(self, "_precision", None) is None:
            self._precision = resolve_precision(self.precision, pick_device(), "train")
        return self._precision


@dataclass
class LoraSettings:
    lora: bool = setting(False, "Train LoRA adapters (peft) on the backbone, or fine-tune every weight (--no-lora).")
    lora_rank: int = setting(8, "LoRA rank.", min=1, max=1024)
