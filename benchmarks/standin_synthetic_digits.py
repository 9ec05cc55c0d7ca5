"""A stand-in synthetic arm for RotatedDigits, to show the paired comparison on data every machine has.

  python benchmarks/standin_synthetic_digits.py OUT

OUT gets three "rendered" domains in the DomainBed layout, rot7.5 / rot37.5 / rot67.5, each with 30 of
scikit-learn's digits per class rotated by that angle (between the real domains' 0°, 15°, ..., 75°), scaled
as the built-in digits are. They are transformed real digits, not images from a generator: the comparison
they give (docs/results-dg.md) shows what `augur dg collect --compare synthetic` prints, not what rendered
images do.
"""

import sys
from pathlib import Path

import numpy as np
from PIL import Image
from sklearn.datasets import load_digits


def main(out: Path) -> None:
    if out.exists() and any(out.iterdir()):
        sys.exit(f"error: {out} is not empty")
    d = load_digits()
    rng = np.random.RandomState(0)
    for angle in (7.5, 37.5, 67.5):
        for c in range(10):
            folder = out / f"rot{angle:g}" / str(c)
            folder.mkdir(parents=True, exist_ok=True)
            for k, i in enumerate(rng.choice(np.flatnonzero(d.target == c), 30, replace=False)):
                img = Image.fromarray((d.images[i] * (255.0 / 16.0)).astype(np.uint8)).resize((32, 32), Image.BILINEAR)
                img.rotate(angle, resample=Image.BILINEAR).convert("RGB").save(folder / f"{k}.png")


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    main(Path(sys.argv[1]))
