"""bench/generation.py and bench/quant_accuracy.py: the parts that run without timing anything
(llama-bench's JSON read back, the table, a missing quantizer skipped, the perplexity formula,
the prefill sampler's averaging)."""
from __future__ import annotations

import json
import stat
import time

import numpy as np
import pytest

from bench import generation, quant_accuracy


def fake_tool(tmp_path, name: str, stdout: str):
    exe = tmp_path / name
    exe.write_text(f"#!/bin/sh\necho \"$@\" > {tmp_path / (name + '.args')}\ncat <<'JSON'\n{stdout}\nJSON\n")
    exe.chmod(exe.stat().st_mode | stat.S_IEXEC)
    return exe


def test_llama_bench_json_becomes_rows(tmp_path):
    tests = [{"n_prompt": 16, "n_gen": 0, "avg_ts": 400.0}, {"n_prompt": 64, "n_gen": 0, "avg_ts": 600.0},
             {"n_prompt": 0, "n_gen": 8, "avg_ts": 130.0}]
    exe = fake_tool(tmp_path, "llama-bench", json.dumps(tests))
    model = tmp_path / "m.gguf"
    model.write_bytes(b"")
    rows = generation.llama_rows(str(exe), {"q4_1": model}, [16, 64], 8, 2, 3)
    assert rows == [{"runtime": "llama.cpp", "weights": "Q4_1", "mode": "int8 (its kernels)",
                     "prefill_tok_s": {16: 400.0, 64: 600.0}, "decode_tok_s": 130.0}]
    args = (tmp_path / "llama-bench.args").read_text().split()
    assert args[args.index("-p") + 1] == "16,64" and args[args.index("-t") + 1] == "3"


def test_table_compares_kiln_with_llama_cpp_per_format():
    rows = [{"runtime": "kiln", "weights": "Q4_1", "mode": "exact", "prefill_tok_s": {16: 500.0}, "decode_tok_s": 150.0},
            {"runtime": "llama.cpp", "weights": "Q4_1", "mode": "int8 (its kernels)", "prefill_tok_s": {16: 300.0},
             "decode_tok_s": 120.0},
            {"runtime": "kiln", "weights": "int8 per-channel", "mode": "exact", "prefill_tok_s": {16: 1.0},
             "decode_tok_s": 2.0}]
    md = generation.markdown(rows, [16], {"threads": 2, "new_tokens": 8, "rounds": 1, "when": "now", "cpu": "x"})
    lines = md.splitlines()
    assert "| kiln | Q4_1 | exact | 150.0 | 1.25× | 500 |" in lines
    assert "| kiln | int8 per-channel | exact | 2.0 |  | 1 |" in lines  # no llama.cpp counterpart


def test_without_llama_quantize_only_the_shipped_file(tmp_path, monkeypatch, capsys):
    from kiln.models.default import default_model_path
    try:
        src = default_model_path()
    except Exception:  # noqa: BLE001 - the default model package is optional here
        pytest.skip("the default model is not installed")
    monkeypatch.setenv("KILN_CACHE_DIR", str(tmp_path))  # no requantized files made earlier
    files = generation.gguf_files(["q4_1", "q8_0", "int8"], quantize_exe=None)
    assert files == {"q4_1": src}
    assert "skipping Q8_0: no llama-quantize" in capsys.readouterr().err


def test_perplexity_formula():
    vocab, ids = 7, [1, 4, 2, 6]
    uniform = np.zeros((len(ids), vocab))
    assert quant_accuracy.perplexity(uniform, ids) == pytest.approx(vocab)
    sure = np.full((len(ids), vocab), -50.0)
    for t, nxt in enumerate(ids[1:]):
        sure[t, nxt] = 50.0
    assert quant_accuracy.perplexity(sure, ids) == pytest.approx(1.0)


def test_kl_divergence_formula():
    base = np.log(np.array([[0.5, 0.25, 0.25], [0.1, 0.1, 0.8]]))
    assert quant_accuracy.kl_divergence(base + 3.0, base) == pytest.approx(0.0, abs=1e-12)  # shift-invariant
    other = np.log(np.array([[0.25, 0.25, 0.5], [0.1, 0.1, 0.8]]))
    want = (0.5 * np.log(2) + 0.25 * np.log(0.5)) / 2                     # the first row's KL, averaged
    assert quant_accuracy.kl_divergence(other, base) == pytest.approx(want)


def test_int8_ablation_rows_carry_their_config():
    from kiln.passes.quantize import QuantizeConfig
    got = dict(quant_accuracy.rows("x.gguf", ["int8", "int8-max-head"], ["exact"]))
    assert got["--quantize int8, exact"] == {"dtype": "f32", "quantize": "int8", "act": "exact"}
    cfg = got["int8-max-head (ablation), exact"]["quantize"]
    assert cfg == QuantizeConfig("int8", "exact", scales="max", keep_tied=True) and cfg.tied_kept
    assert not QuantizeConfig("int8").tied_kept and QuantizeConfig("q8_0").tied_kept


def test_default_text_is_prose_or_its_absence_is_named(tmp_path, monkeypatch):
    if not quant_accuracy.JARGON.is_file():  # the Debian package is not on every machine: say how to get it
        with pytest.raises(SystemExit, match="jargon.txt.gz is missing: `apt-get install jargon-text`"):
            quant_accuracy.default_text()
        return
    text = quant_accuracy.default_text()
    assert text.startswith("“The word {hack} doesn't really have 69 different meanings”") and "\n" not in text
    monkeypatch.setattr(quant_accuracy, "JARGON", tmp_path / "absent.txt.gz")
    with pytest.raises(SystemExit, match="absent.txt.gz is missing"):
        quant_accuracy.default_text()


def test_a_tool_killed_by_a_signal_says_so(tmp_path):
    import subprocess
    done = subprocess.run(["sh", "-c", "kill -ILL $$"], capture_output=True, text=True)
    assert generation.failure(done).startswith("killed by SIGILL (built for another CPU?")
    done = subprocess.run(["sh", "-c", "echo bad model >&2; exit 3"], capture_output=True, text=True)
    assert generation.failure(done) == "bad model"


def test_per_call_averages_back_to_back_calls_over_the_sample_time():
    calls = []
    t = generation.per_call(lambda: calls.append(time.sleep(0.01)), min_seconds=0.05)
    assert len(calls) >= 5 and 0.009 <= t <= 0.05
    one = []
    assert generation.per_call(lambda: one.append(time.sleep(0.02)), min_seconds=0.0) >= 0.02 and len(one) == 1
