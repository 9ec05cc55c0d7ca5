"""Batches whose content is a pure function of (seed, step).

A training run resumed at step k must see exactly the batches an uninterrupted run sees from step k
on, whatever DataLoader workers or processes do. So a batch is never drawn from a running RNG: each
sampler computes step k's sample indices and per-sample augmentation seeds from (seed, stream, k)
alone, and the augmentation (learn/augment.py) draws each sample's parameters from its own seed.

- `EpochBatches`: passes over the data, shuffled per epoch (pretrain, cl). A last batch of exactly one
  sample is merged into the one before it: BatchNorm cannot train on one sample.
- `InfiniteBatches`: DomainBed's InfiniteDataLoader, uniform sampling with replacement, one minibatch
  per step (dg, one stream per training environment).
Under `accelerate launch` with N processes, a step's batch holds N x batch_size samples and each
process takes its own contiguous share, so N processes see what one process would at N x batch_size.
"""

from __future__ import annotations

from typing import Any, Iterator

import numpy as np

from ..core.cache import derive_seed
from ..core.errors import AugurError

# Decoded (resized, uint8) images are kept in host memory up to this size (learn/images.py): decoding
# every epoch would otherwise cost a fifth of a LoRA epoch on small images.
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


def default_workers(dataset_in_memory: bool, n_images: int, size: int) -> int:
    """0 when decoded images fit the cache (decode once, then tensors), else DataLoader workers."""
    from ..core.device import cpu_count

    if dataset_in_memory or n_images * 3 * size ** 2 <= DECODED_CACHE_BYTES:
        return 0
    return min(8, max(1, cpu_count() - 1))
