"""Claiming an output folder: one stage run per folder, one writer at a time, nothing foreign touched.

Every stage calls `claim(out, stage, identity)` before it writes anything:
- `--out` must be a folder (or not exist yet); a file there is refused.
- A lock (`.augur.lock`, an OS file lock released when the process dies) keeps a second process out:
  "another process is writing to OUT". Render shards take the folder lock shared and their own shard
  lock exclusive, so shards of one run may write side by side. A shard that finds itself alone takes
  the folder lock exclusive for a moment (to clear a killed run's temp files); a shard arriving in
  that moment waits it out (up to SHARED_WAIT seconds) rather than failing.
- The folder records what run it holds (`STAGE.json`, or the name the claimer gives: the stage, its
  identity, the toolkit version). A record is known by its content (a JSON object with "stage" and
  "identity"), so the core needs no list of stages. A folder of another stage, a folder of this stage
  with other settings, and a non-empty folder with no record are refused; `force=True` (the stage's --force) wipes a run of the same stage and starts
  over, but never touches a foreign folder.
- Once the claim is exclusive, temp files left by a killed run (`.NAME.XXXX.part`, `.NAME.tmp/`) are
  removed: a resumed run leaves nothing behind that an uninterrupted one would not.
- A run that fails before it has written anything (a truncated model, a corrupt weights file) does not
  pin its settings: its record goes with it (and the folder, if the run made it), so the corrected
  command is not refused as "another run". Once anything is written, the record stays: the folder can
  only be resumed with the same settings.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .. import __version__
from .errors import AugurError
from .files import read_json, remove_partials, write_json

LOCK = ".augur.lock"
# How long a shard waits for a sibling shard's exclusive moment (clearing temp files over the folder).
SHARED_WAIT = 30.0
RECORD_KEYS = ("stage", "identity")  # what makes a JSON file at a folder's top a run's record
# Stage names that records written by earlier versions carry, read as today's: `augur run`'s folders said "run"
# until 2026-11-28, "recipe" since; an old run folder still resumes and reports.
RENAMED = {"run": "recipe"}

try:  # POSIX: Linux, macOS, WSL
    import fcntl

    def _lock(fd: int, exclusive: bool) -> bool:
        try:
            fcntl.flock(fd, (fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH) | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            return False

    def _unlock(fd: int) -> None:
        fcntl.flock(fd, fcntl.LOCK_UN)

    # flock(2) converts a lock (shared <-> exclusive) by dropping it and then taking the new one.
    CONVERSION_DROPS = True
except ImportError:  # pragma: no cover - native Windows: exclusive locks only
    import msvcrt

    def _lock(fd: int, exclusive: bool) -> bool:
        try:
            msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
            return True
        except OSError:
            return False

    def _unlock(fd: int) -> None:
        msvcrt.locking(fd, msvcrt.LK_UNLCK, 1)

    CONVERSION_DROPS = False  # one lock kind: nothing is converted


def _lock_within(fd: int, exclusive: bool, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while not _lock(fd, exclusive):
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.02)
    return True


class Lock:
    """A non-blocking OS file lock; released on close or when the process dies (SIGKILL included)."""

    def __init__(self, path: Path, exclusive: bool, holder: str):
        self.path = path
        self.holder = holder
        self.fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        # An exclusive writer (a whole run) is refused at once; a shared one (a shard) waits out a
        # sibling shard's exclusive moment.
        if not _lock_within(self.fd, exclusive, 0.0 if exclusive else SHARED_WAIT):
            os.close(self.fd)
            self.fd = -1
            self._refuse()
        self.exclusive = exclusive
        if exclusive:
            os.ftruncate(self.fd, 0)
            os.write(self.fd, f"pid {os.getpid()}".encode())

    def _refuse(self) -> None:
        other = ""
        try:
            other = self.path.read_text(encoding="utf-8").strip()
        except OSError:
            pass
        raise AugurError(f"another process is writing to {self.holder}{f' ({other})' if other else ''}; "
                         "wait for it to finish, or use another --out")

    def try_exclusive(self) -> bool:
        """Upgrade a shared lock when no one else holds it (then downgrade with `share`); else stay shared."""
        if _lock(self.fd, True):
            self.exclusive = True
            return True
        # On Linux a refused non-blocking upgrade leaves no lock at all (see CONVERSION_DROPS): a
        # sibling shard would then find itself alone and clear this shard's temp files mid-write.
        # Take the shared lock back.
        self._reshare()
        return False

    def share(self) -> None:
        self._reshare()  # the downgrade is a conversion too: not atomic either

    def _reshare(self) -> None:
        self.exclusive = False
        if CONVERSION_DROPS and not _lock_within(self.fd, False, SHARED_WAIT):
            self.release()
            self._refuse()

    def release(self) -> None:
        if self.fd >= 0:
            try:
                _unlock(self.fd)
            finally:
                os.close(self.fd)
                self.fd = -1


@dataclass
class Claim:
    out: Path
    stage: str
    identity: dict[str, Any]
    locks: list[Lock] = field(default_factory=list)
    resumed: bool = False  # the folder already held this run
    wrote_record: bool = False  # this claim wrote the record (a new run, or a --force restart)
    made_folder: bool = False  # the folder did not exist before
    finished: bool = False
    record_name: str = ""

    @property
    def record(self) -> Path:
        return self.out / (self.record_name or f"{self.stage}.json")

    def release(self) -> None:
        if self.locks and not self.finished and self.wrote_record and self.locks[0].exclusive:
            self._forget_if_empty()
        for lock in reversed(self.locks):
            lock.release()
        self.locks.clear()

    def _forget_if_empty(self) -> None:
        """A failed run that wrote nothing but its record leaves nothing (see the module docstring)."""
        try:
            rest = [p for p in self.out.iterdir() if p.name != self.record.name and not p.name.startswith(".")]
            if rest:
                return
            self.record.unlink(missing_ok=True)
            if self.made_folder:
                for p in self.out.iterdir():  # our dot files: the lock, a temp file of the record
                    if p.is_file():
                        p.unlink(missing_ok=True)
                self.out.rmdir()
        except OSError:
            pass  # leaving a record behind is the old behaviour, not a new failure

    def finish(self) -> None:
        """Clear leftovers when no other writer remains (shards), then let go."""
        self.finished = True
        if self.locks and (self.locks[0].exclusive or self.locks[0].try_exclusive()):
            remove_partials(self.out)
        self.release()

    def __enter__(self) -> "Claim":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.release()


def as_recorded(obj: Any) -> Any:
    """An identity as a claim records and compares it: through JSON (sorted keys, paths as text)."""
    return json.loads(json.dumps(obj, sort_keys=True, default=str))


def check_out_path(out: Path) -> Path:
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise AugurError(f"--out {out} is a file, not a folder")
    for parent in out.parents:
        if parent.exists() and not parent.is_dir():
            raise AugurError(f"--out {out}: {parent} is a file, not a folder")
    return out


def records(out: Path) -> dict[str, Path]:
    """The runs' records at the top of `out`, by stage: JSON objects with a stage and an identity."""
    import json

    found: dict[str, Path] = {}
    if not out.is_dir():
        return found
    for p in sorted(out.glob("*.json")):
        try:
            if p.stat().st_size > (1 << 20):  # a record is small; a big JSON is somebody's data
                continue
            obj = json.loads(p.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if isinstance(obj, dict) and all(k in obj for k in RECORD_KEYS) and isinstance(obj["stage"], str):
            found.setdefault(RENAMED.get(obj["stage"], obj["stage"]), p)
    return found


def stage_in(out: Path) -> str | None:
    """The stage whose run `out` holds, if any."""
    found = records(Path(out))
    return next(iter(found), None)


def foreign_stage(out: Path, stage: str) -> str | None:
    """The other stage whose run `out` holds, if any."""
    return next((other for other in records(out) if other != stage), None)


def claim(out: str | Path, stage: str, identity: dict[str, Any], *, force: bool = False, hint: str = "",
          shard: tuple[int, int] | None = None, extra: dict[str, Any] | None = None, record: str = "") -> Claim:
    """Take `out` for a run of `stage` with `identity` (see the module docstring)."""
    out = check_out_path(Path(out))
    _refuse_foreign(out, stage, record or f"{stage}.json")  # before anything is created in a folder not ours
    made_folder = not out.exists()
    out.mkdir(parents=True, exist_ok=True)
    shared = shard is not None
    locks = [Lock(out / LOCK, exclusive=not shared, holder=str(out))]
    try:
        if shared:
            i, n = shard
            locks.append(Lock(out / f".augur-shard-{i}-of-{n}.lock", True, f"{out} (shard {i}/{n})"))
        c = Claim(out, stage, as_recorded(identity), locks, made_folder=made_folder, record_name=record)
        # Content first, then the record: a run writes its record before anything else, so content
        # seen here (a sibling shard's, written meanwhile) comes with a record to compare with.
        nonempty = _has_content(out)
        other = foreign_stage(out, stage)
        if other is not None:
            raise AugurError(f"{out} holds a {other} run, not a {stage} run; use another --out")
        if c.record.is_file():
            old = read_json(c.record)
            old_identity = old.get("identity") if isinstance(old, dict) else None
            if old_identity != c.identity:
                if force and locks[0].exclusive:
                    _wipe(out)
                else:
                    keys = set(old_identity or {}) | set(c.identity)
                    diff = sorted(k for k in keys if (old_identity or {}).get(k) != c.identity.get(k))
                    hint = hint or "use another --out"
                    raise AugurError(f"{out} holds a {stage} run with other settings (differs in: "
                                     f"{', '.join(diff) or 'its record'}); {hint}")
            elif force and locks[0].exclusive:
                _wipe(out)
            else:
                c.resumed = True
        elif nonempty:
            raise AugurError(f"{out} is not empty and holds no {stage} run; use another --out")
        if locks[0].exclusive or locks[0].try_exclusive():
            remove_partials(out)
            if shared:
                locks[0].share()
        if not c.resumed or not c.record.is_file():
            write_json(c.record, {"stage": stage, "identity": c.identity, "toolkit_version": __version__,
                                  **(extra or {})})
            c.wrote_record = True
        return c
    except BaseException:
        for lock in reversed(locks):
            lock.release()
        raise


def _has_content(out: Path) -> bool:
    """Anything but our dot files (locks, temp files) in the folder."""
    return any(not p.name.startswith(".") for p in out.iterdir())


def _refuse_foreign(out: Path, stage: str, record: str) -> None:
    if not out.is_dir():
        return
    other = foreign_stage(out, stage)
    if other is not None:
        raise AugurError(f"{out} holds a {other} run, not a {stage} run; use another --out")
    nonempty = _has_content(out)  # before the record: see claim
    if nonempty and not (out / record).is_file():
        raise AugurError(f"{out} is not empty and holds no {stage} run; use another --out")


def _wipe(out: Path) -> None:
    """--force: remove everything of the old run (the lock file stays: we hold it)."""
    for p in out.iterdir():
        if p.name == LOCK:
            continue
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p)
        else:
            p.unlink()
