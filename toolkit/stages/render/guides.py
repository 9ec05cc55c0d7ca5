"""Real images that guide a render (image-to-image, `--init-images DATA`): which photo each image starts from.

Guided generation keeps the dataset's objects and varies the domain (ALIA, DisCL, Real-Fake, SyntheticData's
"real guidance"). Each image of a prompt row (row, k) starts from a seeded choice among the guide images of
the row's class in the allowed domains (every domain but a test split named `test`, or `--init-domains`): the
choice depends on the run seed, the row id and k only, so it is the same in every shard, resume and process,
and the same guide serves every strength of a strength spectrum (DisCL's). Every manifest row records its
guide: `init_image` = {path (relative to the guide folder; `digits/<domain>/<index>` for the built-in digits),
domain, sha256 (of the file's bytes; of the uint8 array's bytes for the built-in digits)}. The DG stage's
leakage guard reads `init_image.domain` (stages/dg/stage.py).

A guide is fitted to the model's square input as the usual square crop does: centre-cropped to a square,
then resized (bicubic) to --size. The img2img pipelines take no height/width; they draw at the guide's size.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ...core.cache import derive_seed
from ...core.errors import AugurError
from ...core.files import read_json, sha256_file

TEST_SPLIT = "test"  # a domain of this name is a held-out split (cl's train/test layout): it never guides


@dataclass(frozen=True)
class Guide:
    path: str  # relative to the guide data (see the module docstring)
    domain: str
    source: Any  # a file path, or a uint8 array (built-in digits)


class Guides:
    """The guide images of a render, by class."""

    def __init__(self, data: str, domains: list[str] | None, classes: list[str]):
        from ...learn.data import fingerprint, load

        self.data = data
        where = "--init-images"
        if data != "digits" and not Path(data).expanduser().is_dir():
            raise AugurError(f"{where}: {data} is not a folder (a DomainBed-layout folder, or digits)")
        ds = load(data if data == "digits" else Path(data).expanduser(), report=False)
        names = [d.name for d in ds.domains]
        if domains:
            unknown = [d for d in domains if d not in names]
            if unknown:
                raise AugurError(f"--init-domains: {', '.join(unknown)} not among the domains of {data} "
                                 f"({', '.join(names)})")
            allowed = list(domains)
        else:
            allowed = [n for n in names if n != TEST_SPLIT]
        if not allowed:
            raise AugurError(f"--init-images: {data} has no domain but its test split to draw guides from")
        self.domains = allowed
        root = None if ds.in_memory else Path(ds.source)
        self.by_class: dict[str, list[Guide]] = {}
        for d in ds.domains:
            if d.name not in allowed:
                continue
            for i, (img, y) in enumerate(zip(d.images, d.labels)):
                path = (f"digits/{d.name}/{i}" if root is None else Path(img).relative_to(root).as_posix())
                self.by_class.setdefault(ds.classes[int(y)], []).append(Guide(path, d.name, img))
        missing = [c for c in dict.fromkeys(classes) if c not in self.by_class]
        if missing:
            have = sorted(self.by_class)
            raise AugurError(f"--init-images: {data} has no image of class(es) {', '.join(missing[:5])}"
                             f"{' ...' if len(missing) > 5 else ''} in {', '.join(allowed)} (its classes: "
                             f"{', '.join(have[:8])}{' ...' if len(have) > 8 else ''}); guides must be of the "
                             "prompts' classes")
        self.fingerprint = fingerprint(ds)["sha256"]
        self.images = sum(len(v) for v in self.by_class.values())
        self._digests: dict[str, str] = {}

    def identity(self) -> dict[str, Any]:
        """What decides which photos guide (the run's identity): the data's digest and the domains drawn from."""
        return {"sha256": self.fingerprint, "domains": self.domains, "images": self.images}

    def pick(self, row: dict[str, Any], k: int, seed: int) -> Guide:
        pool = self.by_class[row["class"]]
        return pool[derive_seed(seed, "guide", row["id"], k) % len(pool)]

    def digest(self, guide: Guide) -> str:
        if guide.path not in self._digests:
            self._digests[guide.path] = (sha256_file(guide.source) if isinstance(guide.source, (str, Path))
                                         else hashlib.sha256(guide.source.tobytes()).hexdigest())
        return self._digests[guide.path]

    def record(self, guide: Guide) -> dict[str, Any]:
        return {"path": guide.path, "domain": guide.domain, "sha256": self.digest(guide)}

    @staticmethod
    def image(guide: Guide, size: int):
        """The guide as the pipeline takes it: RGB, centre-cropped to a square, resized to size x size."""
        from PIL import Image

        from ...learn.data import load_image

        im = load_image(guide.source)
        w, h = im.size
        side = min(w, h)
        left, top = (w - side) // 2, (h - side) // 2
        im = im.crop((left, top, left + side, top + side))
        return im if side == size else im.resize((size, size), Image.BICUBIC)


def guided_by(folder: Path) -> dict[str, Any] | None:
    """The guide record of a synthetic folder (a render folder, or a curated one through its render folder):
    {"data": the guide data as given, "domains": [...]}, or None for images drawn from text alone."""
    folder = Path(folder)
    try:
        if (folder / "curate.json").is_file():
            render = (read_json(folder / "curate.json").get("identity") or {}).get("source")
            folder = Path(render) if isinstance(render, str) else folder
        info = read_json(folder / "render.json") if (folder / "render.json").is_file() else {}
    except AugurError:
        return None
    guides = (info.get("identity") or {}).get("init_images")
    if not isinstance(guides, dict):
        return None
    return {"data": info.get("init_images"), "domains": guides.get("domains") or []}
