"""Datasets in the DomainBed layout ROOT/<domain>/<class>/<image>, and the built-in RotatedDigits.

`digits` is scikit-learn's 1,797 real handwritten digits served as DomainBed's RotatedMNIST protocol:
the digits are split (seeded) into six disjoint parts, rotated by 0, 15, ..., 75 degrees. It is small
enough for tests and a CPU demo, and real.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import AugurError

IMAGE_EXTS = {".png", ".jpg", ".jpeg", ".bmp", ".webp", ".gif", ".tif", ".tiff"}
DIGIT_ANGLES = (0, 15, 30, 45, 60, 75)
BUILTIN = ("digits",)


@dataclass
class Domain:
    name: str
    images: list  # file paths, or uint8 HxW(x3) arrays for built-in data
    labels: np.ndarray


@dataclass
class MultiDomain:
    classes: list[str]
    domains: list[Domain]
    source: str

    def domain(self, name: str) -> Domain:
        for d in self.domains:
            if d.name == name:
                return d
        raise AugurError(f"no domain '{name}' in {self.source}; domains: {', '.join(self.names)}")

    @property
    def names(self) -> list[str]:
        return [d.name for d in self.domains]


def load(source: str | Path, skipped_report: bool = True) -> MultiDomain:
    """'digits' or a DomainBed-layout folder (the render stage's output is one)."""
    if str(source) == "digits":
        return rotated_digits()
    return folder_dataset(Path(source), skipped_report)


def rotated_digits(seed: int = 0) -> MultiDomain:
    from PIL import Image
    from sklearn.datasets import load_digits

    d = load_digits()
    order = np.random.RandomState(seed).permutation(len(d.images))
    parts = np.array_split(order, len(DIGIT_ANGLES))
    domains = []
    for angle, idx in zip(DIGIT_ANGLES, parts):
        imgs = []
        for i in idx:
            # 0..16 grey levels on 8x8 → 0..255 on 32x32, then the domain's rotation.
            im = Image.fromarray((d.images[i] * (255.0 / 16.0)).astype(np.uint8)).resize((32, 32), Image.BILINEAR)
            imgs.append(np.asarray(im.rotate(angle, resample=Image.BILINEAR)))
        domains.append(Domain(f"{angle}", imgs, d.target[idx].astype(np.int64)))
    return MultiDomain([str(c) for c in range(10)], domains, "digits")


def _image_ok(path: Path) -> bool:
    from PIL import Image

    try:
        with Image.open(path) as im:
            im.verify()
        return True
    except Exception:  # PIL raises a zoo of types for broken files
        return False


def folder_dataset(root: Path, report: bool = True) -> MultiDomain:
    if not root.is_dir():
        raise AugurError(f"{root}: no such dataset folder (or use the built-in 'digits')")
    domain_dirs = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not domain_dirs:
        raise AugurError(f"{root}: expected ROOT/<domain>/<class>/<image> folders")
    per_domain = {d.name: sorted(c.name for c in d.iterdir() if c.is_dir() and not c.name.startswith("."))
                  for d in domain_dirs}
    classes = sorted(set().union(*per_domain.values()))
    # Rendered domains are often per class (an extrapolated domain for one class only): a domain may
    # hold a subset of the classes, but a class name must never be unknown to the label set.
    if not classes:
        raise AugurError(f"{root}: no class folders inside the domain folders")
    index = {c: i for i, c in enumerate(classes)}
    domains, skipped = [], 0
    for d in domain_dirs:
        paths, labels = [], []
        for c in per_domain[d.name]:
            for p in sorted((d / c).iterdir()):
                if p.suffix.lower() in IMAGE_EXTS and not p.name.startswith("."):
                    if _image_ok(p):
                        paths.append(p)
                        labels.append(index[c])
                    else:
                        skipped += 1
        if paths:
            domains.append(Domain(d.name, paths, np.array(labels, dtype=np.int64)))
    if skipped and report:
        print(f"warning: skipped {skipped} unreadable image(s) under {root}", file=sys.stderr)
    if not domains:
        raise AugurError(f"{root}: no readable images")
    return MultiDomain(classes, domains, str(root))


def check_same_classes(a: MultiDomain, b: MultiDomain) -> None:
    """Real and synthetic data must share the label set; a mismatch names the classes."""
    extra = sorted(set(b.classes) - set(a.classes))
    missing = sorted(set(a.classes) - set(b.classes))
    if extra or missing:
        parts = []
        if extra:
            parts.append(f"only in {b.source}: {', '.join(extra)}")
        if missing:
            parts.append(f"only in {a.source}: {', '.join(missing)}")
        raise AugurError("class names differ between datasets (" + "; ".join(parts) + ")")


def split(n: int, holdout: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A seeded train / validation split of range(n) (DomainBed's per-domain 80/20)."""
    order = np.random.RandomState(seed).permutation(n)
    k = int(round(n * holdout))
    return np.sort(order[k:]), np.sort(order[:k])


# Decoded tensors are kept in memory up to this size: decoding (PIL open + resize) every epoch would
# otherwise cost a fifth of a LoRA epoch on small images.
DECODED_CACHE_BYTES = 1 << 30


class ImageSet:
    """A torch Dataset over (image, label) from one or more domains, resized to a fixed square size."""

    def __init__(self, parts: list[tuple[Domain, np.ndarray]], image_size: int):
        self.items = [(d.images[i], int(d.labels[i])) for d, idx in parts for i in idx]
        self.image_size = image_size
        self._decoded: dict[int, object] = {}
        self.unreadable: set[int] = set()

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int):
        # A file can pass the cheap check at load time and still fail to decode (a truncated JPEG does):
        # it is skipped with a warning, and the next readable image stands in, so an epoch never dies.
        for j in (k % len(self.items) for k in range(i, i + len(self.items))):
            if j in self.unreadable:
                continue
            hit = self._decoded.get(j)
            if hit is not None:
                return hit, self.items[j][1]
            try:
                x = self._decode(j)
            except Exception as e:  # PIL raises a zoo of types for broken files
                self.unreadable.add(j)
                print(f"warning: skipped unreadable image {self.items[j][0]} ({e.__class__.__name__}: {e}); "
                      f"{len(self.unreadable)} so far", file=sys.stderr)
                continue
            if len(self.items) * 3 * self.image_size ** 2 * 4 <= DECODED_CACHE_BYTES:
                self._decoded[j] = x
            return x, self.items[j][1]
        raise AugurError("no readable image left in this dataset")

    def _decode(self, i: int):
        import torch
        from PIL import Image

        img, _ = self.items[i]
        if isinstance(img, np.ndarray):
            im = Image.fromarray(img)
        else:
            with Image.open(img) as f:
                im = f.convert("RGB")
        im = im.convert("RGB").resize((self.image_size, self.image_size), Image.BILINEAR)
        x = torch.from_numpy(np.asarray(im, dtype=np.float32) / 255.0).permute(2, 0, 1)
        return (x - 0.5) / 0.5
