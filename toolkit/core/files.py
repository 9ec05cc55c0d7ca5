"""Writing artifacts so that nothing half-written ever looks complete, and reading them back.

One helper writes every file: `atomic_write` (a temp file in the same folder, fsync, rename over the
target, fsync of the folder). One helper appends rows: `append_jsonl` (one write per call with
O_APPEND, then fsync), whose readers drop a last line torn by a crash. A kill just before a rename
leaves a hidden `.NAME.XXXX.part` file; `remove_partials` clears those when a stage claims its folder.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterable, Iterator

from .errors import AugurError
from .faults import kill_point

PART_SUFFIX = ".part"
# mkstemp creates files readable by their owner only; an artifact gets the mode any new file would.
_UMASK = os.umask(0)
os.umask(_UMASK)


def fsync_dir(folder: str | Path) -> None:
    """Make a rename in `folder` durable (a no-op where folders cannot be opened, e.g. Windows)."""
    try:
        fd = os.open(str(folder), os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextmanager
def atomic_write(path: str | Path) -> Iterator[Path]:
    """Yield a temp path beside `path`; on success it is fsynced and renamed over `path`.

    On failure (an exception, a full disk) the temp file is removed and `path` is untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name[:60]}.", suffix=PART_SUFFIX, dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        with open(tmp_path, "rb+") as f:
            os.fsync(f.fileno())
        os.chmod(tmp_path, 0o666 & ~_UMASK)
        kill_point("rename", str(path))
        os.replace(tmp_path, path)
        fsync_dir(path.parent)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def write_bytes(path: str | Path, data: bytes) -> None:
    with atomic_write(path) as tmp:
        tmp.write_bytes(data)


def write_text(path: str | Path, text: str) -> None:
    write_bytes(path, text.encode("utf-8"))


def dumps_row(row: dict[str, Any]) -> str:
    # Sorted keys and fixed separators: byte-identical output for identical content.
    return json.dumps(row, sort_keys=True, ensure_ascii=False, separators=(", ", ": "))


def write_json(path: str | Path, obj: Any) -> None:
    write_text(path, json.dumps(obj, sort_keys=True, indent=2, ensure_ascii=False) + "\n")


def write_jsonl(path: str | Path, rows: Iterable[dict[str, Any]]) -> None:
    write_text(path, "".join(dumps_row(r) + "\n" for r in rows))


def append_jsonl(path: str | Path, rows: Iterable[dict[str, Any]]) -> None:
    """One write per call with O_APPEND, then fsync: rows are whole or (a torn last line) dropped on read.
    A last line torn by an earlier crash is cut off first, so the new rows never join it."""
    data = "".join(dumps_row(r) + "\n" for r in rows).encode("utf-8")
    if not data:
        return
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    repair_torn_tail(path)
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        view = memoryview(data)
        while view:  # a short write (a signal, a full pipe) must not tear a row
            view = view[os.write(fd, view):]
        kill_point("append", str(path))
        os.fsync(fd)
    finally:
        os.close(fd)


def repair_torn_tail(path: Path) -> bool:
    """Cut an unterminated last line (a kill in the middle of an append) off a JSONL file; True if it did."""
    try:
        fd = os.open(path, os.O_RDWR)
    except FileNotFoundError:
        return False
    try:
        size = os.fstat(fd).st_size
        if size == 0:
            return False
        os.lseek(fd, size - 1, os.SEEK_SET)
        if os.read(fd, 1) == b"\n":
            return False
        end, chunk = size, 1 << 16
        while end > 0:  # the last newline, searched backwards
            start = max(0, end - chunk)
            os.lseek(fd, start, os.SEEK_SET)
            block = os.read(fd, end - start)
            i = block.rfind(b"\n")
            if i >= 0:
                end = start + i + 1
                break
            end = start
        os.ftruncate(fd, end)
        os.fsync(fd)
        return True
    finally:
        os.close(fd)


@contextmanager
def io_errors(path: str | Path) -> Iterator[None]:
    """Writers that report a failed write in their own exception type (safetensors: "... (os error 28)";
    torch.save: "file write failed") raise the OSError it was instead, so a full disk is one line."""
    import errno
    import re

    try:
        yield
    except OSError:
        raise
    except Exception as e:  # safetensors_rust.SafetensorError, RuntimeError from torch's zip writer
        text = str(e)
        m = re.search(r"os error (\d+)", text)
        code = int(m.group(1)) if m else None
        if code is None and ("write failed" in text or "No space left" in text):
            try:
                code = errno.ENOSPC if shutil.disk_usage(Path(path).parent).free < (1 << 20) else None
            except OSError:
                code = None
        if code is None:
            raise
        raise OSError(code, os.strerror(code), str(path)) from None


def save_safetensors(tensors: dict, path: str | Path) -> None:
    """safetensors' save_file, a failed write raised as the OSError it was (io_errors)."""
    from safetensors.torch import save_file

    with io_errors(path):
        save_file(tensors, str(path))


def _read(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise AugurError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise AugurError(f"{path}: is a folder, not a file") from None
    except (OSError, UnicodeDecodeError) as e:
        raise AugurError(f"{path}: cannot read ({e.__class__.__name__})") from None


def read_text(path: str | Path) -> str:
    """A UTF-8 text file; a missing, binary or unreadable one is one line naming it."""
    return _read(Path(path))


def read_json(path: str | Path) -> Any:
    path = Path(path)
    text = _read(path)
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise AugurError(f"{path}: not valid JSON ({e.msg} at line {e.lineno})") from None


def read_jsonl(path: str | Path, *, tolerate_torn_tail: bool = False) -> list[dict[str, Any]]:
    """Rows of a JSONL file; a malformed line is an error naming its line number.

    With `tolerate_torn_tail`, an unterminated malformed last line (a crash in the middle of an
    append) is dropped instead: the work it recorded is simply redone.
    """
    path = Path(path)
    text = _read(path)
    lines = text.split("\n")
    rows = []
    for lineno, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            if tolerate_torn_tail and lineno == len(lines) and not text.endswith("\n"):
                break
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


def sha256_of(path: str | Path) -> str:
    path = Path(path)
    return sha256_tree(path) if path.is_dir() else sha256_file(path)


def remove_partials(folder: str | Path) -> list[Path]:
    """Delete the temp files (`.NAME.XXXX.part`) and temp folders (`.NAME.tmp`) a killed run left in
    `folder`, at any depth. Call it only while holding the folder's lock: a live writer's temp files
    look the same."""
    folder = Path(folder)
    removed = []
    if not folder.is_dir():
        return removed
    for p in sorted(folder.rglob(".*")):
        if p.name.endswith(PART_SUFFIX) and p.is_file():
            p.unlink(missing_ok=True)
            removed.append(p)
        elif p.name.endswith(".tmp") and p.is_dir():
            shutil.rmtree(p, ignore_errors=True)
            removed.append(p)
    return removed


def publish_dir(tmp: Path, final: Path) -> None:
    """Rename a fully written temp folder into place (replacing an older `final`), durably."""
    for p in tmp.rglob("*"):
        if p.is_file():
            with open(p, "rb+") as f:
                os.fsync(f.fileno())
    fsync_dir(tmp)
    kill_point("publish", str(final))
    old = final.with_name(f".{final.name}.old.tmp")
    if final.exists():
        shutil.rmtree(old, ignore_errors=True)
        final.rename(old)
    tmp.rename(final)
    fsync_dir(final.parent)
    shutil.rmtree(old, ignore_errors=True)
