"""`augur run RECIPE --smoke`: the whole recipe, end to end, in minutes on a CPU, before a GPU-day is spent.

- every model is replaced by its tiny stand-in (models/tiny.py: the real folder's structure, random
  weights; the embedded Gemma with the card's prompting style for LLM cards), pulled on first use;
- every data path is replaced by a small built-in dataset of the same layout, made of real digits:
  for dg, the recipe's domains (the extrapolate stage's exclude_domains and the single source, when it
  names them) and its classes (the extrapolate classes the rendered domains must match); for cl, a
  train/test split of six classes;
- counts are cut down: classes, images, epochs, steps, trials, class orders, random projection sizes.
Everything else, stage wiring and settings checks included, runs as the real recipe would, so a
recipe that does not fit together fails here.
"""

from __future__ import annotations

import copy
import dataclasses
from pathlib import Path

import numpy as np

from .. import models
from ..core.errors import AugurError
from .recipe import CLGrid, Recipe

SMOKE_CLASSES = 3
CL_CLASSES = 6
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


def _weights(value: str, arch: str | None, pull: bool) -> str:
    if value != "imagenet":
        return value
    from ..learn.backbones import family

    card = family(arch or "resnet18").imagenet_card
    card_obj = models.get_card(card)
    return card if "pypi" in card_obj.source else stand_in(card, pull)


def smoke_recipe(recipe: Recipe, data_root: Path, build: bool = True) -> Recipe:
    r = copy.deepcopy(recipe)
    r.smoke = True
    st = r.stages
    classes: list[str] | None = None
    domains: list[str] = []
    if "extrapolate" in st:
        ex = st["extrapolate"]
        changes = {"model": stand_in(ex.model, build), "max_attempts": 1}
        if hasattr(ex, "classes_per_group"):
            changes.update(groups=min(ex.groups, 2), classes_per_group=min(ex.classes_per_group, 2))
        else:
            if ex.classes:
                classes = list(ex.classes)[:SMOKE_CLASSES]
                changes["classes"] = classes
            changes["domains_per_class"] = 1
            domains = [d for d in (ex.exclude_domains or [])]
        st["extrapolate"] = dataclasses.replace(ex, **changes)
    if "render" in st:
        rd = st["render"]
        st["render"] = dataclasses.replace(rd, model=stand_in(rd.model, build), size=None,
                                           images_per_prompt=min(rd.images_per_prompt, 2),
                                           steps=min(rd.steps, 2) if rd.steps else None, batch_size=4)
    if "pretrain" in st:
        pt = st["pretrain"]
        st["pretrain"] = dataclasses.replace(pt, epochs=1, image_size=32, batch_size=16,
                                             weights=_weights(pt.weights, pt.backbone, build))
    if "dg" in st:
        dg = st["dg"]
        if dg.single_source and dg.single_source not in domains:
            domains.append(dg.single_source)
        # at least three real domains: leave-one-out selection and single-source testing need the others
        domains += [f"domain_{c}" for c in "abc"][:max(0, 3 - len(domains))]
        data = dg.data
        if dg.data != "digits":
            data = str(data_root / "dg")
            if build:
                make_dg_data(Path(data), domains,
                             classes or [f"class_{i}" for i in range(SMOKE_CLASSES)])
        st["dg"] = dataclasses.replace(dg, data=data, steps=6, checkpoint_freq=3, batch_size=4, trials=1, seeds=None,
                                       hparams_seed=[0], image_size=32,
                                       weights=_weights(dg.weights, dg.backbone, build))
    if "cl" in st:
        grid: CLGrid = st["cl"]
        base = grid.base
        # digits too: its 1,797 images per strategy and weight made one smoke run take minutes. The small
        # set keeps all ten digit classes, so the recipe's own B{initial}-Inc{increment} still fits.
        data = str(data_root / "cl")
        if base.data == "digits":
            n_classes, initial, increment = 10, base.initial_classes, base.increment
        else:
            n_classes, initial, increment = CL_CLASSES, 2, 2
        if build:
            make_cl_data(Path(data), n_classes)
        arch = base.backbone
        weights = [_weights(w, arch or _pretrain_arch(r), build) for w in grid.weights]
        hp = {s: {k: (min(v, 64) if k == "M" else v) for k, v in h.items()} for s, h in grid.hp.items()}
        for s in grid.strategies:
            if s in ("ranpac", "fsa"):
                hp.setdefault(s, {})["M"] = min(hp.get(s, {}).get("M", 64), 64)
        st["cl"] = CLGrid(dataclasses.replace(base, data=data, epochs=1, image_size=32, batch_size=16,
                                              initial_classes=initial, increment=increment),
                          grid.strategies, weights, grid.class_orders[:1], hp, labels=grid.labels or grid.weights)
    return r


def _pretrain_arch(r: Recipe) -> str | None:
    from .recipe import pretrain_arch

    return pretrain_arch(r)


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


def make_cl_data(root: Path, n_classes: int = CL_CLASSES) -> None:
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
