"""bench/machine.py's read-bandwidth probe: every method measured, the floor's figure named."""
from __future__ import annotations

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
