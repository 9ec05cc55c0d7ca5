"""How many CPU threads a stage computes with, on a machine it may share.

torch's default is one thread per core, and its OpenMP workers wait for each other at the end of every
parallel region. Beside one busy process on a 2-core machine, the worker that shares a core with it is
descheduled and the others wait for it: measured here, `augur dg` ran 2.9-3.7x slower at the default
than with one thread. So a stage counts the cores other processes keep busy when it starts (psutil,
over a quarter of a second) and takes the rest, at least one: alone it gets every core, beside a busy
neighbour one fewer. `--threads N` (or OMP_NUM_THREADS, which `accelerate launch` sets) decides
instead. The choice and why are recorded in every result (thread count changes float sums).

OpenMP's waiting policy: idle workers spin before they sleep (GNU OpenMP's default). That is the fast
choice when every worker has a core, and the thread count above gives them one; a neighbour that
starts later can still land on a spinning core, which the measurements in benchmarks/bench_train.py's
shared-core case show (docs/benchmarks.md).
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass

from .device import cpu_count

SAMPLE_SECONDS = 0.25
REUSE_SECONDS = 10.0  # stages started within this of each other (a recipe, a library caller) reuse one sample
_last: tuple[float, int] | None = None


@dataclass(frozen=True)
class ThreadChoice:
    threads: int
    why: str

    def provenance(self) -> dict:
        return {"threads": self.threads, "threads_choice": self.why}


def busy_cores(seconds: float = SAMPLE_SECONDS) -> float:
    """Cores' worth of CPU time the rest of the machine used over `seconds` (this process is idle then)."""
    import psutil

    mine = psutil.Process()
    t0 = sum(mine.cpu_times()[:2])
    total = psutil.cpu_percent(interval=seconds) / 100.0 * (os.cpu_count() or 1)
    own = (sum(mine.cpu_times()[:2]) - t0) / seconds
    return max(0.0, total - own)


def choose(requested: int | None = None) -> ThreadChoice:
    if requested:
        return ThreadChoice(requested, "--threads")
    env = os.environ.get("OMP_NUM_THREADS", "").strip()
    if env.isdigit() and int(env) > 0:
        return ThreadChoice(int(env), "OMP_NUM_THREADS")
    global _last
    cores = cpu_count()
    if cores == 1:
        return ThreadChoice(1, "one core")
    if _last is None or time.monotonic() - _last[0] > REUSE_SECONDS:
        _last = (time.monotonic(), int(round(busy_cores())))
    busy = _last[1]
    return ThreadChoice(max(1, cores - busy), f"auto: {cores} cores, {busy} busy")


def apply(requested: int | None = None) -> ThreadChoice:
    """Choose, then set torch's intra-op threads (interop stays torch's default)."""
    import torch

    choice = choose(requested)
    if torch.get_num_threads() != choice.threads:
        torch.set_num_threads(choice.threads)
    return choice
