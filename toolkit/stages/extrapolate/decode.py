"""Several independent requests decoded together in one llama.cpp context (llama-cpp-python's low-level API).

- Sequences: one KV stream per slot (`kv_unified = false`), plus one that holds the shared few-shot
  prefix, computed once (and kept on disk by the caller) and copied into each slot
  (`llama_memory_seq_cp`) instead of being evaluated again per request.
- Sampling: each request has its own sampler chain, built as llama-cpp-python's `Llama._init_sampler`
  builds it for `create_completion` (penalties over the last 64 generated tokens, top-k, typical,
  top-p, min-p 0.05, temperature, dist(seed)), so a request's tokens depend on its seed alone.
- Batch invariance: llama.cpp's CPU kernels compute a row of the transformer's matrix products one way
  in a micro-batch of fewer than 8 rows and another way from 8 rows up (and, with the CPU backend's
  repacked Q4_K weights, differently again below and above 4 rows). Measured here: the same request's
  logits are bit-identical alone and beside 1 to 6 other streams, bit-identical among micro-batches of 8
  to 15 rows whatever the other rows hold, and different between the two groups from the third token
  on. So the decoder loads the model without repacking (`use_extra_bufts = false`, same single-stream
  speed), and every generation step is one micro-batch of at least MIN_ROWS rows: a row for every slot
  (an idle slot's is scratch), then padding rows in the streams right after them (llama.cpp splits a
  batch where stream ids are not consecutive). A request then gets bit for bit the same tokens with
  `--parallel 1` or `8`; tests/test_extrapolate.py compares the prompts.jsonl bytes. A new request's
  prompt is evaluated in a decode of its own, the same whatever else runs. The price: below 8 slots a
  step costs as much as 8 (benchmarks/bench_extrapolate.py).
- Continuous batching: a slot whose request has finished takes the next one at once; the caller's
  `on_done` sees each result as it comes and may queue follow-up requests (a retry), which go first.
"""

from __future__ import annotations

import ctypes
import time
from dataclasses import dataclass, field
from typing import Any


from ...core.errors import AugurError

MIN_ROWS = 8  # rows of every generation step (module docstring)

PENALTY_LAST_N = 64  # llama-cpp-python's Llama.last_n_tokens_size default


@dataclass
class Generation:
    text: str
    completion_tokens: int
    prompt_tokens: int
    finish_reason: str
    seconds: float


@dataclass
class Request:
    tokens: list[int]  # the whole prompt
    prefix_len: int  # how many of them are the shared prefix (0: none)
    seed: int
    sampling: Any  # llm.Sampling
    stops: list[str]
    tag: Any = None  # the caller's
    speculative: bool = False  # may be dropped for needed work (the caller may clear the flag meanwhile)
    result: Any = None


@dataclass
class _Slot:
    seq: int
    request: Request | None = None
    sampler: Any = None
    pos: int = 0
    out_tokens: list[int] = field(default_factory=list)
    out_bytes: bytes = b""
    logit_row: int = -1
    pending: int = 0
    t0: float = 0.0


class BatchedDecoder:
    def __init__(self, path, parallel: int, n_ctx: int, n_threads: int, n_gpu_layers: int = -1):
        import llama_cpp

        self.lc = llama_cpp
        self.parallel = max(1, int(parallel))
        mp = llama_cpp.llama_model_default_params()
        mp.n_gpu_layers = n_gpu_layers
        mp.use_extra_bufts = False  # no repacked weights: batch-invariant rows (module docstring)
        self.model = llama_cpp.llama_model_load_from_file(str(path).encode(), mp)
        if not self.model:
            raise AugurError(f"{path}: llama.cpp could not load this model for generation (out of memory? "
                             "--gpu-layers N keeps all but N layers in main memory)")
        self.vocab = llama_cpp.llama_model_get_vocab(self.model)
        self.n_vocab = llama_cpp.llama_vocab_n_tokens(self.vocab)
        self.n_ctx = n_ctx
        # streams: slots 0..P-1, the padding streams right after them, then the one that holds the prefix
        self.pads = list(range(self.parallel, max(MIN_ROWS, self.parallel)))
        self.prefix_seq = self.parallel + len(self.pads)
        n_seq = self.prefix_seq + 1
        cp = llama_cpp.llama_context_default_params()
        cp.n_ctx = n_ctx * n_seq  # split evenly across the streams
        cp.n_batch = max(512, n_ctx)
        cp.n_ubatch = max(512, n_ctx)
        cp.n_seq_max = n_seq
        cp.kv_unified = False
        cp.n_threads = n_threads
        cp.n_threads_batch = n_threads
        cp.no_perf = True
        self.ctx = llama_cpp.llama_init_from_model(self.model, cp)
        if not self.ctx:
            # the KV cache is what grows: slots x context; the weights are what --gpu-layers moves
            raise AugurError(f"llama.cpp could not create a context of {n_seq} sequences x {n_ctx} tokens (out of "
                             f"memory?): lower --parallel (now {self.parallel}), a smaller --ctx (auto sizes it from "
                             "the longest request), or fewer --gpu-layers")
        self.mem = llama_cpp.llama_get_memory(self.ctx)
        self.n_batch = cp.n_batch
        self.batch = llama_cpp.llama_batch_init(max(cp.n_batch, n_seq), 0, 1)
        self.prefix: list[int] | None = None
        self._queue: list[Request] = []
        self._on_done = self._speculate = self._on_drop = None

    def close(self) -> None:
        if self.ctx:
            self.lc.llama_batch_free(self.batch)
            self.lc.llama_free(self.ctx)
            self.lc.llama_model_free(self.model)
            self.ctx = None

    def __del__(self):  # pragma: no cover - best effort
        try:
            self.close()
        except Exception:
            pass

    # -- low level
    def _decode(self, rows: list[tuple[int, int, int, bool]], scratch: list[int] = ()) -> dict[int, int]:
        """rows: (token, pos, seq, want_logits); the KV of the `scratch` sequences is dropped afterwards.
        Returns seq -> logits row."""
        b = self.batch
        for i, (tok, pos, seq, want) in enumerate(rows):
            b.token[i] = tok
            b.pos[i] = pos
            b.n_seq_id[i] = 1
            b.seq_id[i][0] = seq
            b.logits[i] = want
        b.n_tokens = len(rows)
        status = self.lc.llama_decode(self.ctx, b)
        if status != 0:
            raise AugurError(f"llama.cpp failed to decode a batch (status {status}); the context may be too small")
        for seq in scratch:
            self.lc.llama_memory_seq_rm(self.mem, seq, -1, -1)
        return {seq: i for i, (_, _, seq, want) in enumerate(rows) if want}

    def _step(self, slots: list[_Slot]) -> None:
        """One generation step: a row per slot (an idle slot's is scratch) and the padding rows, in
        consecutive streams: one micro-batch of max(MIN_ROWS, parallel) rows."""
        rows, scratch = [], list(self.pads)
        for s in slots:
            if s.request is not None:
                rows.append((s.pending, s.pos, s.seq, True))
            else:
                rows.append((0, 0, s.seq, False))
                scratch.append(s.seq)
        rows += [(0, 0, seq, False) for seq in self.pads]
        where = self._decode(rows, scratch)
        for s in slots:
            if s.request is not None:
                s.pos += 1
                s.logit_row = where[s.seq]

    def _prefill(self, seq: int, tokens: list[int], start: int) -> int:
        """Evaluate `tokens` at positions start.. in `seq` alone, a chunk per call; the row of the last token."""
        step = self.n_batch
        row = -1
        for i in range(0, len(tokens), step):
            chunk = tokens[i:i + step]
            last = i + len(chunk) == len(tokens)
            rows = [(t, start + i + k, seq, last and k == len(chunk) - 1) for k, t in enumerate(chunk)]
            row = self._decode(rows).get(seq, -1)
        return row

    def load_prefix(self, tokens: list[int], state: bytes | None) -> bytes | None:
        """Put the shared prefix in its own sequence: from saved state, else evaluated (and returned to save)."""
        lc = self.lc
        lc.llama_memory_seq_rm(self.mem, self.prefix_seq, -1, -1)
        self.prefix = list(tokens)
        if not tokens:
            return None
        if state is not None:
            buf = (ctypes.c_uint8 * len(state)).from_buffer_copy(state)
            if lc.llama_state_seq_set_data(self.ctx, buf, len(state), self.prefix_seq) == len(state):
                return None
            lc.llama_memory_seq_rm(self.mem, self.prefix_seq, -1, -1)
        self._prefill(self.prefix_seq, tokens, 0)
        size = lc.llama_state_seq_get_size(self.ctx, self.prefix_seq)
        buf = (ctypes.c_uint8 * size)()
        n = lc.llama_state_seq_get_data(self.ctx, buf, size, self.prefix_seq)
        return bytes(buf)[:n] if n else None

    def _sampler(self, seed: int, s) -> Any:
        """llama-cpp-python's Llama._init_sampler chain for create_completion."""
        lc = self.lc
        chain = lc.llama_sampler_chain_init(lc.llama_sampler_chain_default_params())
        lc.llama_sampler_chain_add(chain, lc.llama_sampler_init_penalties(self.n_vocab, PENALTY_LAST_N, s.repeat_penalty, 0.0, 0.0))
        if s.grammar is not None:  # where Llama._init_sampler puts a LlamaGrammar: after the penalties, on every token
            g = lc.llama_sampler_init_grammar(self.vocab, s.grammar.encode("utf-8"), b"root")
            if not g:
                lc.llama_sampler_free(chain)
                raise AugurError("llama.cpp could not parse the answer grammar")
            lc.llama_sampler_chain_add(chain, g)
        if s.temperature == 0.0:
            lc.llama_sampler_chain_add(chain, lc.llama_sampler_init_greedy())
        else:
            lc.llama_sampler_chain_add(chain, lc.llama_sampler_init_top_k(s.top_k))
            lc.llama_sampler_chain_add(chain, lc.llama_sampler_init_typical(1.0, 1))
            lc.llama_sampler_chain_add(chain, lc.llama_sampler_init_top_p(s.top_p, 1))
            lc.llama_sampler_chain_add(chain, lc.llama_sampler_init_min_p(0.05, 1))
            lc.llama_sampler_chain_add(chain, lc.llama_sampler_init_temp(s.temperature))
            lc.llama_sampler_chain_add(chain, lc.llama_sampler_init_dist(seed & 0xFFFFFFFF))
        return chain

    def _piece(self, token: int) -> bytes:
        buf = (ctypes.c_char * 64)()
        n = self.lc.llama_token_to_piece(self.vocab, token, buf, 64, 0, False)
        if n < 0:
            buf = (ctypes.c_char * -n)()
            n = self.lc.llama_token_to_piece(self.vocab, token, buf, -n, 0, False)
        return bytes(buf[:n])

    # -- scheduling
    def _start(self, slot: _Slot, req: Request) -> None:
        lc = self.lc
        if len(req.tokens) + req.sampling.max_tokens > self.n_ctx:
            raise AugurError(f"prompt of {len(req.tokens)} tokens + {req.sampling.max_tokens} new tokens exceeds the "
                             f"context of {self.n_ctx}; use a larger --ctx, a model with a longer context or fewer items")
        lc.llama_memory_seq_rm(self.mem, slot.seq, -1, -1)
        shared = req.prefix_len if (self.prefix is not None and req.prefix_len == len(self.prefix)
                                    and req.tokens[:req.prefix_len] == self.prefix) else 0
        if shared:
            lc.llama_memory_seq_cp(self.mem, self.prefix_seq, slot.seq, -1, -1)
        slot.request, slot.pos = req, len(req.tokens)
        slot.out_tokens, slot.out_bytes = [], b""
        slot.sampler = self._sampler(req.seed, req.sampling)
        slot.t0 = time.perf_counter()
        slot.logit_row = self._prefill(slot.seq, req.tokens[shared:], shared)

    def _finish(self, slot: _Slot, reason: str, text: str) -> None:

        req = slot.request
        req.result = Generation(text, len(slot.out_tokens), len(req.tokens), reason, time.perf_counter() - slot.t0)
        self.lc.llama_sampler_free(slot.sampler)
        slot.request, slot.sampler = None, None
        self.lc.llama_memory_seq_rm(self.mem, slot.seq, -1, -1)
        if self._on_done is not None:
            self._queue[:0] = list(self._on_done(req))

    def _after_token(self, slot: _Slot, token: int) -> bool:
        """Record `token`; True when the request is finished."""
        req = slot.request
        if self.lc.llama_vocab_is_eog(self.vocab, token):
            self._finish(slot, "stop", slot.out_bytes.decode("utf-8", errors="ignore"))
            return True
        slot.out_tokens.append(token)
        slot.out_bytes += self._piece(token)
        text = slot.out_bytes.decode("utf-8", errors="ignore")
        hits = [text.index(s) for s in req.stops if s in text]
        if hits:
            self._finish(slot, "stop", text[: min(hits)])
            return True
        if len(slot.out_tokens) >= req.sampling.max_tokens:
            self._finish(slot, "length", text)
            return True
        return False

    def _sample(self, slot: _Slot) -> None:
        """Sample `slot`'s next token from its prompt's logits row (before the next decode overwrites it)."""
        token = self.lc.llama_sampler_sample(slot.sampler, self.ctx, slot.logit_row)
        slot.logit_row = -1
        if not self._after_token(slot, token):
            slot.pending = token

    def _drop(self, slot: _Slot) -> None:
        req = slot.request
        self.lc.llama_sampler_free(slot.sampler)
        slot.request, slot.sampler = None, None
        self.lc.llama_memory_seq_rm(self.mem, slot.seq, -1, -1)
        if self._on_drop is not None:
            self._on_drop(req)

    def _next(self) -> Request | None:
        if self._queue:
            return self._queue.pop(0)
        req = self._speculate() if self._speculate is not None else None
        if req is not None:
            req.speculative = True
        return req

    def _fill(self, slots: list[_Slot]) -> None:
        """Give idle slots work: queued requests first, then speculative ones; a queued request that finds
        no idle slot takes over the speculative request with the fewest tokens so far."""
        while True:
            idle = next((s for s in slots if s.request is None), None)
            if idle is None and self._queue:
                spec = [s for s in slots if s.request.speculative]
                if spec:
                    idle = min(spec, key=lambda s: len(s.out_tokens))
                    self._drop(idle)
            if idle is None:
                return
            req = self._next()
            if req is None:
                return
            self._start(idle, req)
            self._sample(idle)  # may finish at once (then the slot is idle again)

    def run(self, requests: list[Request], on_done=None, speculate=None, on_drop=None) -> list[Any]:
        """Generate every request (at most `parallel` at a time) and every follow-up `on_done(request)`
        returns, ahead of those still waiting. Slots with nothing queued run `speculate()`'s requests (free
        here: every step costs the same whatever the slots hold) until needed work takes them over, which
        `on_drop(request)` reports. Returns the Generations of `requests` in order."""
        self._queue, self._on_done, self._speculate, self._on_drop = list(requests), on_done, speculate, on_drop
        slots = [_Slot(seq=i) for i in range(self.parallel)]
        try:
            self._fill(slots)
            while any(s.request is not None for s in slots):
                self._step(slots)
                for s in slots:  # every row of this decode first, then the refills, one prefill at a time
                    if s.request is not None:
                        self._sample(s)
                self._fill(slots)
        finally:
            for s in slots:
                if s.request is not None:
                    self.lc.llama_sampler_free(s.sampler)
                    self.lc.llama_memory_seq_rm(self.mem, s.seq, -1, -1)
            self._on_done = self._speculate = self._on_drop = None
        return [r.result for r in requests]
