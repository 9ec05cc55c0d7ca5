"""Image transforms as DomainBed and timm do them.

- Normalisation (mean, std) and interpolation come from the backbone's pretrained config (timm's
  `resolve_data_config`): ImageNet statistics for timm's ResNets, 0.5/0.5 for the TF EfficientNet-Lite
  weights. A random-init backbone uses its architecture's config too, so one run differs from another
  only by what it is asked to differ by.
- Evaluation: resize to SIZE x SIZE (DomainBed's Resize((224, 224)), at --image-size), done once when
  the images are decoded (learn/images.py), then normalised per batch.
- Training augmentation (DomainBed's `augment_transform`): learn/augment.py, batched on the device.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class DataConfig:
    size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    interpolation: str = "bilinear"

    def as_dict(self) -> dict[str, Any]:
        return {"size": self.size, "mean": list(self.mean), "std": list(self.std), "interpolation": self.interpolation}


def data_config(model, size: int) -> DataConfig:
    import timm.data

    cfg = timm.data.resolve_data_config({}, model=model)
    return DataConfig(size, tuple(float(v) for v in cfg["mean"]), tuple(float(v) for v in cfg["std"]),
                      cfg.get("interpolation", "bilinear"))
