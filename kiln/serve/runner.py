"""Model runners: the one interface between the scheduler and the model.

The scheduler hands a runner a batch of `SlotWork` rows (slot, new token ids, start position) and
gets back the next-token logits of each row. It never sees sessions, caches or graphs, so a
batched-graph runner (one decode step for every active slot, weights read once) can replace
`PerSlotRunner` without touching the scheduler.

`BatchedRunner` (the default) runs every row of a step in one graph call: the batched KV-cache graph
(kiln/passes/kv_batch.py) takes the rows' tokens packed into one sequence, with per-token slot ids and
positions, so the weights are read once per step for all active sequences. `PerSlotRunner` (the
fallback for models the batched transform refuses) keeps one kiln.Session per slot over the same
KV-cache graph and runs the rows one after another; sessions built from one Graph share its constants
(the weights), each owns its `state` (the KV cache) and its plans' arenas.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional, Protocol, Sequence

import numpy as np

from ..errors import KilnError


@dataclass(frozen=True)
class SlotWork:
    """One row of a runner step: feed ``tokens`` to ``slot`` at positions [start, start + len(tokens)).

    ``start`` is the number of positions the slot's cache already holds for this sequence (0 begins
    a new sequence; older cache rows past the end are never read). ``want_logits`` is False for a
    prefill chunk that is not the prompt's last one (the runner may skip the logits)."""

    slot: int
    tokens: tuple[int, ...]
    start: int
    want_logits: bool = True


class ModelRunner(Protocol):
    """What the scheduler needs from a model. ``step`` returns, per row in order, the logits (float32,
    shape (vocab,)) after the row's last token, or None where ``want_logits`` was False. Rows name
    distinct slots. Raises KilnError on bad rows (slot out of range, positions past ``max_len``)."""

    n_slots: int
    max_len: int        # positions per slot (the context)

    def step(self, batch: Sequence[SlotWork]) -> list[Optional[np.ndarray]]: ...


def check_rows(batch: Sequence[SlotWork], n_slots: int, max_len: int) -> None:
    """Raise KilnError unless the rows name distinct slots in range, each with positions inside the context."""
    seen: set[int] = set()
    for w in batch:
        if not 0 <= w.slot < n_slots or w.slot in seen:
            raise KilnError(f"slot {w.slot} is out of range [0, {n_slots}) or repeated in one step")
        seen.add(w.slot)
        n = len(w.tokens)
        if n == 0 or w.start < 0 or w.start + n > max_len:
            raise KilnError(f"slot {w.slot}: positions [{w.start}, {w.start + n}) do not fit the context of {max_len}")


def chunk_sizes(n: int, chunk: int) -> list[int]:
    """Split an n-token prefill into steps: full chunks, then the rest as descending powers of two.

    Each distinct length is a separate plan in a Session (kiln.session.MAX_PLANS are kept), so prompt
    lengths are reduced to the few sizes {1, 2, 4, ..., chunk}: no re-planning for new prompt lengths.
    ``chunk`` must be a power of two."""
    if chunk < 1 or chunk & (chunk - 1):
        raise KilnError(f"the prefill chunk must be a power of two >= 1, got {chunk}")
    sizes = [chunk] * (n // chunk)
    rest = n % chunk
    bit = chunk >> 1
    while rest:
        if rest & bit:
            sizes.append(bit)
            rest -= bit
        bit >>= 1
    return sizes


def _slot_session_class():
    from ..session import Session

    class SlotSession(Session):
        """A Session whose memory plans come from a cache shared by every slot: a Plan depends on the
        graph and the binding only, not on the state arrays, so N slots plan each length once.
        Each slot still gets its own executor (its own arena, bound to its own KV cache)."""

        def __init__(self, graph: Any, executor: str, shared: dict):
            super().__init__(graph, executor=executor)
            self._shared_plans = shared

        def _build(self, binding: dict):
            if self.executor != "compiled":
                return super()._build(binding)
            from ..executor.compiled import CompiledExecutor
            from ..executor.registry import _planned
            from ..planner.plan import HOST
            key = tuple(sorted(binding.items()))
            if key not in self._shared_plans:
                self._shared_plans[key] = _planned(self.graph, binding, self._backend, HOST)
            static, plan = self._shared_plans[key]
            try:
                return CompiledExecutor(static, plan, state=self.state)
            except MemoryError:
                raise KilnError(f"no memory for a slot's plan of {binding}") from None

    return SlotSession


class PerSlotRunner:
    """One KV-cache Session per slot, all over ``graph`` (weights shared, caches separate).

    Rows run one after another (no batching across slots yet): per-row results are exactly what a
    lone CachedDecoder would compute for the same token/position sequence."""

    def __init__(self, graph: Any, n_slots: int, *, executor: str = "compiled"):
        info = graph.kv_cache
        if info is None:
            raise KilnError("PerSlotRunner needs a graph with a KV cache (kiln.passes.kv_cache.add_kv_cache)")
        if n_slots < 1:
            raise KilnError(f"the number of slots must be >= 1, got {n_slots}")
        self.n_slots, self.max_len = int(n_slots), int(info.max_len)
        self.token_input, self.position_input = info.token_input, info.position_input
        shared: dict = {}
        cls = _slot_session_class()
        self.sessions = [cls(graph, executor, shared) for _ in range(self.n_slots)]

    @classmethod
    def from_model(cls, lm: Any, n_slots: int) -> "PerSlotRunner":
        """From a kiln.models.LanguageModel loaded with a KV cache."""
        if lm.cached_session is None:
            raise KilnError("serving needs a model loaded with a KV cache (load_model(..., cache=True))")
        return cls(lm.cached_session.graph, n_slots, executor=lm.cached_session.executor)

    def slot_bytes(self) -> int:
        """Bytes one slot's KV cache holds (state arrays); plans add their arenas on first use."""
        return sum(a.nbytes for a in self.sessions[0].state.values())

    def step(self, batch: Sequence[SlotWork]) -> list[Optional[np.ndarray]]:
        check_rows(batch, self.n_slots, self.max_len)
        out: list[Optional[np.ndarray]] = []
        for w in batch:
            logits = self.sessions[w.slot].run({self.token_input: np.asarray([w.tokens], dtype=np.int64),
                                                self.position_input: np.asarray(w.start, dtype=np.int64)})[0]
            out.append(np.asarray(logits[0, -1], dtype=np.float32) if w.want_logits else None)
        return out


class BatchedRunner:
    """The rows of a step in as few calls of the batched KV-cache graph (kiln/passes/kv_batch.py) as
    exactness allows: the rows' tokens are packed into one [1, S] sequence with each token's slot and
    position, and the graph returns logits only for the rows that want them.

    ``exact=True`` (default): a row's logits are bit-identical whatever else is in the step. Every op
    of the batched graph computes a token's row the same way for any S (packed fp32 and quantized
    weights included: their kernels are row-independent) except a matmul on a plain fp32 weight
    (compiled with KILN_PACK_WEIGHTS=0), which picks its kernel by row count: up to
    ``ROWS_PER_CALL`` rows (SKINNY_MAX_M in kiln/backends/c/kernels.py) run the skinny kernel, one
    row at a time in the same order for any row count; more rows run a GEMM (BLAS) whose sums run
    in another order. Since a graph may hold such a matmul, rows of at most that
    many tokens (decode steps) share calls of at most ROWS_PER_CALL tokens (the weights are read once
    per call: once per step for up to 8 streams), and a longer prefill chunk runs in a call of its
    own, at the same size it has when its request runs alone. ``exact=False`` packs the whole step
    into one call (results then agree with a lone run to float rounding, not bit for bit).
    Each distinct (S, rows with logits) is one plan, kept in the session (``MAX_PLANS``)."""

    MAX_PLANS = 96
    ROWS_PER_CALL = 8

    def __init__(self, graph: Any, n_slots: int, *, executor: str = "compiled", backend: Optional[str] = None,
                 verify: bool = True, exact: bool = True):
        from ..backends.c.kernels import SKINNY_MAX_M
        from ..passes.kv_batch import batch_kv_cache
        from ..session import Session
        if graph.kv_cache is None:
            raise KilnError("BatchedRunner needs a graph with a KV cache (kiln.passes.kv_cache.add_kv_cache)")
        if n_slots < 1:
            raise KilnError(f"the number of slots must be >= 1, got {n_slots}")
        batched = batch_kv_cache(graph, int(n_slots), verify=False)
        info = batched.kv_cache
        self.n_slots, self.max_len, self.info, self.exact = int(n_slots), int(info.max_len), info, bool(exact)
        self.rows_per_call = min(self.ROWS_PER_CALL, SKINNY_MAX_M)
        seq = next(iter(batched.tensors[info.token_input].shape[1].symbols))
        self.max_tokens = int(batched.sym_ranges.get(seq, (1, self.max_len))[1])   # tokens per call
        self.calls = 0

        class _Session(Session):
            max_plans = self.MAX_PLANS

        self.session = _Session(batched, executor=executor, backend=backend)
        if verify:
            self._verify(graph, executor, backend)

    def _verify(self, graph: Any, executor: str, backend: Optional[str]) -> None:
        """The transform's self-check (kiln.passes.kv_batch.verify_batched) on this runner's executor: fast
        where the numpy reference of a real model takes a minute. The cache is left empty."""
        from ..passes.kv_batch import verify_batched
        from ..session import Session
        single = Session(graph, executor=executor, backend=backend)

        def run_single(feeds, binding, fresh):
            if fresh:
                single.reset_state()
            return single.run(feeds)[0]

        try:
            verify_batched(graph, self.session.graph, single=run_single,
                           packed=lambda feeds, binding: self.session.run(feeds)[0])
        finally:
            self.session.reset_state()

    @classmethod
    def from_model(cls, lm: Any, n_slots: int, **kwargs: Any) -> "BatchedRunner":
        """From a kiln.models.LanguageModel loaded with a KV cache. Raises KilnError when its graph cannot
        be batched (the caller may fall back to PerSlotRunner)."""
        if lm.cached_session is None:
            raise KilnError("serving needs a model loaded with a KV cache (load_model(..., cache=True))")
        s = lm.cached_session
        return cls(s.graph, n_slots, executor=s.executor, backend=s.backend, **kwargs)

    def slot_bytes(self) -> int:
        """Bytes of KV cache per slot."""
        return sum(a.nbytes for a in self.session.state.values()) // self.n_slots

    def groups(self, batch: Sequence[SlotWork]) -> list[list[int]]:
        """Row indices per graph call (see the class docstring)."""
        if not self.exact:
            return [list(range(len(batch)))]
        out: list[list[int]] = []
        small: list[int] = []
        used = 0
        for i, w in enumerate(batch):
            n = len(w.tokens)
            if n > self.rows_per_call:
                out.append([i])
                continue
            if used + n > self.rows_per_call:
                out.append(small)
                small, used = [], 0
            small.append(i)
            used += n
        return out + ([small] if small else [])

    def step(self, batch: Sequence[SlotWork]) -> list[Optional[np.ndarray]]:
        check_rows(batch, self.n_slots, self.max_len)
        out: list[Optional[np.ndarray]] = [None] * len(batch)
        for group in self.groups(batch):
            for i, logits in zip(group, self._call([batch[i] for i in group])):
                out[i] = logits
        return out

    def _call(self, rows: Sequence[SlotWork]) -> list[Optional[np.ndarray]]:
        tokens: list[int] = []
        slots: list[int] = []
        positions: list[int] = []
        want: list[int] = []
        for w in rows:
            tokens.extend(w.tokens)
            slots.extend([w.slot] * len(w.tokens))
            positions.extend(range(w.start, w.start + len(w.tokens)))
            if w.want_logits:
                want.append(len(tokens) - 1)
        if len(tokens) > self.max_tokens:
            raise KilnError(f"a step of {len(tokens)} tokens exceeds the {self.max_tokens} the graph takes")
        info = self.info
        feeds = {info.token_input: np.asarray([tokens], dtype=np.int64),
                 info.slot_input: np.asarray(slots, dtype=np.int64),
                 info.position_input: np.asarray(positions, dtype=np.int64),
                 info.logits_input: np.asarray(want or [len(tokens) - 1], dtype=np.int64)}
        logits = self.session.run(feeds)[0]
        self.calls += 1
        out: list[Optional[np.ndarray]] = []
        k = 0
        for w in rows:
            out.append(np.array(logits[0, k], dtype=np.float32) if w.want_logits else None)
            k += bool(w.want_logits)
        return out


def runner_for(lm: Any, n_slots: int, *, kind: str = "batched", notice: Any = None) -> Any:
    """The runner ``kiln serve`` uses: BatchedRunner, or (``kind="per-slot"``, or when the model's graph
    cannot be batched, with a one-line notice to ``notice`` or a warning) PerSlotRunner."""
    if kind not in ("batched", "per-slot"):
        raise KilnError(f"runner must be 'batched' or 'per-slot', got {kind!r}")
    if kind == "batched":
        try:
            return BatchedRunner.from_model(lm, n_slots)
        except KilnError as e:
            if lm.cached_session is None:
                raise
            line = f"serving slot by slot (no batched decoding): {str(e).splitlines()[0]}"
            if notice is not None:
                notice(line)
            else:
                import warnings
                warnings.warn(line, stacklevel=2)
    return PerSlotRunner.from_model(lm, n_slots)
