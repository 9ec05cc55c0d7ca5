"""A deterministic wrapper over llama-cpp-python for few-shot (base) and chat (instruct) prompting.

Every generation goes through decode.BatchedDecoder: requests decoded together in one context, each with
its own sampler seeded from the request, the shared few-shot prefix evaluated once (its KV state kept on
disk, keyed by model, template tokens and decoder) and copied into each slot. A request's output depends
on its prompt and seed alone: the same whether it runs first, last, alone, beside seven others, or after
a resume, so caches and byte-identical prompts.jsonl hold.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from ...core import paths
from ...core.cache import key_of
from ...core.errors import AugurError
from ...core.files import atomic_write
from ...core.device import cpu_count
from ...models import KINDS, ModelCard
from .decode import Generation


@dataclass(frozen=True)
class Sampling:
    temperature: float = 0.8
    top_p: float = 0.95
    top_k: int = 40
    repeat_penalty: float = 1.1
    max_tokens: int = 256
    grammar: str | None = None  # GBNF text: the sampler chain keeps only tokens it allows (--grammar)

    def as_dict(self) -> dict[str, Any]:
        d = {"temperature": self.temperature, "top_p": self.top_p, "top_k": self.top_k,
             "repeat_penalty": self.repeat_penalty, "max_tokens": self.max_tokens}
        if self.grammar is not None:  # left out when off: the cache keys of answers drawn without one stay
            d["grammar"] = self.grammar
        return d


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
        # llama-cpp-python's log callback prints llama.cpp's warnings to sys.stderr, which is not fd 2 for a
        # library caller that captures it (click's CliRunner, a notebook)
        with open(os.devnull, "w") as sink, contextlib.redirect_stderr(sink):
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


def detect_prompting(metadata: dict[str, str], filename: str) -> str:
    """Chat only when the GGUF carries a chat template *and* names itself instruct/chat tuned.

    Base models often ship a chat template they were never trained on.
    """
    name = (metadata.get("general.name", "") + " " + metadata.get("general.finetune", "") + " " + filename).lower()
    tuned = any(t in name for t in ("instruct", "-it", "_it", " it", "chat"))
    return "chat" if tuned and "tokenizer.chat_template" in metadata else "base"


class LLM:
    """A GGUF model: llama-cpp-python loads it, tokenises and renders chat templates; every generation,
    alone or batched, goes through one BatchedDecoder (decode.py), so `--parallel 1` and `--parallel 8`
    run the same code and give the same tokens."""

    def __init__(self, path: Path, *, name: str, sha256: str, prompting: str | None = None,
                 n_ctx: int | None = None, max_ctx: int | None = None, n_threads: int | None = None,
                 n_gpu_layers: int = -1, parallel: int = 1, chat_template: str | None = None):
        """`n_ctx`: tokens of context per request (--ctx); None sizes it from need (fit_context), up to the
        model's trained context and `max_ctx` (a card's context_length)."""
        KINDS.get("gguf").check(Path(path))
        try:
            from llama_cpp import Llama
        except ImportError as e:  # pragma: no cover - installed by the Makefile
            raise AugurError(f"llama-cpp-python is not installed ({e}); run `make venv`") from None
        self.path, self.name, self.sha256 = Path(path), name, sha256
        self.n_threads = n_threads or default_threads()
        self.n_gpu_layers = n_gpu_layers
        try:
            with _quiet_stderr():
                # Only the vocabulary: it tokenises; generation loads the weights (decode.py).
                self._llm = Llama(model_path=str(path), vocab_only=True, n_ctx=256, seed=0, verbose=False)
        except (ValueError, RuntimeError) as e:
            raise AugurError(f"{path}: cannot load this GGUF model ({e}); is it corrupt or truncated?") from None
        self.metadata = dict(self._llm.metadata or {})
        self.prompting = prompting or detect_prompting(self.metadata, self.path.name)
        self._card_template = chat_template
        if self.prompting == "chat" and not self.chat_template:
            raise AugurError(f"model '{name}' has no chat template in its GGUF; use --prompting base")
        trained = self.metadata.get(f"{self.metadata.get('general.architecture', '')}.context_length")
        self.trained_ctx = int(trained) if str(trained or "").isdigit() and int(trained) > 0 else None
        if n_ctx is not None and self.trained_ctx is not None and n_ctx > self.trained_ctx:
            raise AugurError(f"--ctx {n_ctx} is more than the {self.trained_ctx} tokens of context model '{name}' "
                             "was trained with")
        caps = [c for c in (self.trained_ctx, max_ctx) if c]
        self.ctx_cap = min(caps) if caps else 4096
        self.ctx_choice = "--ctx" if n_ctx is not None else "auto"
        self.n_ctx = n_ctx  # auto: set by fit_context before the first generation
        self.parallel = max(1, parallel)
        self.system_role = "system message"  # how chat prompts carry the instruction (chat_prompt may fold it)
        self._decoder = None

    @property
    def chat_template(self) -> str | None:
        """The GGUF's own template wins; a card's named family stands in only where the file has none."""
        return "gguf" if self.metadata.get("tokenizer.chat_template") else self._card_template

    @classmethod
    def from_card(cls, card: ModelCard, path: Path, sha256: str, *, prompting: str | None = None,
                  **kw: Any) -> "LLM":
        return cls(path, name=card.name, sha256=sha256, prompting=prompting or card.prompting,
                   max_ctx=card.context_length, chat_template=card.chat_template, **kw)

    def provenance(self) -> dict[str, Any]:
        return {"model": self.name, "model_file": self.path.name, "model_sha256": self.sha256,
                "prompting": self.prompting, "decoder": DECODER,
                **({"chat_template": self.chat_template, "system_role": self.system_role}
                   if self.prompting == "chat" else {})}

    def tokenize(self, text: str, add_bos: bool = True) -> list[int]:
        return self._llm.tokenize(text.encode("utf-8"), add_bos=add_bos, special=True)

    def fit_context(self, need: int) -> None:
        """auto: a context that holds the longest request the next generations can make (`need` tokens, rounded
        up to 256), within the model's trained context and its card's context_length. KV memory is this times
        the slots, so it is sized from the work, not from the model's maximum. It grows between generations and
        never shrinks (a decoder is rebuilt only to grow); a request's tokens do not depend on the context's size
        (tests/test_extrapolate.py). An explicit --ctx is kept as given."""
        if self.ctx_choice != "auto":
            return
        size = min(self.ctx_cap, max(256, -(-int(need) // 256) * 256))
        if self.n_ctx is not None and self.n_ctx >= size:
            return
        if self._decoder is not None:
            self._decoder.close()
            self._decoder = None
        self.n_ctx = size

    @property
    def decoder(self):
        from .decode import BatchedDecoder  # llama.cpp's low-level API: imported when first used

        if self.n_ctx is None:  # a generation that did not say what it needs: the most it may have
            self.n_ctx = self.ctx_cap
        if self._decoder is None:
            with _quiet_stderr():
                self._decoder = BatchedDecoder(self.path, self.parallel, self.n_ctx, self.n_threads,
                                               self.n_gpu_layers)
        return self._decoder

    # -- prompts
    def base_prompt(self, prefix: str, suffix: str) -> tuple[list[int], list[int]]:
        """(prefix tokens, whole prompt tokens) of a few-shot completion prompt."""
        return self.tokenize(prefix), self.tokenize(prefix + suffix)

    def chat_prompt(self, messages: list[dict[str, str]]) -> tuple[list[int], list[int], list[str]]:
        """(prefix tokens, prompt tokens, stops) of a chat prompt rendered with the GGUF's own template; the
        prefix is everything before the last user message (the same for every request of a template)."""
        from llama_cpp import llama_chat_format

        if self.chat_template == "gguf":
            template, extra_stops = self.metadata["tokenizer.chat_template"], []
        elif self.chat_template in FALLBACK_TEMPLATES:
            attr, extra_stops = FALLBACK_TEMPLATES[self.chat_template]
            template = getattr(llama_chat_format, attr)
        else:
            raise AugurError(f"model '{self.name}' has no chat template; try --prompting base")
        model = self._llm._model
        eos, bos = self._llm.token_eos(), self._llm.token_bos()
        fmt = llama_chat_format.Jinja2ChatFormatter(
            template=template, eos_token=model.token_get_text(eos) if eos != -1 else "",
            bos_token=model.token_get_text(bos) if bos != -1 else "", stop_token_ids=[eos])
        try:
            full, marked = self._render(fmt, messages)
        except Exception as e:  # jinja raises its own types for templates it cannot render
            if not (messages and messages[0]["role"] == "system" and len(messages) > 1):
                raise AugurError(f"model '{self.name}' cannot be prompted as chat ({e}); try --prompting base") from None
            # Templates without a system role (Gemma-2-it, Mistral-Instruct) raise on one: the instruction goes
            # at the head of the first user turn instead, as those models' own cards advise.
            system, first, *rest = messages
            folded = [{"role": first["role"], "content": f"{system['content']}\n\n{first['content']}"}, *rest]
            try:
                full, marked = self._render(fmt, folded)
            except Exception as e2:
                raise AugurError(f"model '{self.name}' cannot be prompted as chat ({e2}); try --prompting base") from None
            self.system_role = "folded into the first user turn"
        add_bos = not full.added_special
        stops = [full.stop] if isinstance(full.stop, str) else list(full.stop or [])
        prefix = marked.prompt.split(SENTINEL)[0]
        stops = [s for s in [*stops, *extra_stops] if s]
        return self.tokenize(prefix, add_bos), self.tokenize(full.prompt, add_bos), stops

    @staticmethod
    def _render(fmt, messages: list[dict[str, str]]):
        """(the whole prompt, the prompt with the last user message replaced by a marker)."""
        return fmt(messages=messages), fmt(messages=[*messages[:-1], {"role": "user", "content": SENTINEL}])

    # -- the shared prefix's KV state, kept on disk
    def _prefix_state_file(self, pre: list[int]) -> Path:
        import llama_cpp

        key = key_of("kv", DECODER, self.sha256, llama_cpp.__version__, self.n_ctx, pre)
        return paths.cache_dir() / "llm-prefix" / f"{key}.bin"

    def use_prefix(self, pre: list[int]) -> None:
        d = self.decoder
        if d.prefix == pre:
            return
        f = self._prefix_state_file(pre)
        state = f.read_bytes() if f.is_file() else None
        fresh = d.load_prefix(pre, state)
        if fresh:
            # Evaluating a long few-shot prefix costs seconds on a CPU (tens for a 7B model): once per
            # model and template, ever.
            with atomic_write(f) as tmp:
                tmp.write_bytes(fresh)

    def generate(self, jobs: list[Job], on_done: Callable[[Any, Generation], list[Job]] | None = None,
                 speculate: Callable[[], Job | None] | None = None,
                 on_drop: Callable[[Any], None] | None = None) -> list[Generation]:
        """Each job: (prefix tokens, prompt tokens, seed, sampling, stop strings, tag). Returns the jobs'
        Generations in order; a job's output depends on its prompt and seed alone, not on the other jobs.
        `on_done(tag, generation)`, called as each job finishes, may return follow-up jobs, decoded before
        the jobs still waiting; `speculate()` may offer a job for an otherwise idle slot, which is dropped
        (`on_drop(tag)`) when needed work wants the slot. All jobs of one call after the first group share
        one prefix."""
        from .decode import Request

        def request(job: Job) -> Request:
            pre, tokens, seed, sampling, stops, tag = job
            if pre and list(pre) != self.decoder.prefix:
                raise ValueError("follow-up and speculative jobs must share the prefix of the jobs they follow")
            r = Request(tokens, len(pre), seed, sampling, stops, tag)
            if hasattr(tag, "request"):  # lets the caller clear r.speculative when it comes to need r
                tag.request = r
            return r

        def done(r: Request) -> list[Request]:
            return [request(j) for j in on_done(r.tag, r.result)] if on_done is not None else []

        def spec() -> Request | None:
            job = speculate() if speculate is not None else None
            return request(job) if job is not None else None

        def drop(r: Request) -> None:
            if on_drop is not None:
                on_drop(r.tag)

        results: dict[int, Generation] = {}
        by_prefix: dict[tuple, list[int]] = {}
        for i, job in enumerate(jobs):
            by_prefix.setdefault(tuple(job[0]), []).append(i)
        for pre, idx in by_prefix.items():
            self.use_prefix(list(pre))
            gens = self.decoder.run([request(jobs[i]) for i in idx], done, spec, drop)
            results.update(zip(idx, gens))
        return [results[i] for i in range(len(jobs))]


Job = tuple  # (prefix tokens, prompt tokens, seed, Sampling, stop strings, tag)


SENTINEL = "\u0001augur-query\u0001"
# A card's chat_template family -> (llama_chat_format's template, its end-of-turn text). On a vocabulary
# the template was not made for (a stand-in), the end-of-turn marker is plain text: stop on it as such.
FALLBACK_TEMPLATES = {"chatml": ("CHATML_CHAT_TEMPLATE", ["<|im_end|>"]),
                      "llama3": ("LLAMA3_INSTRUCT_CHAT_TEMPLATE", ["<|eot_id|>"]),
                      "mistral": ("MISTRAL_INSTRUCT_CHAT_TEMPLATE", ["</s>"])}
DECODER = "batched-v2"  # part of every cache key: outputs of an older decoder are not reused


def default_threads() -> int:
    """llama.cpp's workers busy-wait at every step's barriers: with as many threads as cores, one worker
    pre-empted by another process stalls the others. Measured on this 2-core CPU beside two CPU-bound
    processes (benchmarks/bench_extrapolate.py): 43 tok/s with one thread, 2-24 tok/s with two (65 tok/s
    alone). So the default leaves a core to the rest of the machine: one thread on two cores, n-1 above."""
    n = cpu_count()
    return 1 if n <= 2 else n - 1
