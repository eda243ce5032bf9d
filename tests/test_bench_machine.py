"""bench/machine.py's read-bandwidth probe: every method measured, the floor's figure named."""
from __future__ import annotations

import types

import numpy as np

from bench import machine


def test_read_bandwidth_reports_each_method_and_takes_the_best():
    r = machine.read_bandwidth(nbytes=8 << 20, reps=3, threads=2)
    methods = ("kiln_stream", "kiln_stream_4k", "kiln_stream_ahead16", "kiln_stream_ahead64",
               "kiln_stream_4k_ahead16", "kiln_sum", "numpy_1thread", "numpy_2threads")
    for m in methods:
        assert r[m] > 0 and r[m + "_median"] > 0 and r[m] >= r[m + "_median"], m
    assert r["gbps"] == max(r[m] for m in methods) == r[r["source"]]
    assert r["gbps_median"] == r[r["source"] + "_median"]
    assert r["bytes"] == 8 << 20 and r["reps"] == 3 and "best" in r["statistic"]


def test_paired_probe_reads_its_buffer_and_reports_a_rate():
    p = machine.PairedProbe(nbytes=4 << 20, passes=2)
    assert p.x.nbytes == 4 << 20 and float(p.x.sum()) == p.x.size   # every page written before timing
    g = p.gbps()
    assert 0 < g < 10_000


def test_decode_table_reports_the_paired_bound_per_round():
    from bench import decode
    r = {"label": "m", "weight_bytes": 10**9, "kiln_prefill_ms": 5.0, "hf_prefill_ms": 9.0,
         "kiln_step_ms": 40.0, "hf_step_ms": 80.0, "tokens_match": True,
         # rounds at 40 ms beside 25 GB/s (bound 40 ms: 100 %), 50 ms beside 20 GB/s (100 %), 80 ms beside 25 (50 %)
         "kiln_step_ms_rounds": [40.0, 50.0, 80.0], "paired_gbps": [25.0, 20.0, 25.0]}
    out = decode.table([r], 50.0)
    row = out.splitlines()[-1].split("|")
    assert row[8].strip() == "50%"          # against the run's best probe: 20 ms bound / 40 ms
    assert row[10].strip() == "100% (20-25 GB/s)"
    assert decode.table([dict(r, kiln_step_ms_rounds=[], paired_gbps=[])], 50.0).splitlines()[-1].split("|")[10].strip() == "—"


def test_decode_times_several_prefills_and_reports_their_median(monkeypatch):
    from bench import decode
    ticks = iter([0.0, 3.0, 10.0, 11.0, 20.0, 22.0, 30.0, 40.0])  # prefills of 3, 1 and 2 s; then 10 s of decode
    monkeypatch.setattr(decode, "time", types.SimpleNamespace(perf_counter=lambda: next(ticks)))  # decode's clock only

    class Fake:
        def __init__(self):
            self.calls = []

        def prefill(self, ids):
            self.calls.append(("prefill", list(ids)))
            return np.array([0.0, 1.0])

        def step(self, tok):
            self.calls.append(("step", tok))
            return np.array([1.0, 0.0])

    dec = Fake()
    prefill_s, step_s, ids = decode.kiln_run(lambda: dec, [7, 8], 3, prefill_reps=3)
    assert prefill_s == 2.0 and step_s == 5.0 and ids == [1, 0, 0]
    assert [c[0] for c in dec.calls] == ["prefill"] * 3 + ["step"] * 2
