"""Datasets: DomainBed-layout folders ROOT/<domain>/<class>/<image>, render outputs, and the built-in digits.

- `digits` for dg is scikit-learn's 1,797 real handwritten digits served as DomainBed's RotatedMNIST
  protocol: split (seeded) into six disjoint parts rotated by 0, 15, ..., 75 degrees. For cl it is the
  unrotated digits (SplitDigits).
- A render output (it has manifest.jsonl), or a curated one, is read through its manifest: the exact class and domain
  labels, whatever the folder names encode.
- Any other folder is read as DomainBed does: the folder names are the labels.

What DomainBed decides by dataset class, Augur reads off the data: DomainBed augments its image
folders and never its MNIST datasets, so the built-in digits are not augmented by default and a
folder is, unless its root holds `augur-dataset.json` with `{"augment": false}` (a DomainBed-layout
RotatedMNIST export, say). `image_px` is the data's own image size (before --image-size resizes it),
which picks the hyper-parameter regime together with the weights (dg/hparams.py).

Images of every PIL mode are read correctly (`load_image`): 16-bit and 32-bit greyscale are scaled to
8 bits (PIL's own convert clips them, turning most of an image white), palette and alpha images are
composited over white, CMYK and the rest converted to RGB.
"""

from __future__ import annotations

import functools
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..core.errors import AugurError
from ..core.files import read_jsonl

IMAGE_EXTS = {".png", ".jpg", ".jpeg", ".bmp", ".webp", ".gif", ".tif", ".tiff"}
DATASET_FILE = "augur-dataset.json"  # optional, at a folder's root: what DomainBed would know by the dataset's class
DATASET_KEYS = {"augment": bool}
DIGIT_ANGLES = (0, 15, 30, 45, 60, 75)
BUILTIN = ("digits",)


@dataclass
class Domain:
    name: str
    images: list  # file paths, or uint8 HxW(x3) arrays for built-in data
    labels: np.ndarray
    # per image, the real domain of the photo that guided it (a guided render's manifest: init_image.domain);
    # None for images drawn from text alone, and for data that is not a render output
    sources: list | None = None

    def __len__(self) -> int:
        return len(self.labels)


@dataclass
class MultiDomain:
    classes: list[str]
    domains: list[Domain]
    source: str
    in_memory: bool = False  # arrays, not files (no decoding cost, no workers needed)
    augment: bool = True  # DomainBed augments image folders, never its MNIST datasets (see the module docstring)

    def domain(self, name: str) -> Domain:
        for d in self.domains:
            if d.name == name:
                return d
        raise AugurError(f"no domain '{name}' in {self.source}; domains: {', '.join(self.names)}")

    @property
    def names(self) -> list[str]:
        return [d.name for d in self.domains]

    def pooled(self) -> list[tuple[Any, int]]:
        return [(img, int(lab)) for dom in self.domains for img, lab in zip(dom.images, dom.labels)]

    def image_px(self, per_domain: int = 16) -> int:
        """The data's image size: the median longer side of the first images of every domain (file headers
        only, nothing is decoded)."""
        sides = []
        for d in self.domains:
            for img in d.images[:per_domain]:
                sides.append(max(_size_of(img)))
        return int(np.median(sides)) if sides else 0


def _size_of(img) -> tuple[int, int]:
    if isinstance(img, np.ndarray):
        return img.shape[1], img.shape[0]
    from PIL import Image

    try:
        with Image.open(img) as im:
            return im.size
    except Exception:  # unreadable files are skipped later; they say nothing of the size
        return (0, 0)


def load(source: str | Path, report: bool = True, rotated: bool = True) -> MultiDomain:
    """'digits' (rotated for DG, plain for CL), a render output, or a DomainBed-layout folder."""
    if str(source) == "digits":
        return rotated_digits() if rotated else plain_digits()
    root = Path(source)
    if (root / "manifest.jsonl").is_file() and ((root / "render.json").is_file() or (root / "curate.json").is_file()):
        return render_output(root, report)  # a curated folder is read as a render folder is
    return folder_dataset(root, report)


def _digit_images():
    """The 1,797 digits as 32x32 images and their labels: fresh lists and arrays (the decoded images are made once
    per process; a recipe or a library caller loads digits for every run, twice with the data's fingerprint)."""
    imgs, target = _decoded_digits()
    return list(imgs), target.copy()


@functools.lru_cache(maxsize=1)
def _decoded_digits():
    from PIL import Image
    from sklearn.datasets import load_digits

    d = load_digits()
    # 0..16 grey levels on 8x8 → 0..255 on 32x32
    imgs = tuple(Image.fromarray((im * (255.0 / 16.0)).astype(np.uint8)).resize((32, 32), Image.BILINEAR)
                 for im in d.images)
    return imgs, d.target.astype(np.int64)


def rotated_digits(seed: int = 0) -> MultiDomain:
    from PIL import Image

    imgs, target = _digit_images()
    order = np.random.RandomState(seed).permutation(len(imgs))
    parts = np.array_split(order, len(DIGIT_ANGLES))
    domains = [Domain(f"{angle}", [np.asarray(imgs[i].rotate(angle, resample=Image.BILINEAR)) for i in idx],
                      target[idx]) for angle, idx in zip(DIGIT_ANGLES, parts)]
    return MultiDomain([str(c) for c in range(10)], domains, "digits", in_memory=True, augment=False)


def plain_digits() -> MultiDomain:
    imgs, target = _digit_images()
    return MultiDomain([str(c) for c in range(10)], [Domain("digits", [np.asarray(i) for i in imgs], target)],
                       "digits", in_memory=True, augment=False)


def _readable(path: Path) -> bool:
    """Cheap: the header parses and has a size. A file that fails later, when decoded, is skipped then."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            return im.size[0] > 0 and im.size[1] > 0
    except Exception:  # PIL raises a zoo of types for broken files
        return False


def _assemble(root: Path, classes: list[str], per_domain: dict[str, list[tuple[Path, str]]], report: bool,
              source: str) -> MultiDomain:
    index = {c: i for i, c in enumerate(classes)}
    domains, skipped = [], 0
    for name, items in per_domain.items():
        paths, labels = [], []
        for p, c in items:
            if _readable(p):
                paths.append(p)
                labels.append(index[c])
            else:
                skipped += 1
        if paths:
            domains.append(Domain(name, paths, np.array(labels, dtype=np.int64)))
    if skipped and report:
        print(f"warning: skipped {skipped} unreadable image(s) under {root}", file=sys.stderr)
    if not domains:
        raise AugurError(f"{root}: no readable images")
    return MultiDomain(classes, domains, source, augment=dataset_options(root).get("augment", True))


def dataset_options(root: Path) -> dict[str, Any]:
    """ROOT/augur-dataset.json, checked: what the data says of itself (see the module docstring)."""
    import json

    f = Path(root) / DATASET_FILE
    if not f.is_file():
        return {}
    try:
        opts = json.loads(f.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise AugurError(f"{f}: not valid JSON ({e.__class__.__name__})") from None
    if not isinstance(opts, dict):
        raise AugurError(f"{f}: expected a JSON object such as {{\"augment\": false}}")
    for k, v in opts.items():
        if k not in DATASET_KEYS:
            raise AugurError(f"{f}: unknown key '{k}' (known: {', '.join(DATASET_KEYS)})")
        if not isinstance(v, DATASET_KEYS[k]):
            raise AugurError(f"{f}: '{k}' must be true or false")
    return opts


def folder_dataset(root: Path, report: bool = True) -> MultiDomain:
    if not root.is_dir():
        raise AugurError(f"{root}: no such dataset folder (or use the built-in 'digits')")
    domain_dirs = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not domain_dirs:
        raise AugurError(f"{root}: expected ROOT/<domain>/<class>/<image> folders")
    per_domain_classes = {d.name: sorted(c.name for c in d.iterdir() if c.is_dir() and not c.name.startswith("."))
                          for d in domain_dirs}
    classes = sorted(set().union(*per_domain_classes.values()))
    # Rendered domains are often per class (an extrapolated domain for one class only): a domain may
    # hold a subset of the classes, but a class name must never be unknown to the label set.
    if not classes:
        raise AugurError(f"{root}: no class folders inside the domain folders")
    per_domain = {d.name: [(p, c) for c in per_domain_classes[d.name] for p in sorted((d / c).iterdir())
                           if p.suffix.lower() in IMAGE_EXTS and not p.name.startswith(".")] for d in domain_dirs}
    return _assemble(root, classes, per_domain, report, str(root))


def render_output(root: Path, report: bool = True) -> MultiDomain:
    """A render folder through its manifest: exact labels (folder names only encode them)."""
    rows = read_jsonl(root / "manifest.jsonl", tolerate_torn_tail=True)
    if not rows:
        raise AugurError(f"{root}: the manifest lists no images (is the render finished?)")
    classes = sorted({r["class"] for r in rows})
    per_domain: dict[str, list[tuple[Path, str]]] = {}
    sources: dict[Path, str | None] = {}
    for r in rows:
        per_domain.setdefault(r["domain"], []).append((root / r["path"], r["class"]))
        guide = r.get("init_image")
        sources[root / r["path"]] = guide.get("domain") if isinstance(guide, dict) else None
    ds = _assemble(root, classes, dict(sorted(per_domain.items())), report, str(root))
    if any(v is not None for v in sources.values()):
        for d in ds.domains:
            d.sources = [sources[p] for p in d.images]
    return ds


def fingerprint(ds: MultiDomain) -> dict[str, Any]:
    """What a run trained on, cheaply: the source, its classes, and a digest of every image's path and
    size (a render output's manifest digest), so other data in the same folder is told apart."""
    from ..core.cache import key_of
    from ..core.files import sha256_file

    root = Path(ds.source)
    if ds.in_memory:
        digest = key_of(ds.source, [(d.name, len(d)) for d in ds.domains])
    elif (root / "manifest.jsonl").is_file():
        digest = sha256_file(root / "manifest.jsonl")
    else:
        digest = key_of([(str(Path(p).relative_to(root)), Path(p).stat().st_size) for d in ds.domains for p in d.images])
    return {"source": ds.source, "classes": len(ds.classes), "images": sum(len(d) for d in ds.domains),
            "sha256": digest}


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
    """DomainBed's per-environment split: (in, out) with int(n * holdout) in the out-split, keys
    shuffled by a seeded RandomState (misc.split_dataset)."""
    keys = list(range(n))
    np.random.RandomState(seed).shuffle(keys)
    k = int(n * holdout)
    return np.array(sorted(keys[k:]), dtype=np.int64), np.array(sorted(keys[:k]), dtype=np.int64)


# ----------------------------------------------------------------------------- reading images
def load_image(src) -> "Any":
    """A PIL RGB image from a path or an array, whatever the file's mode (see the module docstring)."""
    from PIL import Image

    if isinstance(src, np.ndarray):
        return to_rgb(Image.fromarray(src))
    with Image.open(src) as im:
        im.load()
        return to_rgb(im)


def to_rgb(im):
    from PIL import Image

    mode = im.mode
    if mode == "RGB":
        return im
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        a = np.asarray(im, dtype=np.float64)
        top = 65535.0 if mode.startswith("I;16") or (mode == "I" and a.max(initial=0) <= 65535) else max(
            float(a.max(initial=0)), 1.0)
        if mode == "F":
            top = 1.0 if a.max(initial=0) <= 1.0 else 255.0
        g = np.clip(np.round(a * (255.0 / top)), 0, 255).astype(np.uint8)
        return Image.fromarray(g, "L").convert("RGB")
    if mode == "P" and "transparency" in im.info:
        im = im.convert("RGBA")
        mode = "RGBA"
    if mode in ("RGBA", "LA", "PA", "La", "RGBa"):
        rgba = im.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return im.convert("RGB")
