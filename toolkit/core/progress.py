"""Progress: a tqdm bar on a terminal, short lines anywhere else.

Written to a file or a pipe (`nohup`, `tee`, a scheduler, CI), every tqdm refresh is a carriage-return
frame in the log: the first 40% of one `make demo` wrote 614 of them into 28 lines. So when stderr is
not a terminal a stage prints a plain line when it starts, about every 10% or 30 seconds, and when it
ends, with the same figures the bar would show (`desc: 40/100 steps (40%), 512 img/s, loss 0.412`).
AUGUR_PROGRESS=bar|lines overrides the choice; disabled progress prints nothing.
"""

from __future__ import annotations

import os
import sys
import time
from typing import Any

EVERY_FRACTION = 0.1
EVERY_SECONDS = 30.0


def _style(stream) -> str:
    forced = os.environ.get("AUGUR_PROGRESS", "").strip().lower()
    if forced in ("bar", "lines"):
        return forced
    return "bar" if getattr(stream, "isatty", lambda: False)() else "lines"


def progress_bar(total: int | None, desc: str | None, unit: str = "it", initial: int = 0, disable: bool = False,
             leave: bool = False):
    """A bar or a line printer with tqdm's update / set_postfix / write / close."""
    stream = sys.stderr
    if disable or desc is None:
        return Lines(total, desc or "", unit, initial, stream, disabled=True)
    if _style(stream) == "bar":
        from tqdm import tqdm

        return tqdm(total=total, desc=desc, unit=unit, initial=initial, leave=leave, file=stream)
    return Lines(total, desc, unit, initial, stream)


class Lines:
    """tqdm's interface, as a handful of lines (see the module docstring)."""

    def __init__(self, total: int | None, desc: str, unit: str, initial: int, stream, disabled: bool = False):
        self.total, self.desc, self.unit, self.n, self.stream = total, desc, unit, initial, stream
        self.disable = disabled
        self.postfix: dict[str, Any] = {}
        self.t0 = self.last_time = time.monotonic()
        self.start_n = initial
        self.last_n = initial
        self.closed = False
        if not disabled:
            self._line("started" if not initial else "resumed")

    def _figures(self) -> str:
        done = f"{self.n}/{self.total} {self.unit}s" if self.total else f"{self.n} {self.unit}s"
        if self.total:
            done += f" ({100 * self.n / self.total:.0f}%)"
        extra = ", ".join(f"{k} {v}" for k, v in self.postfix.items())
        return done + (f", {extra}" if extra else "")

    def _line(self, what: str = "") -> None:
        text = f"{self.desc}: {self._figures()}" + (f" {what}" if what else "")
        print(text, file=self.stream, flush=True)
        self.last_time, self.last_n = time.monotonic(), self.n

    def update(self, k: int = 1) -> None:
        self.n += k
        if self.disable:
            return
        step = max(1, int((self.total or 0) * EVERY_FRACTION)) if self.total else None
        due = (step is not None and self.n - self.last_n >= step) or time.monotonic() - self.last_time >= EVERY_SECONDS
        if due and (not self.total or self.n < self.total):
            self._line()

    def set_postfix(self, **values: Any) -> None:
        self.postfix = {k: v for k, v in values.items()}

    def write(self, text: str, file=None) -> None:
        print(text, file=file or self.stream, flush=True)

    def close(self) -> None:
        if self.disable or self.closed:
            return
        self.closed = True
        if self.n != self.last_n or self.n == self.start_n:
            secs = time.monotonic() - self.t0
            self._line(f"done in {secs:.1f} s")
