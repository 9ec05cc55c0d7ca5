"""Library messages a user cannot act on, silenced only around the calls known to print them.

- transformers 4.57 warns "`torch_dtype` is deprecated" whenever diffusers 0.35 loads a text encoder
  (diffusers still passes that name); the dtype is applied either way.
- torch.jit's TracerWarning during optimum's ONNX export of MiniLM: the traced constants are the
  attention-mask arithmetic, fixed for the exported shapes (the export is checked by its use).
"""

from __future__ import annotations

import warnings
from contextlib import contextmanager
from typing import Iterator


@contextmanager
def quiet_libraries(all_warnings: bool = False) -> Iterator[None]:
    try:
        from transformers.utils import logging as tlog
    except ImportError:  # pragma: no cover - installed with the package
        tlog = None
    level = tlog.get_verbosity() if tlog else None
    with warnings.catch_warnings():
        if all_warnings:
            warnings.simplefilter("ignore")
        if tlog:
            tlog.set_verbosity_error()
        try:
            yield
        finally:
            if tlog:
                tlog.set_verbosity(level)
