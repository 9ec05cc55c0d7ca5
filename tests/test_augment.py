"""DomainBed's training augmentation as Augur batches it (toolkit/learn/augment.py): torchvision's formulas and
parameter draws, each image a function of its own seed, and the two ways to run it (host-indexed, and the masked
form a GPU step uses) giving the same images. On the CPU: the masked path is the GPU's code, run here."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torchvision.transforms.functional as TF

from toolkit.learn import augment as A

SIZE = 24
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def batch(n: int = 16, seed: int = 0) -> torch.Tensor:
    return torch.from_numpy(np.random.RandomState(seed).randint(0, 256, (n, 3, SIZE, SIZE), dtype=np.uint8))


def test_the_masked_path_gives_the_host_indexed_paths_images():
    """`on_device` (packed parameters, per-image masks: what a GPU step runs) == `__call__` (index lists on the
    host), image for image."""
    aug = A.Augment(MEAN, STD, SIZE)
    x8, seeds = batch(), np.arange(100, 116)
    host = aug(x8, seeds)
    masked = aug.on_device(x8, torch.from_numpy(A.pack(A.draw(seeds, SIZE), SIZE)))
    assert host.shape == (16, 3, SIZE, SIZE)
    torch.testing.assert_close(masked, host, atol=1e-5, rtol=0)


def test_each_image_depends_on_its_own_seed_only():
    aug = A.Augment(MEAN, STD, SIZE)
    x8, seeds = batch(), np.arange(7, 23)
    whole = aug(x8, seeds)
    for i in (0, 5, 15):
        torch.testing.assert_close(aug(x8[i:i + 1], seeds[i:i + 1])[0], whole[i], atol=1e-6, rtol=0)
    other = aug(x8, seeds + 1000)
    assert not torch.allclose(other, whole)


def test_the_draws_follow_torchvisions_ranges_and_rates():
    p = A.draw(np.arange(20000), SIZE)
    area = p["w"] * p["h"] / SIZE ** 2
    # RandomResizedCrop: area in scale (0.7, 1) up to rounding, aspect ratio in (3/4, 4/3) up to rounding, inside
    assert area.min() >= 0.7 - 2 / SIZE and area.max() <= 1.0
    assert (p["w"] / p["h"]).min() >= 0.75 - 2 / SIZE and (p["w"] / p["h"]).max() <= 4 / 3 + 2 / SIZE
    assert (p["left"] >= 0).all() and (p["left"] + p["w"] <= SIZE).all() and (p["top"] + p["h"] <= SIZE).all()
    assert abs(p["flip"].mean() - 0.5) < 0.02 and abs(p["grey"].mean() - A.GREY_P) < 0.01
    assert (np.sort(p["order"], axis=1) == np.arange(4)).all()  # ColorJitter's random order: a permutation
    assert p["factors"][:, :3].min() >= 0.7 and p["factors"][:, :3].max() <= 1.3
    assert p["factors"][:, 3].min() >= -0.3 and p["factors"][:, 3].max() <= 0.3


@pytest.mark.parametrize("op, reference", [(0, TF.adjust_brightness), (1, TF.adjust_contrast),
                                           (2, TF.adjust_saturation), (3, TF.adjust_hue)])
def test_the_colour_operations_are_torchvisions(op, reference):
    x = batch(6).float() / 255.0
    factors = [0.7, 0.85, 1.0, 1.1, 1.3, 0.95] if op < 3 else [-0.3, -0.1, 0.0, 0.05, 0.2, 0.3]
    ours = A._OPS[op](x.clone(), torch.tensor(factors) if op == 3 else torch.tensor(factors).view(-1, 1, 1, 1))
    for i, f in enumerate(factors):
        torch.testing.assert_close(ours[i], reference(x[i], f), atol=1e-5, rtol=0)


def test_the_crop_is_torchvisions_crop_and_flip():
    """A crop as large as the image and a flip: the affine grid_sample is the identity and torch.flip; a crop of
    the top-left quarter resized back is torchvision's resized_crop (bilinear, no antialias) but at its far edge."""
    aug = A.Augment(MEAN, STD, SIZE)
    x8 = batch(2)
    theta = torch.tensor([[1.0, 0, 0, 0, 1.0, 0], [-1.0, 0, 0, 0, 1.0, 0]])
    out = aug._crop(x8, theta)
    x = x8.float() / 255.0
    torch.testing.assert_close(out[0], x[0], atol=1e-5, rtol=0)  # grid arithmetic: far below 1/255
    torch.testing.assert_close(out[1], torch.flip(x[1], dims=[-1]), atol=1e-5, rtol=0)
    p = {"top": np.array([0.0]), "left": np.array([0.0]), "h": np.array([SIZE / 2]), "w": np.array([SIZE / 2]),
         "flip": np.array([False]), "order": np.array([[0, 1, 2, 3]]), "factors": np.ones((1, 4)),
         "grey": np.array([False])}
    quarter = aug._crop(x8[:1], torch.from_numpy(A.pack(p, SIZE)[:, :6]))[0]
    ref = TF.resized_crop(x[0], 0, 0, SIZE // 2, SIZE // 2, [SIZE, SIZE], antialias=False)
    # Inside, the same bilinear samples. On the last row and column the half-pixel past the crop's edge is read
    # from the image's next pixel (one grid_sample over the whole image), where torchvision, cropping first,
    # repeats the crop's edge pixel: a known difference of the batched crop (docs/stages.md), asserted here.
    torch.testing.assert_close(quarter[:, :-1, :-1], ref[:, :-1, :-1], atol=1e-5, rtol=0)
    differs = (quarter - ref).abs().amax(0) > 1e-5
    assert differs[:-1, :-1].sum() == 0 and differs[-1].any() and differs[:, -1].any()
