"""A busy machine on demand: N ordinary CPU-bound processes beside the benchmark.

Each busy loop is a separate process at nice 0 (the default priority of anything a user
runs), spinning until its own deadline, so a benchmark that dies cannot leave it behind
for long; `busy_loops` also kills them on the way out. This is the load of issue 11:
one `sh -c 'while :; do :; done'` next to Kiln.
"""
from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time

# spins on the clock, so it stops by itself at the deadline even if nobody kills it
_LOOP = "import time\nend = time.monotonic() + {limit}\nwhile time.monotonic() < end:\n    pass\n"


@contextlib.contextmanager
def busy_loops(n: int, limit_s: float = 600.0):
    """Run the body with `n` busy processes (0: none). limit_s: each exits by itself after
    this many seconds. Yields the list of their pids."""
    procs = []
    try:
        for _ in range(max(0, n)):
            procs.append(subprocess.Popen([sys.executable, "-c", _LOOP.format(limit=float(limit_s))],
                                          stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                          preexec_fn=lambda: os.setpriority(os.PRIO_PROCESS, 0, 0)))
        if procs:
            time.sleep(0.2)  # let them start spinning
        yield [p.pid for p in procs]
    finally:
        for p in procs:
            p.kill()
        for p in procs:
            p.wait()
