"""The fuzz worker: runs cases sent by the runner, one per line, in its own process.

Protocol: the runner writes ``<target> <case>`` lines; the worker answers one JSON line per case
({"outcome": "ok" | "clean" | "raw", "what": ...}). A crash kills only this process (the runner
sees the signal and starts another); a hang is killed by the runner's timer.
"""
from __future__ import annotations

import faulthandler
import json
import os
import sys
import traceback
import zlib
from pathlib import Path
from typing import Any, Callable

import numpy as np

TARGETS = ("kiln", "feeds", "gguf")  # (selftest_crash / selftest_hang check the runner's accounting)


def case_rng(target: str, case: int) -> np.random.Generator:
    return np.random.default_rng([case, zlib.crc32(target.encode())])


class WrongOutput(Exception):
    """The compiled executor and the numpy reference disagree on a file both accept."""


def compare(got: list, want: list) -> None:
    if len(got) != len(want):
        raise WrongOutput(f"{len(got)} outputs, the reference has {len(want)}")
    for i, (a, b) in enumerate(zip(got, want)):
        a, b = np.asarray(a), np.asarray(b)
        if a.shape != b.shape or a.dtype != b.dtype:
            raise WrongOutput(f"output {i}: {a.dtype}{list(a.shape)} vs reference {b.dtype}{list(b.shape)}")
        if a.dtype.kind == "f":
            fin = np.isfinite(b)
            scale = float(np.abs(b[fin]).max()) if fin.any() else 1.0
            same = np.isclose(a, b, rtol=1e-3, atol=1e-3 * max(scale, 1e-30), equal_nan=True)
            if not same.all():
                raise WrongOutput(f"output {i}: {int((~same).sum())} of {a.size} values differ from the reference")
        elif not np.array_equal(a, b):
            raise WrongOutput(f"output {i}: values differ from the reference")


class Skip(Exception):
    """The harness cannot build this case's feeds (not a finding about Kiln)."""


def zeros_for(t) -> np.ndarray:
    """A feed for input tensor `t`; a symbolic dim (a mutation may make one) gets size 2.
    A declared shape beyond 2**28 elements is a valid file the harness cannot feed: Skip."""
    shape = tuple(d if isinstance(d, int) else 2 for d in t.shape)
    if int(np.prod(shape, dtype=object)) > 2**28:
        raise Skip(f"input {t.name!r} of shape {list(shape)} is too large to feed")
    return np.zeros(shape, t.dtype)


class Cases:
    """Builds and runs case `case` of `target` (deterministic: the same id is the same input)."""

    def __init__(self, workdir: Path):
        from . import seeds
        self.workdir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        self.kiln_seeds = seeds.kiln_seeds(workdir)
        self._sessions: dict[int, Any] = {}
        self._gguf_seed = None

    def warm(self, target: str) -> None:
        """Run the unmutated seed once: the lazy imports (transformers' model classes, ...) happen here,
        before the runner's clock starts, not in the first case."""
        from . import seeds
        if target.startswith("selftest"):
            return
        if target == "gguf":
            import torch

            from kiln.models.gguf import load_gguf
            self._gguf_seed = seeds.gguf_seed(self.workdir)
            with torch.inference_mode():
                load_gguf(self._gguf_seed).model(input_ids=torch.tensor([[1, 2]]))
        else:
            import kiln
            for path in self.kiln_seeds:
                sess = kiln.load(path)
                sess.run({n: zeros_for(sess.graph.tensors[n]) for n in sess.input_names})

    def prepare(self, target: str, case: int) -> Callable[[], None]:
        """Build case `case`'s input (the mutation) and return what runs it through Kiln."""
        return getattr(self, f"_{target}")(case_rng(target, case), case)

    def run(self, target: str, case: int) -> None:
        self.prepare(target, case)()

    def _kiln(self, rng, case):
        import kiln
        from .mutate import mutate_kiln
        path = self.workdir / "case.kiln"
        path.write_bytes(mutate_kiln(rng, self.kiln_seeds[case % len(self.kiln_seeds)]))

        def go():
            sess = kiln.load(path)
            feeds = {n: zeros_for(sess.graph.tensors[n]) for n in sess.input_names}
            got = sess.run(feeds)
            # Differential check: a file the compiled path runs must give what the float64-checked
            # numpy reference gives (silently wrong output is the worst outcome there is).
            want = kiln.load(path, executor="reference").run(feeds)
            compare(got, want)
        return go

    def _feeds(self, rng, case):
        import kiln
        from .mutate import mutate_feeds
        i = case % len(self.kiln_seeds)
        if i not in self._sessions:
            self._sessions[i] = kiln.load(self.kiln_seeds[i])
        sess = self._sessions[i]
        feeds = mutate_feeds(rng, sess.graph)
        return lambda: sess.run(feeds)

    def _gguf(self, rng, case):
        import torch

        from kiln.models.gguf import load_gguf
        from kiln.models.tokenizer import encode_prompt

        from . import seeds
        from .mutate import mutate_gguf
        if self._gguf_seed is None:
            self._gguf_seed = seeds.gguf_seed(self.workdir)
        path = self.workdir / "case.gguf"
        mutate_gguf(rng, self._gguf_seed, path)

        def go():
            parts = load_gguf(path)
            ids = encode_prompt(parts.tokenizer, "Hi there")
            with torch.inference_mode():
                parts.model(input_ids=torch.tensor([ids[:8]]))
        return go


    def _selftest_crash(self, rng, case):
        import signal
        return lambda: os.kill(os.getpid(), signal.SIGSEGV)

    def _selftest_hang(self, rng, case):
        import time
        return lambda: time.sleep(3600)


def classify(fn: Callable[[], None]) -> dict:
    from kiln.errors import KilnError
    try:
        fn()
        return {"outcome": "ok"}
    except KilnError as e:
        return {"outcome": "clean", "what": type(e).__name__}
    except Skip as e:
        return {"outcome": "skip", "what": str(e)[:200]}
    except WrongOutput as e:
        return {"outcome": "wrong", "what": "compiled output differs from the reference", "message": str(e)[:200]}
    except Exception as e:  # noqa: BLE001 (the point: every escape is recorded by class and place)
        frames = traceback.extract_tb(e.__traceback__)
        root = str(Path(__file__).resolve().parents[2])
        ours = [f for f in frames if f.filename.startswith(root) and "/tests/fuzz/" not in f.filename]
        last = ours[-1] if ours else frames[-1]
        at = f"{os.path.relpath(last.filename, root) if last.filename.startswith(root) else last.filename}:{last.lineno}"
        return {"outcome": "raw", "what": f"{type(e).__name__} at {at}", "message": str(e)[:200]}


def limit_memory(gib: float) -> None:
    """Address-space cap: a mutated size that asks for terabytes fails as MemoryError, not an OOM kill."""
    import resource
    if gib > 0:
        lim = int(gib * 2**30)
        resource.setrlimit(resource.RLIMIT_AS, (lim, lim))


def main(argv: list[str]) -> int:
    workdir, mem, target = Path(argv[0]), float(argv[1]), argv[2]
    faulthandler.enable()  # a crash prints where it happened to stderr, then the signal kills us
    cases = Cases(workdir)
    cases.warm(target)
    limit_memory(mem)
    print(json.dumps({"ready": True}), flush=True)
    for line in sys.stdin:
        target, case = line.split()
        try:
            go = cases.prepare(target, int(case))
        except Exception as e:  # noqa: BLE001 (the mutator made an input its writer refuses: not a finding)
            print(json.dumps({"outcome": "skip", "what": f"{type(e).__name__}: {e}"[:200]}), flush=True)
            continue
        print(json.dumps(classify(go)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
