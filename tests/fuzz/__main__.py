"""Command line of the fuzzer (see tests/fuzz/__init__.py)."""
from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from .runner import replay, run


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m tests.fuzz", description=__doc__)
    p.add_argument("--seconds", type=float, default=100.0, help="stop starting cases after this long")
    p.add_argument("--cases", type=int, default=100000, help="at most this many cases")
    p.add_argument("--targets", default="kiln,feeds,gguf", help="comma-separated: kiln, feeds, gguf")
    p.add_argument("--start", type=int, default=0, help="first case number (vary it between runs)")
    p.add_argument("--case-timeout", type=float, default=60.0, help="seconds before a case counts as a hang")
    p.add_argument("--memory-gib", type=float, default=6.0, help="address-space cap per worker (0: none)")
    p.add_argument("--strict", action="store_true", help="the default now (kept for old command lines)")
    p.add_argument("--allow-raw", action="store_true",
                   help="exit 0 despite raw (non-Kiln) exceptions and outputs that differ from the reference "
                        "(by default, as in `make fuzz-ci`, they fail the run like crashes and hangs)")
    p.add_argument("--workdir", type=Path, default=None, help="where seeds and case files go (default: a temp dir)")
    p.add_argument("--replay", metavar="TARGET:CASE", help="run one case here, with its traceback")
    a = p.parse_args(argv)
    workdir = a.workdir or Path(tempfile.mkdtemp(prefix="kiln-fuzz-"))
    if a.replay:
        target, case = a.replay.split(":")
        return replay(target, int(case), workdir)
    report = run([t for t in a.targets.split(",") if t], workdir, seconds=a.seconds, max_cases=a.cases,
                 start=a.start, case_timeout=a.case_timeout, memory_gib=a.memory_gib)
    print(report.text())
    failed = report.crashes or report.hangs or (not a.allow_raw and (report.raw or report.wrong))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
