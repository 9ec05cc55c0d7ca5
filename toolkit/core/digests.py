"""A folder's digest without reading its bytes again when nothing in it changed.

`render --model DIR` names a pipeline folder of several GB; hashing it on every call costs a minute or more.
`tree_digest` keeps `sha256_tree`'s result in the cache folder (core/paths.py), keyed by the folder's resolved path
and, for every file under it, its relative path, size and modification time in ns: a file rewritten,
added or removed gives another key, and the folder is hashed anew. The caller records which it was.
"""

from __future__ import annotations

from pathlib import Path

from . import paths
from .cache import key_of
from .errors import AugurError
from .files import read_json, sha256_tree, write_json


def file_stats(root: Path) -> list[tuple[str, int, int]]:
    """(relative path, size, modification time in ns) of every file under `root`, hidden ones too (a key built on
    it changes whenever a file does; the model store's records use it as well)."""
    out = []
    for p in sorted(root.rglob("*")):
        if p.is_file():
            st = p.stat()
            out.append((p.relative_to(root).as_posix(), st.st_size, st.st_mtime_ns))
    return out


def tree_digest(root: str | Path) -> tuple[str, bool]:
    """(sha256_tree(root), whether it came from the cache)."""
    root = Path(root).resolve()
    key = key_of("tree-digest", str(root), file_stats(root))
    record = paths.cache_dir() / "tree-digests" / f"{key[:32]}.json"
    if record.is_file():
        try:
            cached = read_json(record)
        except AugurError:  # a damaged record is hashed over
            cached = None
        if isinstance(cached, dict) and cached.get("key") == key and isinstance(cached.get("sha256"), str):
            return cached["sha256"], True
    digest = sha256_tree(root)
    write_json(record, {"key": key, "path": str(root), "sha256": digest})
    return digest, False
