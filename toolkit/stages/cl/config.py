"""The settings of `augur cl` (one source: CLI options, recipe keys, validation)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ...core.settings import SettingError, setting, typed_hparams
from ...learn.config import BackboneSettings, LoopSettings, LoraSettings


def _strategies():
    from .strategies import STRATEGIES

    return STRATEGIES.names(aliases=True)


@dataclass
class CLConfig(BackboneSettings, LoraSettings, LoopSettings):
    data: str = setting("digits", "'digits' (SplitDigits) or a DomainBed-layout folder (domains pooled; domains "
                                  "named train and test are used as the split).", metavar="digits|DIR")
    strategy: str = setting("naive", "The continual-learning strategy (augur cl --list).", choices=_strategies)
    initial_classes: int = setting(2, "Classes of the first task (B in B{initial}-Inc{increment}).", min=1,
                                   max=100000)
    increment: int = setting(2, "Classes of each later task.", min=1, max=100000)
    class_order: str = setting("1993", "The class order: a seed (1993 is the iCaRL / PyCIL convention) or a file "
                                       "listing the classes in order, one per line.", metavar="SEED|FILE")
    epochs: int = setting(10, "Passes over each task's training data (strategies that train).", min=0, max=100000)
    batch_size: int = setting(32, "Images per step (per process under `accelerate launch`).", min=2, max=65536)
    lr: float = setting(1e-3, "AdamW learning rate.", min=0.0, min_open=True, max=10.0)
    weight_decay: float = setting(0.0, "AdamW weight decay.", min=0.0, max=10.0)
    test_share: float = setting(0.2, "Share of every class held out for testing (when the data has no train/test "
                                     "domains).", min=0.0, min_open=True, max=0.9)
    hp: dict[str, Any] = setting({}, "A hyper-parameter, checked against its declared type and range "
                                     "(repeatable; augur cl --list).", metavar="KEY=VALUE")

    def check(self) -> None:
        from .strategies import STRATEGIES

        if self.epochs == 0 and STRATEGIES.get(self.strategy).trains:
            raise SettingError("epochs", f"strategy '{self.strategy}' trains: give --epochs of at least 1")
        if self.lora and not STRATEGIES.get(self.strategy).trains:
            raise SettingError("lora", f"strategy '{self.strategy}' trains no weight: LoRA adapters would stay as "
                                       "initialised (leave out --lora)")
        from .hparams import strategy_hparams

        self.hp = typed_hparams(dict(self.hp), strategy_hparams(self.strategy), f"strategy '{self.strategy}'")

    def protocol(self) -> str:
        return f"B{self.initial_classes}-Inc{self.increment}"
