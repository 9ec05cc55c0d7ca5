"""DomainBed's training augmentation, batched on the device the images live on, a random draw per image.

DomainBed augments each image with torchvision's RandomResizedCrop(SIZE, scale=(0.7, 1.0)),
RandomHorizontalFlip(), ColorJitter(0.3, 0.3, 0.3, 0.3) and RandomGrayscale() (p = 0.1) on the CPU,
in DataLoader workers. Augur keeps decoded images as one uint8 tensor on the GPU (learn/images.py), so
the augmentation runs there, on the whole batch at once, and the CPU only draws numbers.

Why by hand: torchvision's v2 transforms take a batch but draw one set of parameters for all of it;
kornia draws per image, but from the global generator in batch order. Here every parameter of an
image is a pure function of that image's own seed (the loader's per-sample seed: `_Batches._share`),
so a run resumed at step k, or split over N processes, augments each image as the uninterrupted
one-process run does. The draws follow torchvision's own algorithms (`RandomResizedCrop.get_params`:
ten tries of scale and log-ratio, then the centre-crop fallback; `ColorJitter.get_params`: a random
order of the four operations and a factor for each), and the pixel operations are torchvision's
tensor formulas (`_blend` for brightness, contrast and saturation, its HSV conversion for hue, ITU-R
601 luma for greyscale). The crop-and-resize is one `grid_sample` call over the batch (bilinear or
bicubic, as the backbone's data config asks; the crop is never smaller than the output, so no
antialiasing is involved). Inside the crop its samples are torchvision's crop-then-resize; on the output's last
row and column the interpolation reads the image's next pixel past the crop's edge, where torchvision, having
cropped first, repeats the edge pixel (tests/test_augment.py asserts both).

Images are float in [0, 1] through the operations and normalised with the backbone's mean and std at
the end. Two ways to run the same operations: `__call__` takes the seeds and runs each colour
operation on the images that have it at that position (index lists known on the host: the cheapest
on a CPU); `on_device` takes the drawn parameters already on the device (`pack`, copied there ahead
of time by learn/images.py) and selects per image with masks, so a GPU step never waits for a
host-to-device copy. tests/test_augment.py checks that both give the same images (on the CPU; the masked form
is the code a GPU step runs), and the formulas and draws against torchvision's.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

SCALE = (0.7, 1.0)
RATIO = (3.0 / 4.0, 4.0 / 3.0)
JITTER = 0.3  # brightness, contrast, saturation in [0.7, 1.3], hue in [-0.3, 0.3]
GREY_P = 0.1
TRIES = 10
# Uniform draws per image: 10 tries x (scale, ratio, top, left), flip, 4 for the jitter order, 4 factors, greyscale.
_N_DRAWS = 4 * TRIES + 1 + 4 + 4 + 1

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_MIX1 = np.uint64(0xBF58476D1CE4E5B9)
_MIX2 = np.uint64(0x94D049BB133111EB)


def uniforms(seeds: np.ndarray, k: int) -> np.ndarray:
    """k independent uniforms in [0, 1) per seed: splitmix64 of (seed, i), vectorised. Each row depends on
    its own seed only."""
    with np.errstate(over="ignore"):
        z = np.asarray(seeds, dtype=np.uint64)[:, None] * _GOLDEN + (np.arange(1, k + 1, dtype=np.uint64) * _MIX1)
        z = (z ^ (z >> np.uint64(30))) * _MIX1
        z = (z ^ (z >> np.uint64(27))) * _MIX2
        z = z ^ (z >> np.uint64(31))
    return (z >> np.uint64(11)).astype(np.float64) * (1.0 / 9007199254740992.0)


def draw(seeds: np.ndarray, size: int) -> dict[str, np.ndarray]:
    """Every random parameter of DomainBed's augmentation, for square SIZE x SIZE images, one row per seed."""
    u = uniforms(seeds, _N_DRAWS)
    n = len(u)
    tries = u[:, : 4 * TRIES].reshape(n, TRIES, 4)
    area = float(size * size)
    # RandomResizedCrop.get_params, the ten tries at once; the first try that fits wins.
    target = area * (SCALE[0] + (SCALE[1] - SCALE[0]) * tries[..., 0])
    log_lo, log_hi = math.log(RATIO[0]), math.log(RATIO[1])
    aspect = np.exp(log_lo + (log_hi - log_lo) * tries[..., 1])
    w = np.round(np.sqrt(target * aspect))
    h = np.round(np.sqrt(target / aspect))
    fits = (w > 0) & (w <= size) & (h > 0) & (h <= size)
    first = fits.argmax(1)
    rows = np.arange(n)
    w, h = w[rows, first], h[rows, first]
    top = np.floor(tries[rows, first, 2] * (size - h + 1))
    left = np.floor(tries[rows, first, 3] * (size - w + 1))
    # Fallback when no try fits: the whole (square) image, the centre crop of ratio 1.
    none = ~fits.any(1)
    w[none], h[none], top[none], left[none] = size, size, 0, 0
    rest = u[:, 4 * TRIES:]
    return {"top": top, "left": left, "h": h, "w": w, "flip": rest[:, 0] < 0.5,
            "order": np.argsort(rest[:, 1:5], axis=1, kind="stable"),  # a random permutation of the 4 operations
            "factors": np.concatenate([1.0 - JITTER + 2 * JITTER * rest[:, 5:8], -JITTER + 2 * JITTER * rest[:, 8:9]], 1),
            "grey": rest[:, 9] < GREY_P}


def _grey(x):
    """ITU-R 601 luma, torchvision's rgb_to_grayscale, keeping the channel axis (B, 1, H, W)."""
    r, g, b = x.unbind(1)
    return (0.2989 * r + 0.587 * g + 0.114 * b).unsqueeze(1)


def _blend(a, b, ratio):
    """torchvision's _blend with a per-image ratio: (ratio * a + (1 - ratio) * b) clipped to [0, 1]."""
    return (ratio * a + (1.0 - ratio) * b).clamp_(0.0, 1.0)


def _brightness(x, f):
    return _blend(x, 0.0, f)


def _contrast(x, f):
    return _blend(x, _grey(x).mean(dim=(1, 2, 3), keepdim=True), f)


def _saturation(x, f):
    return _blend(x, _grey(x), f)


def _hue(x, f):
    import torch
    from torchvision.transforms._functional_tensor import _hsv2rgb, _rgb2hsv

    hsv = _rgb2hsv(x)
    h = (hsv[:, 0] + f.view(-1, 1, 1)) % 1.0
    return _hsv2rgb(torch.stack((h, hsv[:, 1], hsv[:, 2]), 1))


_OPS = (_brightness, _contrast, _saturation, _hue)  # ColorJitter's fn_idx numbering


PACKED = 15  # per image: theta (2 x 3), the four jitter factors, the jitter order (4), greyscale


def pack(p: dict[str, np.ndarray], size: int) -> np.ndarray:
    """`draw`'s parameters as one float32 row per image: the crop-and-flip affine map, factors, order, greyscale."""
    n = len(p["flip"])
    out = np.zeros((n, PACKED), dtype=np.float32)
    out[:, 0] = np.where(p["flip"], -p["w"] / size, p["w"] / size)
    out[:, 2] = (2 * p["left"] + p["w"]) / size - 1
    out[:, 4] = p["h"] / size
    out[:, 5] = (2 * p["top"] + p["h"]) / size - 1
    out[:, 6:10] = p["factors"]
    out[:, 10:14] = p["order"]
    out[:, 14] = p["grey"]
    return out


class Augment:
    """DomainBed's augmentation of uint8 (B, 3, S, S) batches into normalised float ones (see the module
    docstring)."""

    def __init__(self, mean, std, size: int, interpolation: str = "bilinear"):
        self.mean, self.std, self.size = tuple(mean), tuple(std), size
        self.mode = interpolation if interpolation in ("bilinear", "bicubic", "nearest") else "bilinear"
        self._stats: dict[Any, tuple] = {}

    def _norm(self, x):
        import torch

        key = (x.device, x.dtype)
        if key not in self._stats:
            self._stats[key] = (torch.tensor(self.mean, device=x.device, dtype=x.dtype).view(1, 3, 1, 1),
                                torch.tensor(self.std, device=x.device, dtype=x.dtype).view(1, 3, 1, 1))
        mean, std = self._stats[key]
        return (x - mean) / std

    def normalize(self, x8):
        """uint8 (B, 3, S, S) -> float normalised, the evaluation transform (no augmentation)."""
        return self._norm(x8.float().div_(255.0))

    def _crop(self, x8, theta):
        """The crop (and the flip) as one affine map of normalised output coordinates to input ones,
        align_corners=False: x_in = (w / S) x_out + (2 left + w) / S - 1 (a negated scale flips)."""
        import torch.nn.functional as F

        b, s = x8.shape[0], x8.shape[-1]
        x = x8.float().div_(255.0)
        grid = F.affine_grid(theta.reshape(b, 2, 3), [b, 3, s, s], align_corners=False)
        x = F.grid_sample(x, grid, mode=self.mode, padding_mode="border", align_corners=False)
        return x.clamp_(0.0, 1.0) if self.mode == "bicubic" else x

    def on_device(self, x8, packed):
        """The same augmentation from `pack`ed parameters already on x8's device: the colour operations
        are selected per image with masks (each runs on the whole batch at each of the four positions)."""
        import torch

        x = self._crop(x8, packed[:, :6])
        factors, order = packed[:, 6:10], packed[:, 10:14]
        for pos in range(4):
            for op in range(4):
                f = factors[:, op]
                out = _OPS[op](x, f if op == 3 else f.view(-1, 1, 1, 1))
                x = torch.where((order[:, pos] == op).view(-1, 1, 1, 1), out, x)
        grey = packed[:, 14].view(-1, 1, 1, 1) > 0.5
        x = torch.where(grey, _grey(x).expand(-1, 3, -1, -1), x)
        return self._norm(x)

    def __call__(self, x8, seeds: np.ndarray):
        import torch

        device, s = x8.device, x8.shape[-1]
        p = draw(seeds, s)
        packed = pack(p, s)
        x = self._crop(x8, torch.from_numpy(packed[:, :6]).to(device))
        factors = torch.from_numpy(p["factors"].astype(np.float32)).to(device)
        # ColorJitter applies its four operations in a random order per image: at each position, each
        # operation runs on the images that have it there (index lists known here, on the host).
        for pos in range(4):
            for op in range(4):
                rows = np.flatnonzero(p["order"][:, pos] == op)
                if len(rows) == 0:
                    continue
                idx = torch.from_numpy(rows).to(device)
                sub = x.index_select(0, idx)
                f = factors.index_select(0, idx)[:, op]
                sub = _OPS[op](sub, f if op == 3 else f.view(-1, 1, 1, 1))
                x = x.index_copy(0, idx, sub)
        grey = np.flatnonzero(p["grey"])
        if len(grey):
            idx = torch.from_numpy(grey).to(device)
            x = x.index_copy(0, idx, _grey(x.index_select(0, idx)).expand(-1, 3, -1, -1))
        return self._norm(x)
