"""The device audit: what would mix devices or make a GPU wait, caught on any machine, a CPU included.

A training step on a GPU goes wrong in two ways that a CPU never shows: a tensor made without
`device=` lands on the CPU and meets the model's CUDA tensors ("Expected all tensors to be on the same
device", RanPAC's head did this), or the host reads a value the GPU computed (`.item()`, `bool(t)`,
`.tolist()`, `.cpu()`), which stops it until the GPU is done. On a CPU both run silently.

`DeviceAudit` is a torch function mode that records both while it is active:
- a tensor factory (`torch.zeros`, `eye`, `rand`, `tensor`, ... every function torch's own default-
  device machinery intercepts) called without `device=` from Augur's code or a user's (anything but
  installed libraries and the standard library, whose internals are theirs to answer for);
- a host read of a *device-derived* tensor: the audit marks the tensors it is given (the model's
  parameters and buffers, the batch) and every result of an operation that touched a marked tensor,
  so `int(self.update_count)` is caught while `torch.randperm(n, device="cpu").tolist()` (a host-side
  draw) is not.
Run a training step under it with the sync-free path forced (`AUGUR_SYNC_FREE=1`, what CUDA takes)
and the step is checked as a GPU would run it. `AUGUR_AUDIT=1` makes the training loop audit every
step of a real run and stop at the first finding, and the once-per-task and evaluation code (CL
heads, herding, scoring; DG evaluation) for factories without a device (they may read the host
there); tests/test_device.py does this for every algorithm and strategy, and a contributor's new one
gets the same check for free.
"""

from __future__ import annotations

import os
import sys
import weakref
from pathlib import Path
from typing import Any, Iterable

import torch
from torch.overrides import TorchFunctionMode

_TOOLKIT = str(Path(__file__).resolve().parent.parent)
_HERE = str(Path(__file__).resolve())


def _library_roots() -> tuple[str, ...]:
    import site
    import sysconfig

    roots = {sysconfig.get_paths()[k] for k in ("stdlib", "platstdlib", "purelib", "platlib")}
    roots |= set(site.getsitepackages()) | {site.getusersitepackages()}
    # an editable install of Augur lives in a checkout, not in site-packages: still ours
    return tuple(sorted(r for r in roots if r and not _TOOLKIT.startswith(r)))


_LIBRARIES = _library_roots()


def _ours(filename: str) -> bool:
    return not filename.startswith(_LIBRARIES) and not filename.startswith("<")

_HOST_READS = {torch.Tensor.item, torch.Tensor.tolist, torch.Tensor.numpy, torch.Tensor.cpu,
               torch.Tensor.__bool__, torch.Tensor.__int__, torch.Tensor.__float__, torch.Tensor.__index__,
               torch.Tensor.__array__}


def _factories() -> set:
    from torch.utils._device import _device_constructors

    return set(_device_constructors())


def enabled() -> bool:
    return os.environ.get("AUGUR_AUDIT", "") not in ("", "0")


def phase():
    """The audit of code that runs once per task or evaluation: factories only (host reads are fine there)."""
    from contextlib import nullcontext

    return DeviceAudit(strict=True, host_reads=False) if enabled() else nullcontext()


class DeviceFinding(RuntimeError):
    """A step would mix devices or wait for the GPU (raised by a strict audit)."""


def _caller() -> tuple[str, int] | None:
    """The first frame outside torch and this module: where the call was written."""
    f = sys._getframe(2)
    while f is not None:
        name = f.f_code.co_filename
        if name != _HERE and "/torch/" not in name:
            return name, f.f_lineno
        f = f.f_back
    return None


def _show(where: tuple[str, int]) -> str:
    name = where[0]
    if name.startswith(os.path.dirname(_TOOLKIT)):
        name = os.path.relpath(name, os.path.dirname(_TOOLKIT))
    return f"{name}:{where[1]}"


def _flat(obj: Any):
    if isinstance(obj, torch.Tensor):
        yield obj
    elif isinstance(obj, (list, tuple)):
        for o in obj:
            yield from _flat(o)
    elif isinstance(obj, dict):
        for o in obj.values():
            yield from _flat(o)


class DeviceAudit(TorchFunctionMode):
    """Records (or, strict, raises at) device mixes and host reads in Augur's code; see the module docstring."""

    def __init__(self, device_tensors: Iterable[torch.Tensor] = (), strict: bool = False, host_reads: bool = True):
        super().__init__()
        self.strict, self.host_reads = strict, host_reads
        self.findings: list[str] = []
        self._marked: dict[int, weakref.ref] = {}  # by id: a tensor's == is elementwise, no set can hold it
        self._factories = _factories()
        for t in device_tensors:
            self.mark(t)

    def mark(self, *tensors: torch.Tensor) -> None:
        for t in tensors:
            if isinstance(t, torch.Tensor):
                self._marked[id(t)] = weakref.ref(t)

    def marked(self, t: torch.Tensor) -> bool:
        ref = self._marked.get(id(t))
        return ref is not None and ref() is t

    def _found(self, text: str) -> None:
        self.findings.append(text)
        if self.strict:
            raise DeviceFinding(text)

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        where = None
        if func in self._factories and kwargs.get("device") is None:
            where = _caller()
            if where is not None and _ours(where[0]):
                self._found(f"{getattr(func, '__name__', func)}() without device= at {_show(where)}")
        inputs = list(_flat(args)) + list(_flat(kwargs))
        touched = any(self.marked(t) for t in inputs)
        if self.host_reads and func in _HOST_READS and touched:
            where = where or _caller()
            if where is not None and _ours(where[0]):
                self._found(f"host read ({getattr(func, '__name__', func)}) of a device tensor at {_show(where)}")
        out = func(*args, **kwargs)
        if touched:
            self.mark(*_flat(out))
        return out
