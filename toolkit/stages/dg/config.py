"""The settings of `augur dg` (one source: CLI options, recipe keys, validation)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ...core.settings import SEED_MAX, SettingError, setting, typed_hparams
from ...learn.config import BackboneSettings, LoopSettings, LoraSettings

SELECTIONS = ("training-domain", "leave-one-out", "oracle")
# as DomainBed's collect_results.py names them in its tables' captions
SELECTION_NAMES = {"training-domain": "training-domain validation set",
                   "leave-one-out": "leave-one-domain-out cross-validation",
                   "oracle": "test-domain validation set (oracle)"}
SYNTHETIC_ENVS = ("one", "per-domain")


def _algorithms():
    from .hparams import ALGORITHM_HPARAMS

    return list(ALGORITHM_HPARAMS)


@dataclass
class DGConfig(BackboneSettings, LoraSettings, LoopSettings):
    data: str = setting("digits", "'digits' (RotatedDigits) or a DomainBed-layout folder.", metavar="digits|DIR")
    algorithm: str = setting("ERM", "The DG algorithm (augur dg --list).", choices=_algorithms)
    steps: int | None = setting(None, "Training steps per run (default: DomainBed's 5001).", min=1, max=10**7,
                                none_word="auto")
    checkpoint_freq: int | None = setting(None, "Evaluate and checkpoint every N steps (default: DomainBed's, 100 "
                                                "for small images, 300 for image folders; with --swad SWAD's own, "
                                                "100 and 200).", min=1, max=10**7, none_word="auto")
    batch_size: int | None = setting(None, "Images per training environment per step (default: the "
                                           "algorithm's batch_size hyper-parameter).", min=2, max=65536,
                                     none_word="auto")
    lr: float | None = setting(None, "Learning rate (default: the lr hyper-parameter).", min=0.0, min_open=True,
                               max=10.0, none_word="auto")
    hp: dict[str, Any] = setting({}, "A hyper-parameter, checked against its declared type and range "
                                     "(repeatable; augur dg --list).", metavar="KEY=VALUE")
    augment: bool | None = setting(None, "DomainBed's training augmentation (random resized crop, flip, colour "
                                         "jitter, greyscale) for every training environment, or for none; default: "
                                         "as DomainBed, image folders yes, digits (and folders whose "
                                         "augur-dataset.json says so) no.")
    holdout_fraction: float = setting(0.2, "Share of every environment held out (its out-split).", min=0.0,
                                      min_open=True, max=0.9)
    test_domains: list[str] | None = setting(None, "Test domains, comma-separated (default: every real domain in "
                                                   "turn).")
    seeds: list[int] | None = setting(None, "Trial seeds, comma-separated (default: 0).", min=0, max=SEED_MAX)
    trials: int | None = setting(None, "Trial seeds 0..N-1 (instead of --seeds).", min=1, max=1000)
    hparams_seed: list[int] = setting([0], "Hyper-parameter draws, comma-separated: 0 = the defaults, h > 0 = "
                                           "DomainBed's random draw h.", min=0, max=SEED_MAX)
    selection: list[str] = setting(["training-domain", "oracle"], "Model-selection methods to report (both default "
                                                                  "ones come from the same runs); leave-one-out "
                                                                  "trains one more run per pair of real domains.",
                                   choices=SELECTIONS)
    synthetic: str | None = setting(None, "A render output to add as training environments.", metavar="DIR")
    synthetic_envs: str = setting("one", "How rendered domains join training: one extra environment, or each "
                                         "rendered domain an environment of its own.", choices=SYNTHETIC_ENVS)
    single_source: str | None = setting(None, "Train on this one real domain (+ synthetic), test on the others.")
    data_free: bool = setting(False, "Train on --synthetic alone, test on every real domain.", is_flag=True)
    swad: bool = setting(False, "SWAD: dense weight averaging over the validation-loss valley (wraps any "
                                "algorithm).", is_flag=True)

    def trial_seeds(self) -> list[int]:
        if self.trials is not None:
            return list(range(self.trials))
        return list(self.seeds) if self.seeds is not None else [0]

    def check(self) -> None:
        if self.seeds is not None and self.trials is not None:
            raise SettingError("trials", "give --seeds or --trials, not both")
        if self.data_free and not self.synthetic:
            raise SettingError("data_free", "trains on synthetic data only: give --synthetic DIR")
        if self.data_free and self.single_source:
            raise SettingError("data_free", "--data-free and --single-source exclude each other")
        if not self.selection:
            raise SettingError("selection", "give at least one model-selection method")
        from .hparams import declared

        # Typed here, once: names, types and ranges are the same in both hyper-parameter classes; the class
        # (and so the defaults) is picked by the stage once it has read the data (hparams.hparam_class).
        self.hp = typed_hparams(dict(self.hp), declared(self.algorithm, "resnet", self.weights != "none", self.swad),
                                self.algorithm)
