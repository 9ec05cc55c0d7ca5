"""Batches whose content is a pure function of (seed, step).

A training run resumed at step k must see exactly the batches an uninterrupted run sees from step k
on, whatever DataLoader workers or processes do. So a batch is never drawn from a running RNG: each
sampler computes step k's sample indices and per-sample augmentation seeds from (seed, stream, k)
alone, and `ImageSet` augments each sample under its own seed.

- `EpochBatches`: passes over the data, shuffled per epoch (pretrain, cl). A last batch of exactly one
  sample is merged into the one before it: BatchNorm cannot train on one sample.
- `InfiniteBatches`: DomainBed's InfiniteDataLoader, uniform sampling with replacement, one minibatch
  per step (dg, one stream per training environment).
Under `accelerate launch` with N processes, a step's batch holds N x batch_size samples and each
process takes its own contiguous share, so N processes see what one process would at N x batch_size.
"""

from __future__ import annotations

import sys
from typing import Any, Iterator

import numpy as np

from ..core.cache import derive_seed
from ..core.errors import AugurError
from .data import load_image
from .transforms import DataConfig, eval_transform, tensor_transform, train_transform

# Decoded (resized, uint8) images are kept in memory up to this size: decoding every epoch would
# otherwise cost a fifth of a LoRA epoch on small images.
DECODED_CACHE_BYTES = 1 << 30


class _Batches:
    def __init__(self, n: int, batch_size: int, seed: int, stream: Any, world: tuple[int, int] = (0, 1)):
        if n < 1:
            raise AugurError("no training images")
        self.n, self.batch_size, self.seed, self.stream = n, batch_size, seed, stream
        self.rank, self.world = world

    def _share(self, idx: np.ndarray, seed: int) -> list[tuple[int, int]]:
        sample_seeds = np.random.RandomState(seed).randint(0, 2**31 - 1, size=len(idx))
        keys = list(zip(idx.tolist(), sample_seeds.tolist()))
        if self.world == 1:
            return keys
        return [keys[j] for j in np.array_split(np.arange(len(keys)), self.world)[self.rank]]


class EpochBatches(_Batches):
    @property
    def steps_per_epoch(self) -> int:
        full = self.batch_size * self.world
        steps = -(-self.n // full)
        return steps - 1 if steps > 1 and self.n % full == 1 else steps

    def batch(self, step: int) -> list[tuple[int, int]]:
        epoch, b = divmod(step, self.steps_per_epoch)
        order = np.random.RandomState(derive_seed(self.seed, self.stream, "epoch", epoch)).permutation(self.n)
        full = self.batch_size * self.world
        end = len(order) if b == self.steps_per_epoch - 1 else (b + 1) * full
        return self._share(order[b * full: end], derive_seed(self.seed, self.stream, "aug", step))


class InfiniteBatches(_Batches):
    def __init__(self, n: int, batch_size: int, seed: int, stream: Any, world: tuple[int, int] = (0, 1),
                 weights: np.ndarray | None = None):
        super().__init__(n, batch_size, seed, stream, world)
        self.p = None if weights is None else np.asarray(weights, dtype=np.float64) / np.sum(weights)

    def batch(self, step: int) -> list[tuple[int, int]]:
        rng = np.random.RandomState(derive_seed(self.seed, self.stream, "step", step))
        size = self.batch_size * self.world
        idx = rng.randint(0, self.n, size=size) if self.p is None else rng.choice(self.n, size=size, p=self.p)
        return self._share(idx, derive_seed(self.seed, self.stream, "aug", step))


class StepSampler:
    """A batch sampler over steps [start, stop) of a batch stream (what a DataLoader iterates)."""

    def __init__(self, batches: _Batches, start: int, stop: int):
        self.batches, self.start, self.stop = batches, start, stop

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        for step in range(self.start, self.stop):
            yield self.batches.batch(step)

    def __len__(self) -> int:
        return max(0, self.stop - self.start)


class ImageSet:
    """(image, label) items, each served as a normalised tensor; augmented under its own seed."""

    def __init__(self, items: list[tuple[Any, int]], dc: DataConfig, augment: bool = False, cache: bool = True):
        self.items, self.dc, self.augment = items, dc, augment
        self.cache = cache and len(items) * 3 * dc.size ** 2 <= DECODED_CACHE_BYTES
        self._decoded: dict[int, np.ndarray] = {}
        self.unreadable: set[int] = set()
        self._train = train_transform(dc) if augment else None
        self._tensor = tensor_transform(dc)
        self._eval = eval_transform(dc)

    def __len__(self) -> int:
        return len(self.items)

    def labels(self) -> np.ndarray:
        return np.array([y for _, y in self.items], dtype=np.int64)

    def _base(self, i: int) -> np.ndarray:
        """The image resized to SIZE x SIZE as uint8 (decoded once, then cached when it fits)."""
        from PIL import Image

        hit = self._decoded.get(i)
        if hit is not None:
            return hit
        im = load_image(self.items[i][0])
        if im.size != (self.dc.size, self.dc.size):
            resample = Image.BICUBIC if self.dc.interpolation == "bicubic" else Image.BILINEAR
            im = im.resize((self.dc.size, self.dc.size), resample)
        arr = np.array(im, dtype=np.uint8)  # a writable copy: torch.from_numpy shares it
        if self.cache:
            self._decoded[i] = arr
        return arr

    def __getitem__(self, key):
        import torch
        from PIL import Image

        i, sample_seed = key if isinstance(key, tuple) else (key, 0)
        # A file can pass the cheap check at load time and still fail to decode (a truncated JPEG does):
        # it is skipped with a warning, and the next readable image stands in, so an epoch never dies.
        for j in (k % len(self.items) for k in range(i, i + len(self.items))):
            if j in self.unreadable:
                continue
            try:
                arr = self._base(j)
            except Exception as e:  # PIL raises a zoo of types for broken files
                self.unreadable.add(j)
                print(f"warning: skipped unreadable image {self.items[j][0]} ({e.__class__.__name__}: {e}); "
                      f"{len(self.unreadable)} so far", file=sys.stderr)
                continue
            if self._train is None:
                return self._tensor(arr), self.items[j][1]
            state = torch.get_rng_state()
            torch.manual_seed(sample_seed)
            try:
                x = self._train(Image.fromarray(arr))
            finally:
                torch.set_rng_state(state)
            return x, self.items[j][1]
        raise AugurError("no readable image left in this dataset")


def loader(dataset: ImageSet, batches: _Batches, start: int, stop: int, workers: int):
    """A DataLoader over steps [start, stop) of `batches`."""
    from torch.utils.data import DataLoader

    return DataLoader(dataset, batch_sampler=StepSampler(batches, start, stop), num_workers=workers,
                      persistent_workers=False, pin_memory=False)


def eval_batches(dataset: ImageSet, batch_size: int, workers: int = 0):
    from torch.utils.data import DataLoader

    return DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=workers)


def default_workers(dataset_in_memory: bool, n_images: int, size: int) -> int:
    """0 when decoded images fit the cache (decode once, then tensors), else DataLoader workers."""
    from ..core.device import cpu_count

    if dataset_in_memory or n_images * 3 * size ** 2 <= DECODED_CACHE_BYTES:
        return 0
    return min(8, max(1, cpu_count() - 1))
