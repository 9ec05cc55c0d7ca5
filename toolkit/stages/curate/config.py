"""The settings of `augur curate` (one source: CLI options, recipe keys, validation).

Curation is deterministic: every score is a model's forward pass, ties are broken by image id, so it
takes no seed (a seed option would be a no-op)."""

from __future__ import annotations

from dataclasses import dataclass

from ...core.device import DEVICES
from ...core.settings import SettingError, ShowsProgress, quiet_setting, setting, threads_setting


@dataclass
class CurateConfig(ShowsProgress):
    scorer: str = setting("auto", "A scorer card: clip-vit-b16, clip-vit-l14 (or their -tiny stand-ins), or the "
                                  "embedded ImageNet classifier efficientnet-lite0-imagenet; auto: the best one "
                                  "present.", metavar="CARD")
    real: str | None = setting(None, "A real DomainBed-layout folder (or 'digits'): Fréchet distance (and CMMD "
                                     "with a CLIP scorer) to it, and near-copies of its images.",
                               metavar="digits|DIR")
    min_clip_score: float | None = setting(None, "Reject images whose CLIPScore against their own prompt is below "
                                                 "this (100 * max(cos, 0); CLIP scorers only).", min=0.0, max=100.0,
                                           none_word="none")
    require_class_agreement: bool = setting(True, "Reject images whose zero-shot top-1 over the set's classes is "
                                                  "another class.")
    max_entropy: float | None = setting(None, "Reject images whose class distribution has a higher entropy (nats; "
                                              "FDS's confidence filter).", min=0.0, max=20.0, none_word="none")
    # 0.99: measured with the ImageNet classifier, distinct noise images of one class reach cosine 0.975-0.981,
    # while a resized, re-encoded photo reaches only 0.80 with its original: copies are the pHash's to find.
    dedup_threshold: float = setting(0.99, "Two images of a class are near-copies when their embeddings' cosine "
                                           "is at least this (or their pHashes are close); only the better-scored "
                                           "one is kept.", min=0.0, min_open=True, max=1.0)
    hash_distance: int = setting(4, "Near-copies by perceptual hash: pHashes (64 bits) that differ in at most this "
                                    "many bits (-1: hashes off).", min=-1, max=64)
    max_per_class: int | None = setting(None, "Keep at most the K best-scored images per class (balanced classes "
                                              "after filtering).", min=1, max=10**7, none_word="none")
    batch_size: int = setting(32, "Images per scorer forward pass.", min=1, max=4096)
    device: str = setting("auto", "auto (CUDA when a GPU is visible), cpu or cuda.", choices=DEVICES)
    workers: int | None = setting(None, "DataLoader workers that decode images while the scorer runs (default: "
                                        "up to 4 on a GPU, 1 on a CPU).", min=0, max=64, none_word="auto",
                                  recipe=False)
    threads: int | None = threads_setting()
    quiet: bool = quiet_setting()

    def check(self) -> None:
        if self.min_clip_score is not None and self.scorer != "auto" and not _is_clip(self.scorer):
            raise SettingError("min_clip_score", f"needs a CLIP scorer; '{self.scorer}' scores no prompts")

    def thresholds(self) -> dict:
        return {"min_clip_score": self.min_clip_score, "require_class_agreement": self.require_class_agreement,
                "max_entropy": self.max_entropy, "dedup_threshold": self.dedup_threshold,
                "hash_distance": self.hash_distance, "max_per_class": self.max_per_class}


def _is_clip(name: str) -> bool:
    from ... import models

    cards = models.load_cards()
    return name in cards and cards[name].kind == "clip"
