"""A thin, deterministic wrapper over llama-cpp-python for few-shot (base) and chat (instruct) prompting.

Determinism: llama.cpp's output can depend on how the prompt was split into batches, and
llama-cpp-python reuses whatever prefix happens to be in its KV cache. So the fixed few-shot prefix
is evaluated once, the same way in every process, and each request rewinds the cache to exactly
that prefix before evaluating its own suffix. The same request then computes the same thing
whether it is the first of a run, the hundredth, or the first after a resume.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import paths
from .cache import key_of
from .errors import AugurError
from .fileio import atomic_path
from .models import KINDS, ModelCard


@dataclass
class Generation:
    text: str
    completion_tokens: int
    prompt_tokens: int
    finish_reason: str
    seconds: float


@dataclass(frozen=True)
class Sampling:
    temperature: float = 0.8
    top_p: float = 0.95
    top_k: int = 40
    repeat_penalty: float = 1.1
    max_tokens: int = 256

    def as_dict(self) -> dict[str, Any]:
        return {"temperature": self.temperature, "top_p": self.top_p, "top_k": self.top_k,
                "repeat_penalty": self.repeat_penalty, "max_tokens": self.max_tokens}


@contextlib.contextmanager
def _quiet_stderr():
    """llama.cpp logs from C straight to fd 2; silence it while loading unless AUGUR_DEBUG is set."""
    if os.environ.get("AUGUR_DEBUG"):
        yield
        return
    saved = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


def detect_prompting(metadata: dict[str, str], filename: str) -> str:
    """Chat only when the GGUF carries a chat template *and* names itself instruct/chat tuned.

    Base models often ship a chat template they were never trained on (Gemma 3 270M does).
    """
    name = (metadata.get("general.name", "") + " " + metadata.get("general.finetune", "") + " " + filename).lower()
    tuned = any(t in name for t in ("instruct", "-it", "_it", " it", "chat"))
    return "chat" if tuned and "tokenizer.chat_template" in metadata else "base"


class LLM:
    def __init__(self, path: Path, *, name: str, sha256: str, prompting: str | None = None,
                 n_ctx: int = 2048, n_threads: int | None = None, n_gpu_layers: int = -1):
        KINDS["gguf"].check(Path(path))
        try:
            from llama_cpp import Llama
        except ImportError as e:  # pragma: no cover - installed by the Makefile
            raise AugurError(f"llama-cpp-python is not installed ({e}); run `make venv`") from None
        self.path, self.name, self.sha256 = Path(path), name, sha256
        # llama-cpp-python defaults to half the cores; decoding a small model is fastest on all of them.
        n_threads = n_threads or len(os.sched_getaffinity(0))
        try:
            with _quiet_stderr():
                self._llm = Llama(model_path=str(path), n_ctx=n_ctx, n_threads=n_threads,
                                  n_gpu_layers=n_gpu_layers, n_threads_batch=n_threads, seed=0, verbose=False)
        except (ValueError, RuntimeError) as e:
            raise AugurError(f"{path}: cannot load this GGUF model ({e}); is it corrupt or truncated?") from None
        self.metadata = dict(self._llm.metadata or {})
        self.prompting = prompting or detect_prompting(self.metadata, self.path.name)
        self.n_ctx = n_ctx
        self.n_threads = self._llm.n_threads
        self._prefix: list[int] | None = None

    @classmethod
    def from_card(cls, card: ModelCard, path: Path, sha256: str, *, prompting: str | None = None,
                  **kw: Any) -> "LLM":
        return cls(path, name=card.name, sha256=sha256, prompting=prompting or card.prompting,
                   n_ctx=kw.pop("n_ctx", card.context_length), **kw)

    def provenance(self) -> dict[str, Any]:
        return {"model": self.name, "model_file": self.path.name, "model_sha256": self.sha256,
                "prompting": self.prompting}

    def tokenize(self, text: str) -> list[int]:
        return self._llm.tokenize(text.encode("utf-8"), add_bos=True, special=True)

    def _prefix_state_file(self, pre: list[int]) -> Path:
        import llama_cpp

        key = key_of("kv", self.sha256, llama_cpp.__version__, self.n_ctx, pre)
        return paths.cache_dir() / "llm-prefix" / f"{key}.bin"

    def _load_prefix(self, pre: list[int]) -> bool:
        """Restore the prefix's KV cache saved by an earlier run (bytes identical to recomputing it)."""
        import llama_cpp

        f = self._prefix_state_file(pre)
        if not f.is_file():
            return False
        data = f.read_bytes()
        buf = (ctypes.c_uint8 * len(data)).from_buffer_copy(data)
        if llama_cpp.llama_state_seq_set_data(self._llm._ctx.ctx, buf, len(data), 0) != len(data):
            self._llm.reset()
            return False
        self._llm.input_ids[: len(pre)] = pre
        self._llm.n_tokens = len(pre)
        return True

    def _save_prefix(self, pre: list[int]) -> None:
        import llama_cpp

        ctx = self._llm._ctx.ctx
        size = llama_cpp.llama_state_seq_get_size(ctx, 0)
        buf = (ctypes.c_uint8 * size)()
        n = llama_cpp.llama_state_seq_get_data(ctx, buf, size, 0)
        if n:
            with atomic_path(self._prefix_state_file(pre)) as tmp:
                tmp.write_bytes(bytes(buf)[:n])

    def _rewind_to_prefix(self, prefix: str, tokens: list[int]) -> None:
        pre = self.tokenize(prefix)
        if self._prefix != pre:
            # Evaluating a long few-shot prefix costs seconds on a CPU (tens for a 7B model): do it once
            # per model and template, ever, and keep its KV state in the cache.
            self._llm.reset()
            if not self._load_prefix(pre):
                self._llm.eval(pre)
                self._save_prefix(pre)
            self._prefix = pre
        # Keep exactly the pinned prefix; anything after it is recomputed for this request.
        self._llm.n_tokens = len(pre) if tokens[: len(pre)] == pre else 0

    def complete(self, prefix: str, suffix: str, *, seed: int, sampling: Sampling,
                 stop: list[str]) -> Generation:
        tokens = self.tokenize(prefix + suffix)
        if len(tokens) + sampling.max_tokens > self.n_ctx:
            raise AugurError(f"prompt of {len(tokens)} tokens + {sampling.max_tokens} new tokens exceeds the "
                             f"context of {self.n_ctx}; use a model with a longer context or fewer items")
        self._rewind_to_prefix(prefix, tokens)
        t0 = time.perf_counter()
        out = self._llm.create_completion(
            tokens, max_tokens=sampling.max_tokens, temperature=sampling.temperature, top_p=sampling.top_p,
            top_k=sampling.top_k, repeat_penalty=sampling.repeat_penalty, stop=stop, seed=seed)
        dt = time.perf_counter() - t0
        choice = out["choices"][0]
        usage = out["usage"]
        return Generation(choice["text"], usage["completion_tokens"], usage["prompt_tokens"],
                          choice.get("finish_reason") or "stop", dt)

    def chat(self, messages: list[dict[str, str]], *, seed: int, sampling: Sampling,
             stop: list[str] | None = None) -> Generation:
        self._llm.reset()
        self._prefix = None
        t0 = time.perf_counter()
        try:
            out = self._llm.create_chat_completion(
                messages, max_tokens=sampling.max_tokens, temperature=sampling.temperature,
                top_p=sampling.top_p, top_k=sampling.top_k, repeat_penalty=sampling.repeat_penalty,
                stop=stop or [], seed=seed)
        except ValueError as e:
            raise AugurError(f"model '{self.name}' cannot be prompted as chat ({e}); try --prompting base") from None
        dt = time.perf_counter() - t0
        choice = out["choices"][0]
        usage = out["usage"]
        return Generation(choice["message"]["content"] or "", usage["completion_tokens"], usage["prompt_tokens"],
                          choice.get("finish_reason") or "stop", dt)
