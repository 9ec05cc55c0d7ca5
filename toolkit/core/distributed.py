"""Running under `accelerate launch` with several processes: who am I, and wait for the others.

Outside such a launch every helper answers as a lone process without importing accelerate or
starting a process group, so single-process runs pay nothing.
"""

from __future__ import annotations

import contextlib
import os


_alone = 0  # > 0 inside alone(): this process works by itself while the others wait


@contextlib.contextmanager
def alone():
    """Run a block in this process only (the main one merging shards, an LLM stage): inside it the process
    acts as a lone one (no shards of its own, no barrier its siblings would never reach)."""
    global _alone
    _alone += 1
    try:
        yield
    finally:
        _alone -= 1


def state():
    """accelerate's PartialState when launched with several processes, else None.

    The first call joins the process group and, on CUDA, makes the process's own GPU the current one,
    so that code that just says "cuda" (diffusers' `.to("cuda")`, onnxruntime's device_id) lands there.
    """
    if _alone or int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return None
    from accelerate import PartialState

    s = PartialState()
    if s.device.type == "cuda":
        import torch

        torch.cuda.set_device(s.device)
    return s


def is_main_process() -> bool:
    """False in the helper processes of a launch: they compute their share, but write no results."""
    s = state()
    return s is None or s.is_main_process


def wait_for_everyone() -> None:
    s = state()
    if s is not None:
        s.wait_for_everyone()
