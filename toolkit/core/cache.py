"""A content-addressed JSON cache: a finished unit of work is stored under the hash of everything it depends on."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Callable

from .files import write_json


def key_of(*parts: Any) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, ensure_ascii=False).encode()).hexdigest()


def derive_seed(*parts: Any) -> int:
    """A 31-bit seed from the run seed and the identity of one unit of work (stable across runs)."""
    return int(key_of("seed", *parts)[:8], 16) & 0x7FFFFFFF


class JsonCache:
    def __init__(self, root: Path):
        self.root = Path(root)
        self.hits = 0
        self.misses = 0

    def _path(self, key: str) -> Path:
        return self.root / key[:2] / f"{key}.json"

    def get(self, key: str) -> Any | None:
        p = self._path(key)
        try:
            return json.loads(p.read_text(encoding="utf-8"))
        except (FileNotFoundError, json.JSONDecodeError):
            # A torn entry cannot exist (writes are atomic) but a hand-edited one may: recompute.
            return None

    def get_or_compute(self, key: str, compute: Callable[[], Any]) -> tuple[Any, bool]:
        value = self.get(key)
        if value is not None:
            self.hits += 1
            return value, True
        value = compute()
        write_json(self._path(key), value)
        self.misses += 1
        return value, False
