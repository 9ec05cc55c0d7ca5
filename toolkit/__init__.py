"""Augur: turn an LLM's imagination into training data, offline."""

__version__ = "0.1.0"

import os as _os

# diffusers warns at import time about optimum-onnx's package layout; users cannot act on it.
_os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
