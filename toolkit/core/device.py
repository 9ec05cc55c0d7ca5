"""One device and precision policy for every stage that runs a network (render, pretrain, dg, cl).

- device: auto (CUDA when torch sees a GPU, else CPU), cpu, or cuda (refused when there is none).
- precision: auto picks what is fast *and* dependable on the device: on CUDA, fp16 for rendering (the
  diffusion models' native half precision) and bf16 for training where the GPU has it (fp16 with a
  gradient scaler where it does not); on CPU, fp32 for both (bf16 runs on the oneDNN code that gave
  sporadic NaN gradients here, and is slower for small networks; docs/verification.md). `accelerate launch
  --mixed_precision X` decides for training when given. fp16 on CPU is refused.
"""

from __future__ import annotations

import os

from .errors import AugurError

DEVICES = ("auto", "cpu", "cuda")
PRECISIONS = ("auto", "fp32", "bf16", "fp16")


def cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def pick_device(requested: str = "auto") -> str:
    if requested not in DEVICES:
        raise AugurError(f"unknown device '{requested}'; choose one of {', '.join(DEVICES)}")
    if requested == "auto":
        return "cuda" if cuda_available() else "cpu"
    if requested == "cuda" and not cuda_available():
        raise AugurError("--device cuda was asked for but no CUDA GPU is visible to torch")
    return requested


def torch_device():
    """The torch.device this process computes on: its own GPU (under `accelerate launch`, the one
    distributed.state() made current), else the CPU."""
    import torch

    if cuda_available():
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def cpu_supports_bf16() -> bool:
    import torch

    return bool(getattr(torch.backends, "mkldnn", None) and torch.backends.mkldnn.is_available()
                and torch.ops.mkldnn._is_mkldnn_bf16_supported())


def resolve_precision(requested: str, device: str, purpose: str = "train") -> str:
    """fp32, bf16 or fp16 for `device` (see the module docstring); refuses what the device cannot run."""
    if requested not in PRECISIONS:
        raise AugurError(f"unknown precision '{requested}'; choose one of {', '.join(PRECISIONS)}")
    if requested == "auto":
        launched = os.environ.get("ACCELERATE_MIXED_PRECISION") if purpose == "train" else None
        if launched in ("no", "bf16", "fp16"):
            requested = "fp32" if launched == "no" else launched
        elif device == "cuda":
            import torch

            requested = "fp16" if purpose == "render" or not torch.cuda.is_bf16_supported() else "bf16"
        else:
            requested = "fp32"
    if requested == "fp16" and device != "cuda":
        raise AugurError("--precision fp16 needs a CUDA GPU; on CPU use fp32 (or bf16 where the CPU has it)")
    if requested == "bf16" and device == "cpu" and not cpu_supports_bf16():
        raise AugurError("--precision bf16: this CPU has no bf16 support; use fp32")
    return requested


def torch_dtype(precision: str):
    import torch

    return {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[precision]


def torch_threads() -> int:
    """The CPU threads torch computes with: results on a CPU can depend on it, so runs record it."""
    import torch

    return torch.get_num_threads()


def cpu_count() -> int:
    """Cores this process may use (affinity where the OS has it: Linux; else the machine's count)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1
