"""Session: a compiled model you can run, profile, inspect and save."""
from __future__ import annotations

import collections
import os
import threading
from typing import Mapping, Optional, Sequence

import numpy as np

from .errors import FileFormatError, KilnError
from .executor.registry import prepare, resolve
from .ir import serialize
from .ir.feeds import check_feeds
from .ir.graph import Graph
from .ir.validate import validate
from .planner.plan import HOST

# Plans kept per session (least recently used first out): a decode loop needs two, and a
# server seeing many prompt lengths must not grow without bound.
MAX_PLANS = 8


class Session:
    """Runs one graph. Plans are made per binding of the symbolic dims and cached, so a
    dynamic-shape session never re-exports or re-optimizes; it only re-plans for new sizes.

    Threads: ``run`` may be called from several threads. A session without state runs
    concurrent calls on different plans in parallel (each plan's arena has its own lock); a
    session with state (a KV cache) runs one call at a time under ``session.lock``, because
    every plan reads and writes the same state. A sequence of calls that must see each other's
    state (a prefill and its decode steps) must hold ``with session.lock:`` across the calls:
    another thread's sequence would otherwise write the same cache between them.

    ``backend`` is which kernels run ("c", "numpy", "triton"), ``executor`` how they are driven
    ("compiled", "interpreted", "numpy", "reference", "triton"); name either or both (default:
    compiled on C; see kiln.executor.registry). A backend lacking a kernel for some node, or
    unusable here (Triton without a GPU or its interpreter), is a BackendError now, not at run
    time. ``executor_options`` go to the executor's factory (e.g. ``{"cuda_graph": True}``).

    ``stored_plans`` (binding key as kiln.planner.stored.binding_key makes it -> a stored plan, e.g.
    a model file's decode plan) are used instead of planning those bindings, after the checks of
    kiln/planner/stored.py; one that fails them raises FileFormatError naming ``where``."""

    max_plans = MAX_PLANS   # a subclass may keep more (the batched serving runner: one per batch shape)

    def __init__(self, graph: Graph, *, executor: Optional[str] = None, backend: Optional[str] = None,
                 meta: Optional[dict] = None, executor_options: Optional[dict] = None,
                 stored_plans: Optional[Mapping[str, dict]] = None, where: str = "stored plan"):
        self._spec, self.backend = resolve(executor, backend)
        validate(graph)
        from .passes.pack import for_backend   # packed weights unpacked for a backend without their kernel
        from .backends import kernels
        graph = for_backend(graph, lambda: kernels.get(self.backend))
        self._backend = prepare(self.backend, graph)
        self._options = dict(executor_options or {})
        self.graph = graph
        self.executor = self._spec.name
        self.meta = dict(meta or {})
        self._executors: collections.OrderedDict[tuple, object] = collections.OrderedDict()
        self.last_profile: Optional[dict] = None
        self._feed_memo: dict = {}   # index ranges per binding (feeds.check_feeds)
        # State (a KV cache) belongs to the session: every per-binding plan reads and writes
        # these same arrays, so a prefill plan and a decode plan continue one sequence. On a
        # device the first executor uploads them into this dict (they live on the device).
        try:
            # An all-zero initial state (a KV cache) starts as fresh np.zeros: untouched pages cost no
            # time or resident memory until a plan writes them (a copy would write every byte at load).
            self.state = {name: np.zeros(graph.constants[name].shape, graph.constants[name].dtype)
                          if not graph.constants[name].any() else
                          np.array(graph.constants[name], order="C", copy=True) for name in graph.state}
            if self._spec.memory != HOST:   # the device executor uploads the state itself
                self.state = {}
        except MemoryError:
            raise KilnError(f"no memory for the model's state ({', '.join(graph.state)})") from None
        self.lock = threading.RLock()   # held by run() when the session has state, and by the plan cache
        self._source: Optional[_MappedFile] = None  # the mapped file the weights live in (kiln.load)
        self._stored_plans = dict(stored_plans or {}) if self._spec.stored_plans else {}
        self._where = where

    # -- public surface ---------------------------------------------------------------
    @property
    def input_names(self) -> list[str]:
        return list(self.graph.inputs)

    @property
    def output_names(self) -> list[str]:
        return list(self.graph.outputs)

    def run(self, feeds: Mapping[str, np.ndarray], *, profile: bool = False) -> list[np.ndarray]:
        """Run once. ``feeds``: input name -> array (see ``input_names``). Returns the outputs
        as new numpy arrays. Raises FeedError for bad feeds, FileFormatError when the file a
        loaded model maps has changed since ``kiln.load``, BackendError from a kernel."""
        if self._source is not None:
            self._source.check()
        arrays, binding = check_feeds(self.graph, feeds, self._feed_memo)
        if self.graph.kv_cache is not None:  # shapes are checked generically; cache positions here
            self.graph.kv_cache.check_positions(arrays)
        if not self.state:
            return self._run(arrays, binding, profile)
        with self.lock:
            return self._run(arrays, binding, profile)

    def _run(self, arrays, binding, profile):
        ex = self._executor_for(binding)
        outs = ex.run(arrays, profile=profile)
        if profile:
            self.last_profile = getattr(ex, "last_profile", None)
        return outs

    def __call__(self, *args: np.ndarray, **feeds: np.ndarray) -> list[np.ndarray]:
        feeds = dict(zip(self.input_names, args), **feeds)
        return self.run(feeds)

    def reset_state(self) -> None:
        """Return every state tensor (e.g. the KV cache) to its initial value."""
        with self.lock:
            self._spec.reset(self.state, self.graph)

    def save(self, path: str | os.PathLike) -> None:
        serialize.save(self.graph, path, extra={"meta": self.meta})

    def plan(self, **binding: int):
        """The Plan for one binding of the symbolic dims (e.g. ``session.plan(s0=256)``)."""
        return self._executor_for(binding).plan

    def summary(self) -> str:
        return self.graph.summary()

    def __repr__(self) -> str:
        return f"<kiln.Session executor={self.executor} backend={self.backend} inputs={self.input_names} outputs={self.output_names}>"

    # -- executors per binding ----------------------------------------------------------
    def _executor_for(self, binding: Mapping[str, int]):
        key = tuple(sorted(binding.items()))
        with self.lock:
            ex = self._executors.get(key)
            if ex is None:
                ex = self._build(dict(binding))
                self._executors[key] = ex
                while len(self._executors) > self.max_plans:
                    self._executors.popitem(last=False)
            else:
                self._executors.move_to_end(key)
            return ex

    def _build(self, binding: dict):
        options = dict(self._options)
        if self._stored_plans:
            from .planner.stored import binding_key
            stored = self._stored_plans.get(binding_key(binding))
            if stored is not None:
                options["stored_plan"] = stored
        try:
            return self._spec.factory(self.graph, binding, self.state, self._backend, **options)
        except FileFormatError as e:
            if "stored_plan" not in options:
                raise
            raise FileFormatError(f"{self._where}: {e}; recompile it") from None
        except MemoryError:
            raise KilnError(f"no memory for the plan of {dict(binding) or 'the static shapes'}") from None


class _MappedFile:
    """The file a loaded model's weights are memory-mapped from, and its size and mtime at load.
    ``check`` (one fstat, each run) refuses to run once the file was changed in place: a
    truncated mapping would kill the process with SIGBUS, an overwritten one give other outputs.
    Replacing the file by rename (as ``Session.save`` does) leaves the mapped file intact."""

    def __init__(self, path, f):
        self.path, self.file = str(path), f
        st = os.fstat(f.fileno())
        self.stamp = (st.st_size, st.st_mtime_ns)

    def check(self) -> None:
        st = os.fstat(self.file.fileno())
        if (st.st_size, st.st_mtime_ns) != self.stamp:
            raise FileFormatError(f"{self.path}: the model file changed after kiln.load (size {self.stamp[0]} -> "
                                  f"{st.st_size} bytes); load it again, or load with mmap=False to keep a copy")


def load(path: str | os.PathLike, *, executor: Optional[str] = None, backend: Optional[str] = None,
         mmap: bool = True) -> Session:
    """Load a saved model. Needs numpy and Kiln only — torch is never imported (except by
    backend="triton", which runs on torch tensors).

    ``mmap=True`` (default) maps the weights from the file: loading is fast and pages are shared,
    but the file must not be changed in place while the session lives (each run checks its size
    and mtime and raises FileFormatError if it was). ``mmap=False`` copies the weights into
    memory; the file may then change freely. Raises FileFormatError for a damaged file.
    """
    try:
        f = open(path, "rb") if mmap else None
    except OSError as e:
        raise FileFormatError(f"{path}: not a readable Kiln model: {e}") from None
    source = _MappedFile(path, f) if f is not None else None
    graph, extra = serialize.load(path, mmap=mmap)
    session = Session(graph, executor=executor, backend=backend, meta=extra.get("meta", {}))
    if source is not None:
        source.check()  # changed while loading
        session._source = source
    return session


def compile(module, example_args: Sequence, *, dynamic_shapes=None, executor: Optional[str] = None,
            backend: Optional[str] = None, optimize: bool = True, passes: Optional[Sequence[str]] = None,
            quantize: Optional[str] = None, act: str = "exact", prepare=None) -> Session:
    """Capture ``module`` with torch.export, optimize the graph and return a Session.

    dynamic_shapes uses torch.export's own format, e.g. ``{"input_ids": {1: Dim("seq", max=1024)}}``.
    ``passes`` names the optimization stages to run (default: all); ``optimize=False`` runs none.
    ``backend`` (which kernels: "c", "numpy", "triton") and ``executor`` (how they are driven):
    see Session.
    ``session.meta["compile_ms"]`` holds where the time went: "torch.export", "decompose",
    "convert", one "stage:NAME" per optimization stage, and "total" (milliseconds).
    ``quantize`` ("int8", "q8_0", "q4_0", "q4_k") stores the constant matmul weights in that
    format, run by the quantized matmul; ``act`` its activation mode ("exact": fp32, "int8").
    A ``kiln.passes.quantize.QuantizeConfig`` there sets the finer choices (fp32 layers, int8
    scales, its own activation mode).
    ``prepare(graph)`` is called on the exported graph before optimization (the GGUF loader
    swaps placeholder weights for the file's blocks there).
    """
    import time

    from .frontend.torch import export
    t0 = time.perf_counter()
    steps: dict = {}
    graph = export(module, tuple(example_args) if isinstance(example_args, (list, tuple)) else (example_args,),
                   dynamic_shapes=dynamic_shapes, timings=steps)
    ms = {k: 1e3 * v for k, v in steps.items() if isinstance(v, float)}
    if prepare is not None:
        prepare(graph)
    if optimize:
        from .passes.pipeline import optimize as run_passes
        log: list = []
        from .passes.quantize import QuantizeConfig
        cfg = quantize if isinstance(quantize, QuantizeConfig) else QuantizeConfig(quantize, act) if quantize else None
        graph = run_passes(graph, stages=passes, log=log, quantize_cfg=cfg, qmode=cfg.mode if cfg else act)
        ms.update({f"stage:{e.name}": e.ms for e in log})
    from .passes.executable import check_executable
    if executor != "reference":   # the numpy reference evaluates every op; the others need kernels
        check_executable(graph)   # anything compile accepts must run: refuse kernel-less runtime nodes now
    session = Session(graph, executor=executor, backend=backend)
    ms["total"] = 1e3 * (time.perf_counter() - t0)
    session.meta["compile_ms"] = {k: round(v, 1) for k, v in ms.items()}
    return session
