"""One stage run's context: the output folder's claim and lock, who writes, the processes, what they print.

Every stage function runs inside one:

    with StageRun(out, "dg", identity, hint=...) as run:
        ... run.main, run.world, run.log(...)
        run.finish()          # the stage's output is complete

- Under `accelerate launch` with several processes, only the main process claims the folder (and so
  holds its lock and writes its record); the others wait until it has, compute their share, and write
  nothing but what their stage hands them (render shards: their own manifest). A stage that shards
  (render) claims the folder in every process, each its own shard lock beside a shared folder lock.
- `finish()` marks the output complete: leftover temp files go, and the record stays. Leaving the
  block without it (an error, a kill) keeps what was written for the resume; a run that wrote nothing
  leaves no record behind (core/outdir.py).
- `log()` prints a line on the main process only: N processes do not say the same thing N times.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import distributed, outdir


@dataclass
class StageResult:
    """What one run of a stage says and leaves, the same for every stage: the lines a command prints last
    (the summary line is the last), tables printed before them, warnings (stderr), the files it wrote,
    and data a caller may use (result rows, a card). `printed` is False on the helper processes of an
    `accelerate launch` that have nothing of their own to say."""

    lines: list[str]
    tables: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    files: dict[str, str] = field(default_factory=dict)
    data: dict[str, Any] = field(default_factory=dict)
    printed: bool = True

    @property
    def line(self) -> str:
        return self.lines[-1] if self.lines else ""

    def summary(self) -> dict[str, Any]:
        """What a recipe records of the stage in its folder's DONE.json."""
        out: dict[str, Any] = {"line": self.line}
        if self.tables:
            out["table"] = "\n\n".join(self.tables)
        return {**out, **self.files}


class StageRun:
    def __init__(self, out: str | Path, stage: str, identity: dict[str, Any], *, force: bool = False, hint: str = "",
                 shard: tuple[int, int] | None = None, extra: dict[str, Any] | None = None, record: str = ""):
        self.out, self.stage, self.identity = Path(out), stage, identity
        self.force, self.hint, self.shard, self.extra, self.record = force, hint, shard, extra, record
        self.claim: outdir.Claim | None = None
        state = distributed.state()
        self.rank, self.processes = (state.process_index, state.num_processes) if state is not None else (0, 1)
        self.main = self.rank == 0

    @property
    def world(self) -> tuple[int, int]:
        """(this process, how many): what the samplers take to give each process its share of a batch."""
        return self.rank, self.processes

    @property
    def resumed(self) -> bool:
        return bool(self.claim and self.claim.resumed)

    def __enter__(self) -> "StageRun":
        sharded = self.shard is not None and self.shard[1] > 1
        if self.main or sharded:
            self.claim = outdir.claim(self.out, self.stage, self.identity, force=self.force, hint=self.hint,
                                      shard=self.shard if sharded else None, extra=self.extra, record=self.record)
        if not sharded:
            distributed.wait_for_everyone()  # the others start once the folder is claimed
        return self

    def finish(self) -> None:
        if self.claim is not None:
            self.claim.finish()

    def wait(self) -> None:
        distributed.wait_for_everyone()

    def log(self, text: str) -> None:
        if self.main:
            print(text, file=sys.stderr, flush=True)

    def __exit__(self, *exc: Any) -> None:
        if self.claim is not None:
            self.claim.release()
