"""The serving engine: a Scheduler driven by one background thread, with a thread-safe front.

    engine = Engine.from_model(lm, parallel=4)
    engine.start()
    handle = engine.submit(prompt_ids, max_tokens=32, loop=asyncio.get_running_loop())
    async for ev in handle: ...          # Events; the last one has finish_reason set
    engine.cancel(handle.id)             # from any thread; the slot is free after the current step

One thread runs the model (Kiln's kernels already use every core); callers talk to it through a
thread-safe inbox, and each request's Events come back through its own queue (an asyncio.Queue fed
with call_soon_threadsafe when a loop is given, else a queue.SimpleQueue). The engine knows nothing
of HTTP.
"""
from __future__ import annotations

import asyncio
import queue
import threading
from typing import Any, Optional, Sequence

from ..errors import KilnError
from ..models.sampling import SamplingConfig
from .request import Event, Request
from .runner import ModelRunner, runner_for
from .scheduler import Scheduler


class RequestError(KilnError):
    """A request the engine refuses as given (HTTP 400): empty or too long prompt, bad limits."""


class QueueFull(KilnError):
    """The waiting queue is at its limit (HTTP 429/503 with Retry-After)."""


class EngineStopped(KilnError):
    """The engine was shut down."""


class RequestHandle:
    """One submitted request: iterate it (async with a loop, else sync) for its Events."""

    def __init__(self, engine: "Engine", loop: Optional[asyncio.AbstractEventLoop]):
        self.engine, self.loop, self.id = engine, loop, 0
        self._aq: Optional[asyncio.Queue] = asyncio.Queue() if loop is not None else None
        self._sq: queue.SimpleQueue = queue.SimpleQueue()
        self.done = False

    def _push(self, ev: Event) -> None:  # engine thread
        if self._aq is None:
            self._sq.put(ev)
            return
        try:
            self.loop.call_soon_threadsafe(self._aq.put_nowait, ev)
        except RuntimeError:  # the caller's loop is closed: nobody is listening any more
            pass

    def cancel(self) -> None:
        if not self.done:
            self.engine.cancel(self.id)

    def __aiter__(self):
        return self

    async def __anext__(self) -> Event:
        if self.done:
            raise StopAsyncIteration
        ev = await self._aq.get()
        self.done = ev.finish_reason is not None
        return ev

    def __iter__(self):
        while not self.done:
            ev = self._sq.get()
            self.done = ev.finish_reason is not None
            yield ev


class Engine:
    """Continuous batching over a ModelRunner. Limits: ``max_queue`` requests waiting for a slot,
    prompts shorter than the context, ``max_tokens`` in [1, ``max_tokens_limit``]."""

    def __init__(self, runner: ModelRunner, *, tokenizer: Any, eos_ids: Sequence[int], vocab_size: int,
                 max_queue: int = 64, prefill_chunk: int = 64, max_tokens_limit: Optional[int] = None,
                 metrics: Any = None):
        if max_queue < 0:
            raise KilnError(f"max_queue must be >= 0, got {max_queue}")
        self.runner, self.tokenizer, self.vocab_size = runner, tokenizer, int(vocab_size)
        self.eos_ids = frozenset(int(e) for e in eos_ids)
        self.max_queue = int(max_queue)
        self.max_tokens_limit = int(max_tokens_limit or runner.max_len)
        self.scheduler = Scheduler(runner, prefill_chunk=prefill_chunk, metrics=metrics)
        self._inbox: queue.SimpleQueue = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._in_flight = 0         # submitted, still in the inbox
        self._waiting = 0           # in the scheduler's queue (published by the engine thread)
        self._active = 0
        self._thread: Optional[threading.Thread] = None
        self._stop = threading.Event()

    @classmethod
    def from_model(cls, lm: Any, *, parallel: int = 1, runner: str = "batched", notice: Any = None,
                   **kwargs: Any) -> "Engine":
        """An engine over a kiln.models.LanguageModel with ``parallel`` slots: a BatchedRunner (one graph
        call per step for all slots), or PerSlotRunner (``runner="per-slot"``, or with a one-line
        ``notice`` when the model cannot be batched; see kiln.serve.runner.runner_for)."""
        vocab = int(getattr(lm.config, "vocab_size", 0) or len(lm.tokenizer))
        return cls(runner_for(lm, parallel, kind=runner, notice=notice), tokenizer=lm.tokenizer,
                   eos_ids=lm.eos_ids, vocab_size=vocab, **kwargs)

    # -- lifecycle -------------------------------------------------------------------------
    def start(self) -> "Engine":
        if self._thread is None:
            self._thread = threading.Thread(target=self._loop, name="kiln-engine", daemon=True)
            self._thread.start()
        return self

    def shutdown(self, timeout: float = 10.0) -> None:
        self._stop.set()
        self._inbox.put(("wake", None))
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    # -- thread-safe front -------------------------------------------------------------------
    def submit(self, prompt_ids: Sequence[int], *, max_tokens: Optional[int] = None,
               sampling: SamplingConfig = SamplingConfig(), stop: Sequence[str] = (),
               loop: Optional[asyncio.AbstractEventLoop] = None) -> RequestHandle:
        """Queue a request. Raises RequestError (bad request), QueueFull, EngineStopped."""
        if self._stop.is_set() or self._thread is None:
            raise EngineStopped("the engine is not running")
        ids = [int(i) for i in prompt_ids]
        ctx = self.runner.max_len
        if not ids:
            raise RequestError("the prompt is empty (no tokens)")
        if len(ids) >= ctx:
            raise RequestError(f"the prompt has {len(ids)} tokens; the context holds {ctx} and at least one "
                               f"must be left for the answer")
        bad = [i for i in ids if not 0 <= i < self.vocab_size]
        if bad:
            raise RequestError(f"token id {bad[0]} is outside the vocabulary [0, {self.vocab_size})")
        max_tokens = ctx - len(ids) if max_tokens is None else int(max_tokens)
        if not 1 <= max_tokens <= self.max_tokens_limit:
            raise RequestError(f"max_tokens must be in [1, {self.max_tokens_limit}], got {max_tokens}")
        handle = RequestHandle(self, loop)
        req = Request(ids, max_tokens, sampling, self.eos_ids, self.tokenizer, handle._push, stop=tuple(stop))
        handle.id = req.id
        with self._lock:
            if self._in_flight + self._waiting >= self.max_queue + self._free_estimate():
                raise QueueFull(f"the queue is full ({self.max_queue} requests waiting); retry later")
            self._in_flight += 1
        self._inbox.put(("submit", req))
        return handle

    def cancel(self, request_id: int) -> None:
        """Cancel a request (waiting or running); its slot is free before the next step."""
        self._inbox.put(("cancel", request_id))

    def stats(self) -> dict:
        """A snapshot: queued (waiting for a slot), active (in slots), slots, steps, runner ("batched",
        "per-slot", or the runner's class name)."""
        kind = {"BatchedRunner": "batched", "PerSlotRunner": "per-slot"}.get(type(self.runner).__name__,
                                                                             type(self.runner).__name__)
        with self._lock:
            return {"queued": self._in_flight + self._waiting, "active": self._active, "slots": self.runner.n_slots,
                    "steps": self.scheduler.steps, "runner": kind}

    def _free_estimate(self) -> int:
        return max(0, self.runner.n_slots - self._active)

    # -- the engine thread ---------------------------------------------------------------------
    def _loop(self) -> None:
        sched = self.scheduler
        while not self._stop.is_set():
            try:  # block only when there is nothing to run
                cmd = self._inbox.get() if sched.idle else self._inbox.get_nowait()
            except queue.Empty:
                cmd = None
            while cmd is not None:
                self._handle(cmd)
                try:
                    cmd = self._inbox.get_nowait()
                except queue.Empty:
                    cmd = None
            if self._stop.is_set():
                break
            sched._admit()
            self._sync_counts()
            sched.step()
            self._sync_counts()
        for req in list(sched.waiting) + list(sched.active.values()):
            sched.cancel(req.id)
        self._sync_counts()

    def _handle(self, cmd: tuple) -> None:
        kind, arg = cmd
        if kind == "submit":
            self.scheduler.add(arg)
            with self._lock:
                self._in_flight -= 1
                self._waiting = len(self.scheduler.waiting)
        elif kind == "cancel":
            self.scheduler.cancel(arg)

    def _sync_counts(self) -> None:
        with self._lock:
            self._waiting = len(self.scheduler.waiting)
            self._active = len(self.scheduler.active)
