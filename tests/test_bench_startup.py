"""bench/startup.py measures what it says: first output byte before the end, peak RSS, and a llama-cli that
crashes in weight repacking is rerun with --no-repack (a fake llama-cli stands in for the real one)."""
from __future__ import annotations

import os
import stat
import sys

import pytest

from bench import startup

FAKE_LLAMA = """#!{python}
import os, sys, time
if "--no-repack" not in sys.argv:
    os.kill(os.getpid(), 4)  # SIGILL, as a build whose repacked kernels this CPU cannot run
print("banner", flush=True)
time.sleep(0.05)
print("> prompt\\nParis.\\n[ Prompt: 100.0 t/s | Generation: 50.0 t/s ]", flush=True)
"""


def test_timed_sees_the_first_output_before_the_end():
    r = startup.timed([sys.executable, "-c", "import time; print('a', flush=True); time.sleep(0.3); print('b')"],
                      dict(os.environ))
    assert 0 < r["first_out_s"] < r["wall_s"] - 0.2
    assert r["stdout"].split() == ["a", "b"]
    if os.path.isfile(startup.TIME):
        assert r["rss_mib"] > 1


def test_failed_run_is_reported():
    with pytest.raises(startup.RunFailed, match="failed"):
        startup.timed([sys.executable, "-c", "raise SystemExit(3)"], dict(os.environ))


def test_llama_cli_crash_falls_back_to_no_repack(tmp_path):
    exe = tmp_path / "llama-cli"
    exe.write_text(FAKE_LLAMA.format(python=sys.executable))
    exe.chmod(exe.stat().st_mode | stat.S_IEXEC)
    runs, flags = startup.llama_runs(str(exe), "m.gguf", "Hi", 8, 2, 2)
    assert flags == "--no-repack" and len(runs) == 2
    assert all(r["ttft_s"] == pytest.approx(r["wall_s"] - 7 / 50.0) for r in runs)
    assert "llama-cli --no-repack" in startup.summarize("llama-cli --no-repack", runs)
