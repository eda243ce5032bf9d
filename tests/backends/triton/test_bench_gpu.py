"""bench/gpu.py: refuses cleanly without a GPU or under the interpreter; its table format."""
import pytest
import torch

from bench import gpu


def test_refuses_without_gpu(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(SystemExit, match="needs a CUDA GPU"):
        gpu.main([])


def test_refuses_under_the_interpreter(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    with pytest.raises(SystemExit, match="TRITON_INTERPRET"):
        gpu.main([])


def test_markdown_table():
    env = {"gpu": "G", "driver": "1", "cuda": "12", "torch": "2", "triton": "3"}
    rows = [{"model": "M", "prefill_ms": {16: {"kiln-triton": 1.0, "kiln-triton+cudagraph": 0.5, "torch-eager": 2.0,
                                               "torch.compile": "failed: X"}},
             "decode_tok_s": {"kiln-triton": 100.0, "kiln-triton+cudagraph": 200.0, "torch-eager": 50.0,
                              "torch.compile": 75.5}}]
    md = gpu.markdown(env, rows)
    assert "| M | prefill 16 | 1.00 ms | 0.50 ms | 2.00 ms | failed: X |" in md
    assert "| M | decode | 100.00 tok/s | 200.00 tok/s | 50.00 tok/s | 75.50 tok/s |" in md


def test_attempt_reports_failures():
    assert gpu.attempt(lambda: 1.5) == 1.5
    assert gpu.attempt(lambda: 1 / 0).startswith("failed: ZeroDivisionError")
