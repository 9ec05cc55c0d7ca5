"""Augur: turn an LLM's imagination into training data, offline."""

__version__ = "0.1.0"

import os as _os

# diffusers warns at import time about optimum-onnx's package layout; users cannot act on it.
_os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")

import warnings as _warnings

# timm imports torch.jit.interface, deprecated in torch 2.14; nothing a user of Augur can act on.
_warnings.filterwarnings("ignore", message=r"`torch\.jit\.interface` is deprecated", category=FutureWarning)
