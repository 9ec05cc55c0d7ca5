"""The exit-code policy: what reaches the user as one line, and with which status.

- AugurError: a problem with the user's input or environment, not a bug. One line, exit 1.
- UsageError: the command line itself is wrong (a bad option value, a missing argument). One line, exit 2,
  Click's convention.
- OSError from the environment (disk full, read-only folder, no permission, name too long): one line,
  exit 1, through `environment_message`.
Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import errno

EXIT_USER = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130


class AugurError(Exception):
    """A problem with the user's input or environment, not a bug: shown as one line, exit 1."""

    exit_code = EXIT_USER


class UsageError(AugurError):
    """The command line is wrong (shown as one line, exit 2)."""

    exit_code = EXIT_USAGE


# Errors the environment causes, not the code: each becomes one line instead of a traceback.
ENVIRONMENT_ERRNOS = {
    errno.ENOSPC: "no space left on the device",
    errno.EDQUOT: "disk quota exceeded",
    errno.EROFS: "the file system is read-only",
    errno.EACCES: "permission denied",
    errno.EPERM: "operation not permitted",
    errno.ENAMETOOLONG: "file name too long",
    errno.ENOTDIR: "a part of the path is a file, not a folder",
    errno.EISDIR: "is a folder, not a file",
    errno.EEXIST: "already exists",
    errno.EMFILE: "too many open files",
}


def environment_message(e: OSError) -> str | None:
    """The one line for an OSError the environment caused, or None for anything else (a bug)."""
    what = ENVIRONMENT_ERRNOS.get(e.errno or -1)
    if what is None:
        return None
    where = e.filename or ""
    hint = " (free some space, then run the same command again to resume)" if e.errno in (
        errno.ENOSPC, errno.EDQUOT) else ""
    return f"{where}: {what}{hint}" if where else f"{what}{hint}"
