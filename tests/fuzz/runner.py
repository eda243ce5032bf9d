"""Runs fuzz cases in worker subprocesses, restarts a worker that crashed or hung, counts outcomes."""
from __future__ import annotations

import collections
import json
import os
import select
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


@dataclass
class Report:
    seconds: float = 0.0
    per_target: collections.Counter = field(default_factory=collections.Counter)
    ok: int = 0
    clean: int = 0
    raw: int = 0
    skipped: int = 0                              # mutations the file writer refused (not run)
    wrong: list = field(default_factory=list)     # (case id, how): compiled output != the reference
    crashes: list = field(default_factory=list)   # (case id, signal name, last stderr lines)
    hangs: list = field(default_factory=list)     # case ids
    raw_classes: dict = field(default_factory=dict)  # "Type at file:line" -> [count, first case id, message]

    @property
    def cases(self) -> int:
        return sum(self.per_target.values())

    def text(self) -> str:
        lines = [f"fuzz: {self.cases} cases in {self.seconds:.0f} s ("
                 + ", ".join(f"{t} {n}" for t, n in sorted(self.per_target.items())) + ")",
                 f"  ok {self.ok}, clean errors {self.clean}, raw exceptions {self.raw}, "
                 f"wrong outputs {len(self.wrong)}, crashes {len(self.crashes)}, hangs {len(self.hangs)}, "
                 f"skipped {self.skipped}"]
        if self.raw_classes:
            lines.append("  raw exception classes (replay: python -m tests.fuzz --replay CASE):")
            for what, (n, case, msg) in sorted(self.raw_classes.items(), key=lambda kv: -kv[1][0]):
                lines.append(f"    {n:5d}  {what}  (e.g. {case}: {msg[:100]})")
        for case, sig, tail in self.crashes:
            lines.append(f"  CRASH {case}: {sig}\n" + "".join(f"      {t}\n" for t in tail))
        for case in self.hangs:
            lines.append(f"  HANG {case}")
        for case, how in self.wrong[:20]:
            lines.append(f"  WRONG {case}: {how}")
        return "\n".join(lines)


class Worker:
    def __init__(self, target: str, workdir: Path, memory_gib: float):
        self.target, self.workdir = target, workdir / target
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.stderr_path = self.workdir / "stderr.txt"
        env = dict(os.environ, KILN_NUM_THREADS="1", OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT),
                   TOKENIZERS_PARALLELISM="false")
        self.proc = subprocess.Popen([sys.executable, "-m", "tests.fuzz.worker", str(self.workdir), str(memory_gib), target],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=open(self.stderr_path, "wb"),
                                     cwd=ROOT, env=env, text=True, bufsize=1)

    def wait_ready(self) -> "Worker":
        ready = self._read(300.0)
        if ready is None or not ready.get("ready"):
            self.kill()
            raise RuntimeError(f"fuzz worker for {self.target} did not start: {self.stderr_tail()}")
        return self

    def _read(self, timeout: float):
        r, _, _ = select.select([self.proc.stdout], [], [], timeout)
        if not r:
            return None
        line = self.proc.stdout.readline()
        return json.loads(line) if line else {"eof": True}

    def run(self, case: int, timeout: float) -> dict:
        try:
            self.proc.stdin.write(f"{self.target} {case}\n")
            self.proc.stdin.flush()
        except BrokenPipeError:
            return self._died()
        reply = self._read(timeout)
        if reply is None:
            self.kill()
            return {"outcome": "hang"}
        if reply.get("eof"):
            return self._died()
        return reply

    def _died(self) -> dict:
        rc = self.proc.wait()
        sig = signal.Signals(-rc).name if rc < 0 else f"exit status {rc}"
        return {"outcome": "crash", "what": sig, "tail": self.stderr_tail()}

    def stderr_tail(self, n: int = 12) -> list:
        try:
            return self.stderr_path.read_text(errors="replace").splitlines()[-n:]
        except OSError:
            return []

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()

    def alive(self) -> bool:
        return self.proc.poll() is None


def run(targets: list[str], workdir: Path, *, seconds: float, max_cases: int, start: int = 0,
        case_timeout: float = 60.0, memory_gib: float = 6.0) -> Report:
    report = Report()
    # All workers start (import torch, transformers, ...) at once, before the clock starts.
    workers = {t: Worker(t, workdir, memory_gib) for t in targets}
    case = start
    try:
        for w in workers.values():
            w.wait_ready()
        t0 = time.monotonic()
        for k, target in enumerate(targets):  # each target gets an equal share of the time and the count
            until = t0 + seconds * (k + 1) / len(targets)
            quota = max_cases * (k + 1) // len(targets)
            while report.cases < quota and time.monotonic() < until:
                if not workers[target].alive():  # crashed or hung on the last case: a fresh one
                    workers[target] = Worker(target, workdir, memory_gib).wait_ready()
                _record(report, target, case, workers[target].run(case, case_timeout))
                case += 1
            workers[target].kill()
    finally:
        for w in workers.values():
            w.kill()
    report.seconds = time.monotonic() - t0
    return report


def _record(report: Report, target: str, case: int, res: dict) -> None:
    cid = f"{target}:{case}"
    report.per_target[target] += 1
    out = res["outcome"]
    if out == "ok":
        report.ok += 1
    elif out == "clean":
        report.clean += 1
    elif out == "skip":
        report.skipped += 1
    elif out == "raw":
        report.raw += 1
        entry = report.raw_classes.setdefault(res["what"], [0, cid, res.get("message", "")])
        entry[0] += 1
    elif out == "wrong":
        report.wrong.append((cid, res.get("message", "")))
    elif out == "crash":
        report.crashes.append((cid, res["what"], res["tail"]))
    else:
        report.hangs.append(cid)


def replay(target: str, case: int, workdir: Path) -> int:
    """Run one case in this process and show what happened (the traceback for a raw exception)."""
    import traceback

    from kiln.errors import KilnError

    from .worker import Cases
    cases = Cases(workdir / target)
    try:
        cases.run(target, case)
        print(f"{target}:{case}: ran without error")
    except KilnError as e:
        print(f"{target}:{case}: clean {type(e).__name__}: {e}")
    except Exception:  # noqa: BLE001
        traceback.print_exc()
        return 1
    return 0
