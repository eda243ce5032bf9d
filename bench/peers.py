"""The contestants: Kiln (compiled executor) and its peers, behind one small interface.

Each contestant is built once per model (``prepare``: compile / export, timed), then called
with int64 input_ids of shape [1, S] and returns float32 logits as numpy. ``memory(ids)``
reports what the contestant's activation memory is at that shape, measured its own way
(see docs/benchmarks.md, "Method"). A peer that cannot be built raises ``Unavailable``;
the harness skips it with the reason.
"""
from __future__ import annotations

import os
import tempfile
import time

import numpy as np


class Unavailable(Exception):
    """This contestant cannot run here (library missing, export failed, ...)."""


class Contestant:
    name = "?"
    kind = "?"           # kiln | torch | ort
    notes: list

    def __init__(self):
        self.notes = []
        self.compile_s = None      # one-time build cost (export, compile)

    def prepare(self) -> None:
        pass

    def __call__(self, ids: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def memory(self, ids: np.ndarray) -> dict:
        return {}

    def weight_bytes(self):
        return None

    def close(self) -> None:
        pass


# --------------------------------------------------------------------------- memory helpers
def torch_peak_alloc_bytes(fn) -> int:
    """Peak live bytes allocated through PyTorch's CPU allocator during fn(): every allocation and
    free recorded by torch.profiler(profile_memory=True), summed in time order."""
    import torch
    from torch._C._profiler import _EventType
    from torch.profiler import ProfilerActivity, profile
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        out = fn()
        del out
    allocs = []

    def walk(n):
        if n.tag == _EventType.Allocation:
            allocs.append((n.start_time_ns, n.extra_fields.alloc_size))
        for c in n.children:
            walk(c)
    for root in prof.profiler.kineto_results.experimental_event_tree():
        walk(root)
    allocs.sort(key=lambda x: x[0])
    total = peak = 0
    for _, size in allocs:
        total += size
        peak = max(peak, total)
    del torch
    return int(peak)


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def reset_peak_rss() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def peak_rss_bytes() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return 0


# --------------------------------------------------------------------------- Kiln
class Kiln(Contestant):
    kind = "kiln"

    def __init__(self, model, example_ids, max_seq: int, *, optimize: bool = True, executor: str = "compiled"):
        super().__init__()
        self.name = "kiln" if optimize else "kiln-passes-off"
        self.model, self.example, self.max_seq = model, example_ids, max_seq
        self.optimize, self.executor = optimize, executor
        self.session = None
        self.sym = None

    def prepare(self) -> None:
        import torch
        from torch.export import Dim

        import kiln
        from kiln.backends import clib
        try:
            ok = clib.available()
        except Exception as e:  # noqa: BLE001 - e.g. a stale build
            raise Unavailable(f"Kiln's C kernels failed to load: {type(e).__name__}: {e}") from None
        if self.executor == "compiled" and not ok:
            raise Unavailable("Kiln's C kernels are not built (pip install -e .)")
        t0 = time.perf_counter()
        try:
            self.session = kiln.compile(
                self.model, (torch.from_numpy(self.example),),
                dynamic_shapes={"input_ids": {1: Dim("seq", min=2, max=self.max_seq)}},
                executor=self.executor, optimize=self.optimize)
        except Exception as e:  # noqa: BLE001 - report, don't crash the benchmark
            raise Unavailable(f"kiln.compile failed: {type(e).__name__}: {str(e)[:300]}") from None
        self.compile_s = time.perf_counter() - t0
        shape = self.session.graph.tensors[self.session.input_names[0]].shape
        self.sym = str(shape[1])

    def __call__(self, ids):
        return self.session.run({"input_ids": ids})[0]

    def plan_stats(self, seq: int) -> dict:
        st = self.session.plan(**{self.sym: int(seq)}).stats
        return {"arena_bytes": int(st.arena_bytes), "no_reuse_bytes": int(st.no_reuse_bytes),
                "peak_live_bytes": int(st.peak_live_bytes)}

    def memory(self, ids):
        st = self.plan_stats(ids.shape[1])
        vocab = int(self.session.graph.tensors[self.session.output_names[0]].shape[-1])
        out_bytes = int(ids.shape[0] * ids.shape[1] * vocab * 4)
        return {**st, "output_bytes": out_bytes, "activation_bytes": st["arena_bytes"] + out_bytes,
                "method": "plan arena + output array"}

    def profile(self, ids, budget_s: float = 20.0, runs: int = 3) -> dict:
        """Per-op-type times of one `profile=True` run: the fastest of up to `runs` runs (within
        `budget_s`), since on a shared machine a single run can catch another process's burst."""
        best, t_end = None, time.perf_counter() + budget_s
        for i in range(runs):
            self.session.run({"input_ids": ids}, profile=True)
            p = self.session.last_profile
            by_op = getattr(p, "by_op", p) or {}
            rec = {"total_ms": float(getattr(p, "total_ms", sum(e["ms"] for e in by_op.values()))),
                   "by_op": {k: {"count": int(v["count"]), "ms": float(v["ms"])} for k, v in by_op.items()},
                   "runs": i + 1}
            if best is None or rec["total_ms"] < best["total_ms"]:
                best = rec
            best["runs"] = i + 1
            if time.perf_counter() > t_end:
                break
        return best

    def weight_bytes(self):
        return int(self.session.graph.param_bytes())

    def close(self):
        self.session = None


# --------------------------------------------------------------------------- PyTorch
class TorchEager(Contestant):
    kind = "torch"
    name = "eager"

    def __init__(self, model):
        super().__init__()
        self.model = model
        self.fn = model

    def prepare(self):
        self.compile_s = 0.0

    def __call__(self, ids):
        import torch
        with torch.inference_mode():
            return self.fn(torch.from_numpy(ids)).numpy()

    def memory(self, ids):
        import torch

        def go():
            with torch.inference_mode():
                return self.fn(torch.from_numpy(ids))
        return {"activation_bytes": torch_peak_alloc_bytes(go), "method": "torch.profiler allocator peak"}

    def weight_bytes(self):
        from .models import weight_bytes
        return weight_bytes(self.model)


class TorchCompile(TorchEager):
    def __init__(self, model, *, freezing: bool = False):
        super().__init__(model)
        self.freezing = freezing
        self.name = "torch.compile+freezing" if freezing else "torch.compile"

    def prepare(self):
        import torch
        for knob in ("cache_size_limit", "recompile_limit"):
            if hasattr(torch._dynamo.config, knob):
                setattr(torch._dynamo.config, knob, max(64, getattr(torch._dynamo.config, knob)))
        opts = {"freezing": True} if self.freezing else None
        # dynamic=False: one specialized graph per sequence length (Kiln also plans per shape);
        # compile happens lazily on the first call at each shape and is reported as first_call_s.
        t0 = time.perf_counter()
        self.fn = torch.compile(self.model, dynamic=False, options=opts)
        self.compile_s = time.perf_counter() - t0
        self.notes.append("compile is lazy: see first-call time per seq")


# --------------------------------------------------------------------------- ONNX Runtime
class OnnxRuntime(Contestant):
    kind = "ort"
    name = "onnxruntime"

    def __init__(self, model, example_ids, max_seq: int, threads: int):
        super().__init__()
        self.model, self.example, self.max_seq, self.threads = model, example_ids, max_seq, threads
        self.tmp = None
        self.sess = None
        self.exporter = None
        self._rss_base = None
        self._rss_net = 0

    def prepare(self):
        try:
            import onnxruntime as ort
        except ImportError:
            raise Unavailable("onnxruntime is not installed (pip install 'kiln-runtime[bench]')") from None
        import torch
        self.tmp = tempfile.TemporaryDirectory(prefix="kiln-bench-onnx-")
        path = os.path.join(self.tmp.name, "model.onnx")
        t0 = time.perf_counter()
        errors = []
        ex = (torch.from_numpy(self.example),)
        try:
            from torch.export import Dim
            import warnings
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                prog = torch.onnx.export(self.model, ex, dynamo=True, verbose=False,
                                         dynamic_shapes={"input_ids": {1: Dim("seq", min=2, max=self.max_seq)}},
                                         input_names=["input_ids"], output_names=["logits"])
                prog.save(path, external_data=True)
            self.exporter = "dynamo"
        except Exception as e:  # noqa: BLE001
            errors.append(f"dynamo export: {type(e).__name__}: {str(e)[:200]}")
            try:
                import warnings
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    torch.onnx.export(self.model, ex, path, dynamo=False, opset_version=17,
                                      input_names=["input_ids"], output_names=["logits"],
                                      dynamic_axes={"input_ids": {1: "seq"}, "logits": {1: "seq"}})
                self.exporter = "legacy"
            except Exception as e2:  # noqa: BLE001
                errors.append(f"legacy export: {type(e2).__name__}: {str(e2)[:200]}")
                raise Unavailable("; ".join(errors)) from None
        self.export_s = time.perf_counter() - t0
        if errors:
            self.notes.extend(errors)
        so = ort.SessionOptions()
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        so.intra_op_num_threads = self.threads
        so.inter_op_num_threads = 1
        so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        # ORT's pool threads spin after each run by default; on a 2-core machine a spinning thread
        # steals a core from whichever runtime runs next in the interleaved rounds. Spinning off.
        so.add_session_config_entry("session.intra_op.allow_spinning", "0")
        t1 = time.perf_counter()
        self.sess = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
        self.session_s = time.perf_counter() - t1
        self.compile_s = self.export_s + self.session_s
        self.in_name = self.sess.get_inputs()[0].name
        self.file_bytes = sum(os.path.getsize(os.path.join(self.tmp.name, f)) for f in os.listdir(self.tmp.name))
        self.notes.append(f"exporter: {self.exporter}; export {self.export_s:.1f}s, session {self.session_s:.1f}s")
        self._rss_base = rss_bytes()

    def __call__(self, ids):
        return self.sess.run(None, {self.in_name: ids})[0]

    def first_call(self, ids):
        """The first call at a new shape, with the RSS it adds (ORT's arena grows on demand)."""
        before = rss_bytes()
        ok = reset_peak_rss()
        y = self(ids)
        after = rss_bytes()
        peak = peak_rss_bytes() if ok else after
        self.first_mem = {"activation_bytes": int(self._rss_net + max(0, peak - before)),
                          "method": "RSS growth over ORT's own calls (approx. arena)"}
        self._rss_net += max(0, after - before)
        return y

    def memory(self, ids):
        return getattr(self, "first_mem", {})

    def weight_bytes(self):
        return int(self.file_bytes)

    def close(self):
        self.sess = None
        if self.tmp is not None:
            self.tmp.cleanup()
