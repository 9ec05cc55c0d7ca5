"""Writing artifacts so that nothing half-written ever looks complete."""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterable, Iterator

from .errors import AugurError


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temp path beside `path`; rename it over `path` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".part", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def write_text(path: str | Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def dumps_row(row: dict[str, Any]) -> str:
    # Sorted keys and fixed separators: byte-identical output for identical content.
    return json.dumps(row, sort_keys=True, ensure_ascii=False, separators=(", ", ": "))


def write_json(path: str | Path, obj: Any) -> None:
    write_text(path, json.dumps(obj, sort_keys=True, indent=2, ensure_ascii=False) + "\n")


def write_jsonl(path: str | Path, rows: Iterable[dict[str, Any]]) -> None:
    write_text(path, "".join(dumps_row(r) + "\n" for r in rows))


def read_json(path: str | Path) -> Any:
    path = Path(path)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise AugurError(f"{path}: no such file") from None
    except (OSError, UnicodeDecodeError) as e:
        raise AugurError(f"{path}: cannot read ({e.__class__.__name__})") from None
    except json.JSONDecodeError as e:
        raise AugurError(f"{path}: not valid JSON ({e.msg} at line {e.lineno})") from None


def read_jsonl(path: str | Path) -> list[dict[str, Any]]:
    """Rows of a JSONL file; a malformed line is an error naming its line number."""
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        raise AugurError(f"{path}: no such file") from None
    except (OSError, UnicodeDecodeError) as e:
        raise AugurError(f"{path}: cannot read ({e.__class__.__name__})") from None
    rows = []
    for lineno, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise AugurError(f"{path}:{lineno}: not valid JSON ({e.msg})") from None
        if not isinstance(row, dict):
            raise AugurError(f"{path}:{lineno}: expected a JSON object per line")
        rows.append(row)
    return rows


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def sha256_tree(root: str | Path) -> str:
    """Digest of a folder: relative paths and file digests, in sorted order (hidden files skipped)."""
    root = Path(root)
    h = hashlib.sha256()
    for p in sorted(root.rglob("*")):
        rel = p.relative_to(root)
        if p.is_file() and not any(part.startswith(".") for part in rel.parts):
            h.update(rel.as_posix().encode() + b"\0" + sha256_file(p).encode() + b"\n")
    return h.hexdigest()


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def refuse_overwrite(path: Path, force: bool) -> None:
    if path.exists() and not force:
        raise AugurError(f"{path} already exists; pass --force to replace it")


def check_identity(out: Path, name: str, identity: dict[str, Any], hint: str, key: str | None = None) -> None:
    """A resumable stage's output folder belongs to one configuration: refuse to mix another into it.

    OUT/NAME records the configuration (the whole file, or its `key` entry, which the caller then
    writes). A folder that holds files but no such record is refused too: whatever is there is not
    ours to write over.
    """
    out = Path(out)
    f = out / name
    stage = Path(name).stem
    if f.exists():
        old = read_json(f)
        old = old.get(key, {}) if key else old
        if old != json.loads(json.dumps(identity)):
            diff = sorted(k for k in set(old) | set(identity) if old.get(k) != identity.get(k))
            raise AugurError(f"{out} holds a {stage} run with other settings (differs in: {', '.join(diff)}); {hint}")
        return
    if out.exists() and any(not p.name.startswith(".") for p in out.iterdir()):
        raise AugurError(f"{out} is not empty and holds no {stage} run; use another --out")
    if key is None:
        write_json(f, identity)
