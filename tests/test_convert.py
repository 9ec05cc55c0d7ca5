"""`augur data convert cub|cars`: small fake releases in the official file formats (CUB's text files,
Stanford Cars' .mat files) -> the DomainBed layout, split by the datasets' own split files."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from helpers import assert_one_line_error
from PIL import Image

from cli import main
from toolkit.learn import data

CUB_CLASSES = ["001.Black_footed_Albatross", "002.Laysan_Albatross", "017.Cardinal"]


def image(path: Path, seed: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.random.RandomState(seed).randint(0, 255, (12, 16, 3), dtype=np.uint8)).save(path)


def fake_cub(root: Path) -> dict[str, str]:
    """CUB_200_2011/ as it unpacks: ids, paths, labels and the official split; returns path -> split."""
    images, labels, split, where = [], [], [], {}
    k = 0
    for c, name in enumerate(CUB_CLASSES, 1):
        for j in range(3):
            k += 1
            rel = f"{name}/{name.split('.')[1]}_{j:04d}_{k}.jpg"
            image(root / "images" / rel, k)
            train = j != 1  # the official file decides, not the order
            images.append(f"{k} {rel}")
            labels.append(f"{k} {c}")
            split.append(f"{k} {int(train)}")
            where[rel] = "train" if train else "test"
    (root / "images.txt").write_text("\n".join(images) + "\n")
    (root / "image_class_labels.txt").write_text("\n".join(labels) + "\n")
    (root / "train_test_split.txt").write_text("\n".join(split) + "\n")
    (root / "classes.txt").write_text("".join(f"{c} {n}\n" for c, n in enumerate(CUB_CLASSES, 1)))
    return where


def test_cub_converts_by_its_own_split_and_loads_as_train_and_test(tmp_path):
    src = tmp_path / "CUB_200_2011"
    where = fake_cub(src)
    out = tmp_path / "CUB"
    res = CliRunner().invoke(main, ["data", "convert", "cub", str(src), "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert "6 train and 3 test images of 3 classes" in res.output and "(9 copy)" in res.output
    for rel, split in where.items():
        cls, name = rel.split("/")
        assert (out / split / cls / name).read_bytes() == (src / "images" / rel).read_bytes()
    record = json.loads((out / "convert.json").read_text())
    assert record["images"] == {"train": 6, "test": 3} and record["classes"] == 3
    assert set(record["source_files"]) == {"images.txt", "image_class_labels.txt", "classes.txt",
                                           "train_test_split.txt"}
    ds = data.load(str(out), rotated=False)
    assert ds.classes == CUB_CLASSES and {d.name for d in ds.domains} == {"train", "test"}
    assert len(ds.domain("train").labels) == 6 and len(ds.domain("test").labels) == 3
    again = CliRunner().invoke(main, ["data", "convert", "cub", str(src), "--out", str(out)])
    assert_one_line_error(again, "is not empty", "--force")
    res = CliRunner().invoke(main, ["data", "convert", "cub", str(src), "--out", str(out), "--force", "--link",
                                    "symlink"])
    assert res.exit_code == 0 and "(9 symlink)" in res.output, res.output
    assert next((out / "train").rglob("*.jpg")).is_symlink()


@pytest.mark.parametrize("breakage, fragments", [
    (lambda r: (r / "train_test_split.txt").unlink(), ["train_test_split.txt: missing"]),
    (lambda r: (r / "image_class_labels.txt").write_text("1 1\n"), ["image_class_labels.txt: no line for image 2"]),
    (lambda r: (r / "classes.txt").write_text("1 001.Black_footed_Albatross\n"), ["which classes.txt does not name"]),
    (lambda r: (r / "train_test_split.txt").write_text("garbage\n"), ["line 1: expected '<id> <is_training_image>'"]),
    (lambda r: next((r / "images").rglob("*.jpg")).unlink(), ["1 image(s) named by the split files are missing"]),
])
def test_a_broken_cub_release_is_one_line_and_writes_nothing(tmp_path, breakage, fragments):
    src = tmp_path / "CUB_200_2011"
    fake_cub(src)
    breakage(src)
    out = tmp_path / "CUB"
    assert_one_line_error(CliRunner().invoke(main, ["data", "convert", "cub", str(src), "--out", str(out)]), *fragments)
    assert not out.exists()


def fake_cars(root: Path) -> list[tuple[str, str, int]]:
    """Stanford Cars as released: devkit/cars_meta.mat, devkit/cars_train_annos.mat (struct array with bbox_*,
    class, fname), cars_test_annos_withlabels.mat, cars_train/, cars_test/ ; returns (split, fname, class)."""
    import scipy.io

    names = np.array(["AM General Hummer SUV 2000", "Ram C/V Cargo Van Minivan 2012", "Audi A4 Sedan 2007"],
                     dtype=object)
    (root / "devkit").mkdir(parents=True)
    scipy.io.savemat(str(root / "devkit" / "cars_meta.mat"), {"class_names": names.reshape(1, -1)})
    fields = [("bbox_x1", "O"), ("bbox_y1", "O"), ("bbox_x2", "O"), ("bbox_y2", "O"), ("class", "O"), ("fname", "O")]
    out = []
    for split, mat in (("train", root / "devkit" / "cars_train_annos.mat"),
                       ("test", root / "cars_test_annos_withlabels.mat")):
        rows = [(1, 2, 10, 11, c, f"{i + 1:05d}.jpg") for i, c in enumerate([1, 2, 3, 2] if split == "train" else [3, 1])]
        annos = np.zeros((1, len(rows)), dtype=fields)
        for i, r in enumerate(rows):
            annos[0, i] = tuple(np.array([[v]]) if isinstance(v, int) else np.array([v]) for v in r)
            image(root / f"cars_{split}" / r[5], hash((split, i)) % 1000)
            out.append((split, r[5], r[4]))
        scipy.io.savemat(str(mat), {"annotations": annos})
    return out


def test_stanford_cars_converts_from_its_mat_files(tmp_path):
    src = tmp_path / "stanford_cars"
    rows = fake_cars(src)
    out = tmp_path / "Cars"
    res = CliRunner().invoke(main, ["data", "convert", "cars", str(src), "--out", str(out)])
    assert res.exit_code == 0, res.output
    labels = {1: "001.AM General Hummer SUV 2000", 2: "002.Ram C-V Cargo Van Minivan 2012", 3: "003.Audi A4 Sedan 2007"}
    for split, fname, cls in rows:
        assert (out / split / labels[cls] / fname).read_bytes() == (src / f"cars_{split}" / fname).read_bytes()
    ds = data.load(str(out), rotated=False)
    assert ds.classes == sorted(labels.values()) and len(ds.domain("test").labels) == 2
    (src / "cars_test_annos_withlabels.mat").unlink()  # the test labels come separately: without them, one line
    assert_one_line_error(CliRunner().invoke(main, ["data", "convert", "cars", str(src), "--out", str(tmp_path / "o")]),
                          "cars_test_annos_withlabels.mat: missing")
