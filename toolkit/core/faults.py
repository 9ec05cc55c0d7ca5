"""Deterministic kill points: where a pre-emption can hit, a process can be made to die on purpose.

`kill_point("render.after_png")` does nothing unless AUGUR_KILL_AT names that point: then the process
sends itself SIGKILL there (no cleanup, no flush, exactly as a cluster's pre-emption or the OOM killer
does). `AUGUR_KILL_AT=NAME:N` dies at the N-th time the point is reached; `NAME@SUBSTRING` only where
the point's detail (e.g. the file being renamed) contains SUBSTRING. The tests use it to prove that a
run killed at each of these points resumes to the same bytes and leaves nothing behind.
AUGUR_DELAY_AT=NAME=SECONDS sleeps there instead, so a test can hold a writer in the middle of its work.
"""

from __future__ import annotations

import os
import signal
import time

_counts: dict[str, int] = {}


def kill_point(name: str, detail: str = "") -> None:
    delay = os.environ.get("AUGUR_DELAY_AT")
    if delay and delay.partition("=")[0] == name:
        time.sleep(float(delay.partition("=")[2] or 1))
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
