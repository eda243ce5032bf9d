"""Smoke test of the benchmark harness (bench/): a tiny model, one round, Kiln + eager only.

It checks that the harness runs end to end and writes its JSON and Markdown; it never asserts
on speed."""
from __future__ import annotations

import argparse
import json

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")


def _args(tmp_path, **kw):
    from bench import run
    p = argparse.ArgumentParser()
    run.add_arguments(p)
    argv = ["--models", "tiny-2L", "--seqs", "8,16", "--rounds", "1", "--warmup", "1", "--peers", "kiln,eager",
            "--out", str(tmp_path), "--in-process", "--no-plots", "--min-sample", "0", "--skip-machine"]
    return p.parse_args(argv)


def test_harness_writes_json_and_markdown(tmp_path):
    from bench import run
    from kiln.backends import clib
    args = _args(tmp_path)
    if not clib.available():
        args.executor = "interpreted"
    results = run.run_all(args)
    data = json.loads((tmp_path / "results.json").read_text())
    cfg = data["configs"]["tiny-2L"]
    assert set(cfg["contestants"]) >= {"kiln", "eager", "kiln-passes-off"}
    for s in ("8", "16"):
        e = cfg["seqs"][s]
        assert {"kiln", "eager"} <= set(e["median_ms"]), e.get("excluded")
        assert all(len(v) == 1 for v in e["samples_ms"].values())
        assert e["rel_err"]["kiln"] <= 1e-3
        assert e["flops"] > 0 and e["memory"]["kiln"]["arena_bytes"] >= 0
        assert "by_op" in e["kiln_profile"]["kiln"]
    md = (tmp_path / "results.md").read_text()
    assert "tiny GPT-2 2-layer body" in md and "eager ÷ Kiln" in md
    assert results["configs"]["tiny-2L"]["seqs"]["8"]["median_ms"]


def test_unavailable_peer_is_skipped_not_fatal(tmp_path, monkeypatch):
    from bench import measure, peers

    def boom(self):
        raise peers.Unavailable("not installed here")
    monkeypatch.setattr(peers.OnnxRuntime, "prepare", boom)
    res = measure.run_config("tiny-2L", [8], rounds=1, warmup=1, peers=["eager", "onnxruntime"], min_sample=0,
                         memory=False, profile=False)
    assert res["contestants"]["onnxruntime"]["status"] == "unavailable"
    assert "eager" in res["seqs"]["8"]["median_ms"]


def test_flops_and_report_helpers():
    from bench import measure, models, report
    _, cfg = models.build_model(models.spec("tiny-2L"))
    assert models.flops(cfg, 32) > models.flops(cfg, 16) > 0
    assert measure.rel_err(np.ones(3, np.float32), np.ones(3)) == 0.0
    assert measure.quantiles([3.0, 1.0, 2.0])[1] == 2.0
    with pytest.raises(ValueError):
        models.spec("gpt2")
    assert "# Kiln benchmark results" in report.markdown({"configs": {}})


def _state(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return "gone"


@pytest.mark.skipif(not __import__("os").path.isdir("/proc/self"), reason="reads /proc")
def test_busy_loops_spin_stop_by_themselves_and_are_killed():
    import time

    from bench.busy import busy_loops
    with busy_loops(2, limit_s=60) as pids:
        assert len(pids) == 2 and all(_state(p) in "RS" for p in pids)
    assert all(_state(p) == "gone" for p in pids)  # killed and reaped on the way out
    with busy_loops(1, limit_s=0.2) as (pid,):
        deadline = time.monotonic() + 30
        while _state(pid) not in ("Z", "gone") and time.monotonic() < deadline:
            time.sleep(0.1)
        assert _state(pid) in ("Z", "gone")  # exited at its own deadline, nobody killed it


def test_busy_option_times_beside_busy_loops(tmp_path):
    from bench import run
    from kiln.backends import clib
    args = _args(tmp_path)
    args.busy, args.seqs = 1, "8"
    if not clib.available():
        args.executor = "interpreted"
    res = run.run_all(args)
    busy = res["configs"]["tiny-2L"]["seqs"]["8"]["busy"]
    assert busy["loops"] == 1 and busy["kept"]["kiln"] > 0 and busy["median_ms"]["eager"] > 0
    assert "| tiny-2L | 8 | kiln |" in (tmp_path / "busy.md").read_text()
