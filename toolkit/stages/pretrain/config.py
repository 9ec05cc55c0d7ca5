"""The settings of `augur pretrain` (one source: CLI options, recipe keys, validation)."""

from __future__ import annotations

from dataclasses import dataclass

from ...core.settings import SettingError, setting
from ...learn.config import BackboneSettings, LoopSettings, LoraSettings


@dataclass
class PretrainConfig(BackboneSettings, LoraSettings, LoopSettings):
    data: str | None = setting(None, "'digits', or a DomainBed-layout folder (e.g. a render output).",
                               metavar="digits|DIR")
    epochs: int = setting(5, "Passes over the data.", min=1, max=100000)
    batch_size: int = setting(64, "Images per step (per process under `accelerate launch`).", min=2, max=65536)
    lr: float = setting(1e-3, "AdamW learning rate.", min=0.0, min_open=True, max=10.0)
    weight_decay: float = setting(1e-4, "AdamW weight decay.", min=0.0, max=10.0)
    force: bool = setting(False, "Replace an earlier pretraining in --out (it retrains from scratch).",
                          is_flag=True, recipe=False)

    def check(self) -> None:
        if not self.data:
            raise SettingError("data", "give the training images: 'digits' or a folder")
