"""Continuous batching with chunked prefill, as plain single-threaded logic (the Engine owns the thread).

Each `step()`:
  1. admits waiting requests to free slots, first come first served;
  2. builds one runner batch: every decoding request advances one token (so decode is round-robin by
     construction), and prefill chunks of waiting prompts fill a per-step budget of ``prefill_chunk``
     tokens, oldest prompt first, so a long prompt is prefilled in chunks between decode steps;
  3. samples each row's next token with the request's own Sampler and sends Events to its sink;
  4. frees the slot of every request that finished.
A request's tokens depend only on its own prompt, sampling config and seed: the rows of a batch are
independent, so batching never changes a request's output (for greedy decoding: token for token).
"""
from __future__ import annotations

import collections
import time
from typing import Any, Optional

from .request import Request
from .runner import ModelRunner, SlotWork, chunk_sizes


class NullMetrics:
    """What the scheduler reports; kiln.serve.metrics.Metrics records it for Prometheus."""

    def first_token(self, seconds: float) -> None: ...

    def inter_token(self, seconds: float) -> None: ...

    def tokens(self, prompt: int, completion: int) -> None: ...

    def finished(self, reason: str) -> None: ...


class Scheduler:
    def __init__(self, runner: ModelRunner, *, prefill_chunk: int = 64, metrics: Any = None):
        chunk_sizes(0, prefill_chunk)  # checks the chunk size
        self.runner, self.prefill_chunk = runner, int(prefill_chunk)
        self.metrics = metrics or NullMetrics()
        self.waiting: collections.deque[Request] = collections.deque()
        self.free: list[int] = list(range(runner.n_slots))[::-1]     # pop() hands out slot 0 first
        self.active: dict[int, Request] = {}                         # request id -> request, in admission order
        self.steps = 0

    # -- queue -------------------------------------------------------------------------
    def add(self, req: Request) -> None:
        self.waiting.append(req)

    def cancel(self, request_id: int) -> bool:
        """Drop a waiting or running request (its slot is free on return). False if it is unknown/done."""
        for req in self.waiting:
            if req.id == request_id:
                self.waiting.remove(req)
                self._finish(req, "cancelled", "")
                return True
        req = self.active.get(request_id)
        if req is None:
            return False
        self._finish(req, "cancelled", "")
        return True

    @property
    def idle(self) -> bool:
        return not self.waiting and not self.active

    # -- one iteration -------------------------------------------------------------------
    def step(self) -> int:
        """Run one runner step; returns the number of rows run (0: nothing to do)."""
        self._admit()
        rows: list[tuple[Request, SlotWork, bool]] = []        # (request, work, is_prefill)
        for req in self.active.values():
            if not req.chunks and req.out_ids:
                rows.append((req, SlotWork(req.slot, (req.out_ids[-1],), req.position), False))
        budget = self.prefill_chunk
        limit = getattr(self.runner, "max_tokens", None)   # tokens one batched step takes
        if limit is not None:
            budget = min(budget, limit - len(rows))
        for req in self.active.values():
            if req.chunks and req.chunks[0] <= budget:
                n = req.chunks.pop(0)
                budget -= n
                # A request's chunks must run in separate steps: a runner row names each slot once.
                rows.append((req, SlotWork(req.slot, tuple(req.prompt_ids[req.prefilled:req.prefilled + n]),
                                           req.prefilled, want_logits=not req.chunks), True))
                req.prefilled += n
            if budget <= 0:
                break
        if not rows:
            return 0
        try:
            results = self.runner.step([w for _, w, _ in rows])
        except Exception as e:  # a runner failure ends the requests it touched, never the engine
            for req, _, _ in rows:
                if req.id in self.active:
                    self._finish(req, "error", "", error=f"{type(e).__name__}: {e}")
            return len(rows)
        self.steps += 1
        for (req, work, is_prefill), logits in zip(rows, results):
            if logits is not None and req.id in self.active:
                self._emit(req, req.sampler(logits))
        return len(rows)

    def _admit(self) -> None:
        while self.waiting and self.free:
            req = self.waiting.popleft()
            req.slot = self.free.pop()
            req.chunks = chunk_sizes(len(req.prompt_ids), self.prefill_chunk)
            self.active[req.id] = req

    def _emit(self, req: Request, token: int) -> None:
        now = time.perf_counter()
        if req.t_last is None:
            self.metrics.first_token(now - req.t_submit)
        else:
            self.metrics.inter_token(now - req.t_last)
        req.t_last = now
        req.out_ids.append(token)
        is_eos = token in req.eos_ids
        delta = "" if is_eos else req.detok.push(token)
        text, hit_stop = req.stop_text.push(delta)
        finish: Optional[str] = None
        if is_eos or hit_stop:
            finish = "stop"
        elif len(req.out_ids) >= req.max_tokens or len(req.prompt_ids) + len(req.out_ids) >= self.runner.max_len:
            finish = "length"
        if finish is None:
            req.sink(req.event([token], text))
            return
        if not hit_stop:  # the end: whatever the detokenizer and the stop matcher still hold back
            more, hit_stop = req.stop_text.push(req.detok.flush())
            text += more + ("" if hit_stop else req.stop_text.flush())
        self._finish(req, finish, text, token_ids=[token])

    def _finish(self, req: Request, reason: str, text: str, *, token_ids: Optional[list] = None,
                error: Optional[str] = None) -> None:
        if self.active.pop(req.id, None) is not None:
            self.free.append(req.slot)
        self.metrics.tokens(len(req.prompt_ids) if req.prefilled else 0, len(req.out_ids))
        self.metrics.finished(reason)
        req.sink(req.event(token_ids or [], text, reason, error))
