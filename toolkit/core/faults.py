"""Deterministic kill points: where a pre-emption can hit, a process can be made to die on purpose.

`kill_point("render.after_png")` does nothing unless AUGUR_KILL_AT names that point: then the process
sends itself SIGKILL there (no cleanup, no flush, exactly as a cluster's pre-emption or the OOM killer
does). `AUGUR_KILL_AT=NAME:N` dies at the N-th time the point is reached; `NAME@SUBSTRING` only where
the point's detail (e.g. the file being renamed) contains SUBSTRING. The tests use it to prove that a
run killed at each of these points resumes to the same bytes and leaves nothing behind.
AUGUR_HOLD_AT=NAME=PATH holds the process there instead: it writes PATH.reached and waits until PATH
exists, so a test can act while a writer is provably in the middle of its work, without guessing how
long anything takes.
"""

from __future__ import annotations

import os
import signal
import time

_counts: dict[str, int] = {}


HOLD_SECONDS = 900.0


def kill_point(name: str, detail: str = "") -> None:
    hold = os.environ.get("AUGUR_HOLD_AT")
    if hold and hold.partition("=")[0] == name:
        _hold(hold.partition("=")[2])
    spec = os.environ.get("AUGUR_KILL_AT")
    if not spec:
        return
    target, _, nth = spec.partition(":")
    target, _, needle = target.partition("@")
    if target != name or (needle and needle not in detail):
        return
    _counts[name] = _counts.get(name, 0) + 1
    if _counts[name] >= int(nth or 1):
        os.kill(os.getpid(), signal.SIGKILL)


def _hold(path: str) -> None:
    """Say that the point is reached, then wait for the release file (once per process)."""
    if _counts.get("_held"):
        return
    _counts["_held"] = 1
    with open(path + ".reached", "w") as f:
        f.write(str(os.getpid()))
    deadline = time.monotonic() + HOLD_SECONDS
    while not os.path.exists(path) and time.monotonic() < deadline:
        time.sleep(0.01)
