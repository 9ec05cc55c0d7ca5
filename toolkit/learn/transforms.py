"""Image transforms as DomainBed and timm do them.

- Normalisation (mean, std) and interpolation come from the backbone's pretrained config (timm's
  `resolve_data_config`): ImageNet statistics for timm's ResNets, 0.5/0.5 for the TF EfficientNet-Lite
  weights. A random-init backbone uses its architecture's config too, so one run differs from another
  only by what it is asked to differ by.
- Evaluation: resize to SIZE x SIZE (DomainBed's Resize((224, 224)), at --image-size).
- Training augmentation (DomainBed's `augment_transform`): RandomResizedCrop(SIZE, scale=(0.7, 1.0)),
  RandomHorizontalFlip, ColorJitter(0.3, 0.3, 0.3, 0.3), RandomGrayscale.
- Each sample is augmented under its own seed (see `ImageSet`), so augmentation does not depend on the
  DataLoader worker that handles it or on the order of samples, and a resumed run sees the same images.
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


def _interp(name: str):
    from torchvision.transforms import InterpolationMode

    return {"bicubic": InterpolationMode.BICUBIC, "nearest": InterpolationMode.NEAREST}.get(
        name, InterpolationMode.BILINEAR)


def eval_transform(dc: DataConfig):
    from torchvision import transforms as T

    return T.Compose([T.Resize((dc.size, dc.size), interpolation=_interp(dc.interpolation)), T.ToTensor(),
                      T.Normalize(dc.mean, dc.std)])


def train_transform(dc: DataConfig):
    from torchvision import transforms as T

    return T.Compose([T.RandomResizedCrop(dc.size, scale=(0.7, 1.0), interpolation=_interp(dc.interpolation)),
                      T.RandomHorizontalFlip(), T.ColorJitter(0.3, 0.3, 0.3, 0.3), T.RandomGrayscale(),
                      T.ToTensor(), T.Normalize(dc.mean, dc.std)])


def tensor_transform(dc: DataConfig):
    """From a cached uint8 SIZE x SIZE image straight to the normalised tensor (evaluation, no PIL)."""
    import torch

    mean = torch.tensor(dc.mean).view(3, 1, 1)
    std = torch.tensor(dc.std).view(3, 1, 1)

    def apply(arr):
        x = torch.from_numpy(arr).permute(2, 0, 1).float().div_(255.0)
        return (x - mean) / std

    return apply
