"""Decoded images on the device that trains on them, and the batches a training step takes from them.

A dataset's images are decoded once, resized to SIZE x SIZE with the backbone's interpolation, and
kept as one uint8 tensor (N, 3, S, S): on the GPU when training runs there and the tensor fits in a
quarter of the free GPU memory, in host memory on a CPU (up to 1 GiB). A training step gathers its
rows there and augments (learn/augment.py) or normalises them there: nothing is done per image on the
host and nothing but row indices crosses to the device per step. Data that does not fit is decoded per
step by DataLoader workers into uint8 batches, pinned, copied without blocking, and augmented on the
device the same way.

Which images a step takes is decided by the samplers of learn/loaders.py (a pure function of the seed
and the step), so a resumed run trains on what the uninterrupted run did. On a GPU the host works ahead:
the rows (and augmentation parameters) of the next CHUNK steps are computed at once, pinned and copied
to the device without blocking; a copy from ordinary (pageable) memory would make every step wait for
the GPU to finish the one before. Images that fail to decode
are left out with a warning when the data is decoded up front; when it is streamed, the next readable
image stands in (the epoch never dies).
"""

from __future__ import annotations

import sys
from typing import Any, Iterator

import numpy as np

from ..core.errors import AugurError
from .augment import Augment
from .data import load_image
from .loaders import DECODED_CACHE_BYTES, StepSampler, _Batches, default_workers
from .transforms import DataConfig

GPU_SHARE = 0.25  # of the free GPU memory, for one dataset's decoded images
CHUNK = 32  # steps whose rows are prepared and copied to the device in one go (GPU)


def decode(src, dc: DataConfig) -> np.ndarray:
    """One image as uint8 SIZE x SIZE x 3 (any PIL mode, see data.load_image)."""
    from PIL import Image

    im = load_image(src)
    if im.size != (dc.size, dc.size):
        resample = Image.BICUBIC if dc.interpolation == "bicubic" else Image.BILINEAR
        im = im.resize((dc.size, dc.size), resample)
    return np.array(im, dtype=np.uint8)


def _warn(src, e: Exception, count: int) -> None:
    print(f"warning: skipped unreadable image {src} ({e.__class__.__name__}: {e}); {count} so far", file=sys.stderr)


class _DecodeAll:
    """A map-style dataset for decoding in parallel: (array or None, error text)."""

    def __init__(self, items, dc):
        self.items, self.dc = items, dc

    def __len__(self):
        return len(self.items)

    def __getitem__(self, i):
        try:
            return decode(self.items[i][0], self.dc), None
        except Exception as e:  # PIL raises a zoo of types for broken files
            return None, f"{e.__class__.__name__}: {e}"


class _Stream:
    """What DataLoader workers serve when the images are not kept decoded: (uint8 CHW, label, seed)."""

    def __init__(self, items, dc):
        self.items, self.dc = items, dc
        self.unreadable: set[int] = set()

    def __len__(self):
        return len(self.items)

    def __getitem__(self, key):
        import torch

        i, seed = key
        for j in (k % len(self.items) for k in range(i, i + len(self.items))):
            if j in self.unreadable:
                continue
            try:
                arr = decode(self.items[j][0], self.dc)
            except Exception as e:  # see _DecodeAll
                self.unreadable.add(j)
                _warn(self.items[j][0], e, len(self.unreadable))
                continue
            return torch.from_numpy(arr).permute(2, 0, 1), self.items[j][1], seed
        raise AugurError("no readable image left in this dataset")


def _collate(batch):
    import torch

    return (torch.stack([b[0] for b in batch]), torch.tensor([b[1] for b in batch], dtype=torch.long),
            np.array([b[2] for b in batch], dtype=np.int64))


class ImageStore:
    """A dataset's images, decoded once, on `device` when they fit (see the module docstring).

    `items` are (path or array, label); after construction `self.items` holds the readable ones (the
    rows of the store) and `self.kept` their positions in the list given.
    """

    def __init__(self, items: list[tuple[Any, int]], dc: DataConfig, device, workers: int | None = None,
                 budget: int | None = None):
        import torch

        self.dc, self.device = dc, torch.device(device)
        self.augment = Augment(dc.mean, dc.std, dc.size, dc.interpolation)
        n_bytes = len(items) * 3 * dc.size ** 2
        in_memory = bool(items) and all(isinstance(src, np.ndarray) for src, _ in items)
        self.workers = workers if workers is not None else default_workers(in_memory, len(items), dc.size)
        if budget is None:
            budget = DECODED_CACHE_BYTES
            if self.device.type == "cuda":
                free, _ = torch.cuda.mem_get_info(self.device)
                budget = int(free * GPU_SHARE)
        self.resident = n_bytes <= budget
        if not self.resident:
            self.items, self.kept = list(items), np.arange(len(items))
            self.labels_np = np.array([y for _, y in self.items], dtype=np.int64)
            return
        arrays, kept = self._decode(items, workers if workers is not None else (0 if in_memory else self.workers))
        if not kept:
            raise AugurError("no readable image in this dataset")
        self.items = [items[i] for i in kept]
        self.kept = np.array(kept, dtype=np.int64)
        self.labels_np = np.array([y for _, y in self.items], dtype=np.int64)
        host = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()
        self.images = host.to(self.device)
        self.labels = torch.from_numpy(self.labels_np).to(self.device)

    def __len__(self) -> int:
        return len(self.items)

    def _decode(self, items, workers: int) -> tuple[list[np.ndarray], list[int]]:
        arrays, kept, failed = [], [], 0
        if workers > 0:
            from torch.utils.data import DataLoader

            results = (r for batch in DataLoader(_DecodeAll(items, self.dc), batch_size=64, num_workers=workers,
                                                 collate_fn=list) for r in batch)
        else:
            results = (_DecodeAll(items, self.dc)[i] for i in range(len(items)))
        for i, (arr, err) in enumerate(results):
            if arr is None:
                failed += 1
                print(f"warning: skipped unreadable image {items[i][0]} ({err}); {failed} so far", file=sys.stderr)
                continue
            arrays.append(arr)
            kept.append(i)
        return arrays, kept

    # -- what steps take
    def _index(self, rows: np.ndarray):
        import torch

        return torch.from_numpy(np.ascontiguousarray(rows, dtype=np.int64)).to(self.device, non_blocking=True)

    def gather(self, rows: np.ndarray):
        """uint8 (B, 3, S, S) and labels on the device, for store rows (a resident store)."""
        idx = self._index(rows)
        return self.images.index_select(0, idx), self.labels.index_select(0, idx)

    def feed(self, rows: np.ndarray, batches: _Batches, augment: bool = False) -> "Feed":
        return Feed(self, np.asarray(rows, dtype=np.int64), batches, augment)

    def eval_batches(self, rows: np.ndarray, batch_size: int) -> Iterator[tuple[Any, Any]]:
        """(normalised x, y) on the device, in order, no augmentation."""
        rows = np.asarray(rows, dtype=np.int64)
        if self.resident:
            for a in range(0, len(rows), batch_size):
                x8, y = self.gather(rows[a: a + batch_size])
                yield self.augment.normalize(x8), y
            return
        from torch.utils.data import DataLoader

        keys = [(int(r), 0) for r in rows]
        chunks = [keys[a: a + batch_size] for a in range(0, len(keys), batch_size)]
        for x8, y, _ in DataLoader(_Stream(self.items, self.dc), batch_sampler=chunks, num_workers=self.workers,
                                   collate_fn=_collate, pin_memory=self.device.type == "cuda"):
            yield (self.augment.normalize(x8.to(self.device, non_blocking=True)),
                   y.to(self.device, non_blocking=True))


def _to_device(array: np.ndarray, device):
    """A host array on the device without making the device's queue wait: through pinned memory."""
    import torch

    return torch.from_numpy(np.ascontiguousarray(array)).pin_memory().to(device, non_blocking=True)


class Feed:
    """The training batches of one sampler over some rows of a store: (x, y) on the device per step."""

    def __init__(self, store: ImageStore, rows: np.ndarray, batches: _Batches, augment: bool):
        if len(rows) != batches.n:
            raise ValueError(f"the sampler draws from {batches.n} images, the feed has {len(rows)}")
        self.store, self.rows, self.batches, self.augment = store, rows, batches, augment

    def _finish(self, x8, seeds: np.ndarray):
        aug = self.store.augment
        return aug(x8, seeds) if self.augment else aug.normalize(x8)

    def stream(self, start: int, stop: int) -> Iterator[tuple[Any, Any]]:
        """Steps [start, stop): the step's (x, y), augmented under each sample's own seed when asked."""
        store = self.store
        if store.resident and store.device.type == "cuda":
            yield from self._stream_ahead(start, stop)
            return
        if store.resident:
            for step in range(start, stop):
                keys = self.batches.batch(step)
                pos = np.fromiter((k[0] for k in keys), dtype=np.int64, count=len(keys))
                seeds = np.fromiter((k[1] for k in keys), dtype=np.int64, count=len(keys))
                x8, y = store.gather(self.rows[pos])
                yield self._finish(x8, seeds), y
            return
        from torch.utils.data import DataLoader

        items = [store.items[r] for r in self.rows]  # streamed: decoded per step by the workers
        loader = DataLoader(_Stream(items, store.dc), batch_sampler=StepSampler(self.batches, start, stop),
                            num_workers=store.workers, collate_fn=_collate, persistent_workers=False,
                            pin_memory=store.device.type == "cuda")
        for x8, y, seeds in loader:
            yield (self._finish(x8.to(store.device, non_blocking=True), seeds),
                   y.to(store.device, non_blocking=True))

    def _stream_ahead(self, start: int, stop: int) -> Iterator[tuple[Any, Any]]:
        """The GPU path: CHUNK steps' rows (and packed augmentation parameters) copied ahead in one go."""
        from .augment import draw, pack

        store = self.store
        for a in range(start, stop, CHUNK):
            keys = [self.batches.batch(step) for step in range(a, min(stop, a + CHUNK))]
            ends = np.cumsum([len(k) for k in keys])
            flat = [k for ks in keys for k in ks]
            pos = np.fromiter((k[0] for k in flat), dtype=np.int64, count=len(flat))
            rows = _to_device(self.rows[pos], store.device)
            params = None
            if self.augment:
                seeds = np.fromiter((k[1] for k in flat), dtype=np.int64, count=len(flat))
                params = _to_device(pack(draw(seeds, store.dc.size), store.dc.size), store.device)
            for i, end in enumerate(ends):
                lo = 0 if i == 0 else ends[i - 1]
                r = rows[lo:end]
                x8, y = store.images.index_select(0, r), store.labels.index_select(0, r)
                x = store.augment.on_device(x8, params[lo:end]) if self.augment else store.augment.normalize(x8)
                yield x, y
