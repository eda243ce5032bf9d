"""bench/attention.py runs end to end (tiny sizes): every column present, results checked."""
from __future__ import annotations

from bench import attention


def test_attention_bench_times_blocked_rows_and_gemm():
    res = attention.run([40, 130], ["gpt2", "qwen3"], threads=1, reps=1)
    assert [(r["model"], r["seq"]) for r in res["rows"]] == [("gpt2", 40), ("gpt2", 130), ("qwen3", 40), ("qwen3", 130)]
    for r in res["rows"]:
        assert r["rel_err"] < 1e-5
        assert all(r[x] > 0 for x in ("blocked", "rows", "gemm", "blocked_of_gemm"))
    assert attention.table(res).count("| qwen3 (16/8x128) |") == 2
