"""Near-duplicates: a perceptual hash (the `imagehash` package's pHash, 64 bits) and the cosine similarity
of the scorer's image embeddings.

Two images are near-copies when their pHashes differ in at most `max_hash_distance` bits, or their
embeddings' cosine is at least the threshold. Within a class, images are visited best-scored first and
an image is dropped when it is a near-copy of one already kept: of any such pair only the better-scored
image stays, and the dropped one names its twin.
"""

from __future__ import annotations

from typing import Any

import numpy as np

HASH_BITS = 64


def phash(image) -> int:
    """pHash of a PIL image, its 64 bits as one unsigned integer."""
    import imagehash

    bits = np.asarray(imagehash.phash(image).hash, dtype=bool).reshape(-1)
    return int(np.packbits(bits).view(">u8")[0])


def hash_distances(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Hamming distances (bits) between every hash of `a` and every hash of `b` (uint64 arrays)."""
    a, b = np.asarray(a, dtype=np.uint64), np.asarray(b, dtype=np.uint64)
    return np.bitwise_count(a[:, None] ^ b[None, :]).astype(np.int16)


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    a = a / np.maximum(np.linalg.norm(a, axis=1, keepdims=True), 1e-12)
    b = b / np.maximum(np.linalg.norm(b, axis=1, keepdims=True), 1e-12)
    return a @ b.T


def nearest(hashes: np.ndarray, emb: np.ndarray, other_hashes: np.ndarray, other_emb: np.ndarray,
            chunk: int = 1024) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For every row: the most similar row of the other set by embedding (its index and cosine), and the
    smallest pHash distance to any row of the other set; in chunks, so large sets fit in memory."""
    idx, cos, dist = [], [], []
    for a in range(0, len(emb), chunk):
        c = cosines(emb[a:a + chunk], other_emb)
        idx.append(c.argmax(1))
        cos.append(c.max(1))
        dist.append(hash_distances(hashes[a:a + chunk], other_hashes).min(1))
    if not idx:
        return np.zeros(0, int), np.zeros(0), np.zeros(0, int)
    return np.concatenate(idx), np.concatenate(cos), np.concatenate(dist)


def deduplicate(order: list[int], hashes: np.ndarray, emb: np.ndarray, threshold: float,
                max_hash_distance: int) -> dict[int, dict[str, Any]]:
    """Positions (into hashes/emb) dropped as near-copies -> {twin, cosine, hash_distance}; `order` lists the
    candidates best first."""
    if not order:
        return {}
    idx = np.asarray(order)
    cos = cosines(emb[idx], emb[idx])
    dist = hash_distances(hashes[idx], hashes[idx])
    near = (dist <= max_hash_distance) | (cos >= threshold)
    kept: list[int] = []
    dropped: dict[int, dict[str, Any]] = {}
    for k in range(len(idx)):
        twins = [j for j in kept if near[k, j]]
        if twins:
            j = twins[0]
            dropped[int(idx[k])] = {"twin": int(idx[j]), "cosine": round(float(cos[k, j]), 6),
                                    "hash_distance": int(dist[k, j])}
        else:
            kept.append(k)
    return dropped
