"""`augur data convert`: a Premonition user's datasets, from their official releases to the DomainBed layout
that `cl` and `dg` read: OUT/train/<class>/ and OUT/test/<class>/, split by the dataset's own split files.

- CUB-200-2011 (`CUB_200_2011/` as the tarball unpacks): images.txt, image_class_labels.txt, classes.txt,
  train_test_split.txt and images/. 5,994 train and 5,794 test images of 200 classes.
- Stanford Cars: devkit/cars_meta.mat (class_names), devkit/cars_train_annos.mat, cars_test_annos_withlabels.mat
  (the test labels, released separately) and the cars_train/ and cars_test/ image folders. 8,144 train and
  8,041 test images of 196 classes.

Class folders are "NNN.name" in the dataset's class order (CUB's own folder names; for Cars the index and
the name, '/' replaced), so a sorted listing is the official class order. The tree is written beside OUT
and renamed into place whole, with OUT/convert.json (source files and their sha256, counts, link mode).
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from ..core.errors import AugurError
from ..core.files import sha256_file

LINKS = ("copy", "hardlink", "symlink")


@dataclass
class Sample:
    source: Path
    split: str  # train | test
    label: str  # the class folder name


def _lines(path: Path) -> list[list[str]]:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise AugurError(f"{path}: missing (is this the dataset's top folder, as its archive unpacks?)") from None
    except (OSError, UnicodeDecodeError) as e:
        raise AugurError(f"{path}: cannot read it ({e.__class__.__name__})") from None
    return [line.split(maxsplit=1) for line in text.splitlines() if line.strip()]


def _id_map(path: Path, what: str) -> dict[str, str]:
    out = {}
    for n, parts in enumerate(_lines(path), 1):
        if len(parts) != 2:
            raise AugurError(f"{path}: line {n}: expected '<id> <{what}>'")
        if parts[0] in out:
            raise AugurError(f"{path}: line {n}: id {parts[0]} appears twice")
        out[parts[0]] = parts[1].strip()
    return out


def cub_samples(root: Path) -> list[Sample]:
    images = _id_map(root / "images.txt", "image path")
    labels = _id_map(root / "image_class_labels.txt", "class id")
    classes = _id_map(root / "classes.txt", "class name")
    split = _id_map(root / "train_test_split.txt", "is_training_image")
    out = []
    for image_id, rel in images.items():
        for name, table in (("image_class_labels.txt", labels), ("train_test_split.txt", split)):
            if image_id not in table:
                raise AugurError(f"{root / name}: no line for image {image_id} ({rel})")
        if labels[image_id] not in classes:
            raise AugurError(f"{root / 'image_class_labels.txt'}: image {image_id} has class {labels[image_id]}, "
                             "which classes.txt does not name")
        if split[image_id] not in ("0", "1"):
            raise AugurError(f"{root / 'train_test_split.txt'}: image {image_id}: is_training_image must be 0 or 1")
        out.append(Sample(root / "images" / rel, "train" if split[image_id] == "1" else "test",
                          _safe(classes[labels[image_id]])))
    return out


def _mat(path: Path) -> dict:
    import scipy.io

    if not path.is_file():
        raise AugurError(f"{path}: missing (is this the dataset's top folder, as its archives unpack?)")
    try:
        return scipy.io.loadmat(str(path), squeeze_me=True, struct_as_record=False)
    except Exception as e:  # scipy raises its own types for a corrupt .mat
        raise AugurError(f"{path}: not a readable .mat file ({e.__class__.__name__})") from None


def cars_samples(root: Path) -> list[Sample]:
    devkit = root / "devkit"
    names = [str(n) for n in _as_list(_mat(devkit / "cars_meta.mat").get("class_names"))]
    if not names:
        raise AugurError(f"{devkit / 'cars_meta.mat'}: no class_names")
    labels = {i + 1: f"{i + 1:03d}.{_safe(n)}" for i, n in enumerate(names)}
    out = []
    for split, annos, folder in (("train", devkit / "cars_train_annos.mat", root / "cars_train"),
                                 ("test", root / "cars_test_annos_withlabels.mat", root / "cars_test")):
        rows = _as_list(_mat(annos).get("annotations"))
        if not rows:
            raise AugurError(f"{annos}: no annotations")
        for k, a in enumerate(rows):
            try:
                cls, fname = int(a.__dict__["class"]), str(a.fname)
            except (KeyError, AttributeError, TypeError, ValueError):
                raise AugurError(f"{annos}: annotation {k + 1} has no class and fname (the test labels are in "
                                 "cars_test_annos_withlabels.mat)") from None
            if cls not in labels:
                raise AugurError(f"{annos}: annotation {k + 1} ({fname}) has class {cls}; cars_meta.mat names "
                                 f"1..{len(labels)}")
            out.append(Sample(folder / fname, split, labels[cls]))
    return out


def _as_list(value) -> list:
    if value is None:
        return []
    try:
        return list(value)
    except TypeError:  # squeeze_me turns a one-element array into the element itself
        return [value]


def _safe(name: str) -> str:
    """A class name as one folder name: no path separators, no leading dot."""
    name = name.strip().replace("/", "-").replace("\\", "-")
    return name.lstrip(".") or "_"


READERS: dict[str, Callable[[Path], list[Sample]]] = {"cub": cub_samples, "cars": cars_samples}
SOURCES = {"cub": ["images.txt", "image_class_labels.txt", "classes.txt", "train_test_split.txt"],
           "cars": ["devkit/cars_meta.mat", "devkit/cars_train_annos.mat", "cars_test_annos_withlabels.mat"]}


def convert(dataset: str, src: Path, out: Path, link: str = "copy", force: bool = False) -> dict:
    src, out = Path(src).expanduser(), Path(out).expanduser()
    if dataset not in READERS:
        raise AugurError(f"unknown dataset '{dataset}'; one of {', '.join(READERS)}")
    if link not in LINKS:
        raise AugurError(f"--link must be one of {', '.join(LINKS)}")
    if not src.is_dir():
        raise AugurError(f"{src}: no such folder")
    if out.exists() and any(out.iterdir()):
        if not (force and (out / "convert.json").is_file()):
            raise AugurError(f"{out} is not empty; choose another --out" + (
                "" if not (out / "convert.json").is_file() else ", or pass --force to replace the conversion in it"))
    samples = READERS[dataset](src)
    missing = [s.source for s in samples if not s.source.is_file()]
    if missing:
        raise AugurError(f"{len(missing)} image(s) named by the split files are missing, e.g. {missing[0]}")
    tmp = out.parent / f".{out.name}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    taken: set[Path] = set()
    done: dict[str, int] = {}
    for s in samples:
        dest = tmp / s.split / s.label / s.source.name
        if dest in taken:
            raise AugurError(f"two images of class {s.label} ({s.split}) are both named {s.source.name}")
        taken.add(dest)
        dest.parent.mkdir(parents=True, exist_ok=True)
        how = _place(s.source, dest, link)
        done[how] = done.get(how, 0) + 1
    counts = {split: sum(s.split == split for s in samples) for split in ("train", "test")}
    record = {"dataset": dataset, "source": str(src.resolve()), "link": link, "placed": done, "images": counts,
              "classes": len({s.label for s in samples}),
              "source_files": {f: sha256_file(src / f) for f in SOURCES[dataset]}}
    (tmp / "convert.json").write_text(json.dumps(record, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    if out.exists():
        shutil.rmtree(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    os.replace(tmp, out)
    return record


def _place(src: Path, dest: Path, link: str) -> str:
    """Put one image in place; how it was done (a hard link across filesystems is a copy)."""
    if link == "symlink":
        os.symlink(src.resolve(), dest)
        return "symlink"
    if link == "hardlink":
        try:
            os.link(src, dest)
            return "hardlink"
        except OSError:
            pass
    shutil.copy2(src, dest)
    return "copy"
