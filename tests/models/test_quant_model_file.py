"""`kiln compile --quantize FMT [--act MODE]` and a GGUF's own blocks: the saved .kiln file keeps the
weights in their storage type (same bytes, no fp32 copy) and generates the same tokens as the
in-memory quantized model."""
from __future__ import annotations

import numpy as np
import pytest

from kiln import cli
from kiln.models import model_file
from kiln.models.loading import load_model
from kiln.ops.quant import C_FORMATS
from tests.shared_fixtures import FIXTURES_DIR

PROMPTS = ["What is the capital of France?", "Hello world"]
NEW = 6


def stored(graph) -> dict:
    """stored-constant name → (storage, bytes) of a graph."""
    return {n: (t.storage, np.asarray(graph.constants[n]).tobytes()) for n, t in graph.tensors.items()
            if n in graph.constants and t.storage != "plain"}


def modes(graph) -> set:
    return {n.attrs.mode for n in graph.nodes if n.op == "qmatmul"}


def same_model(path, in_memory, storage: str, mode: str) -> None:
    got = load_model(path)
    g, want_g = got.cached_session.graph, in_memory.cached_session.graph
    blocks = stored(g)
    quantized = {s for s, _ in blocks.values()} & set(C_FORMATS)  # besides e.g. packed fp32 weights
    assert quantized == {storage}
    assert blocks == stored(want_g)           # the very bytes, in their storage type
    assert "dequantize" not in g.op_histogram()  # every stored weight is read by a fused kernel
    assert modes(g) == {mode}
    assert g.param_bytes() == want_g.param_bytes()
    for p in PROMPTS:
        assert got.generate(p, NEW, temperature=0).ids == in_memory.generate(p, NEW, temperature=0).ids


@pytest.mark.parametrize("fmt,storage,mode", [("int8", "i8_row", "exact"), ("q8_0", "q8_0", "int8"),
                                              ("q4_0", "q4_0", "exact")])
def test_compile_quantize_saves_blocks_and_same_tokens(hf_folder, tmp_path, fmt, storage, mode, capsys):
    folder = hf_folder("qwen3")
    out = tmp_path / f"{fmt}.kiln"
    assert cli.main(["compile", str(folder), "-o", str(out), "--quantize", fmt, "--act", mode,
                     "--max-len", "32"]) == 0
    assert f"wrote {out}" in capsys.readouterr().err
    _graph, lm, _meta = model_file.read(out)
    opts = lm["provenance"]["options"]
    assert (opts["quantize"], opts["act"]) == (fmt, mode)
    in_memory = load_model(folder, max_len=32, quantize=fmt, act=mode, compile_cache=False)
    same_model(out, in_memory, storage, mode)


def test_compile_gguf_keeps_its_blocks(tmp_path):
    path = FIXTURES_DIR / "tiny-llama-Q8_0.gguf"
    if not path.is_file():
        pytest.skip(f"needs {path}")
    out = tmp_path / "g.kiln"
    assert cli.main(["compile", str(path), "-o", str(out), "--max-len", "64", "-q"]) == 0
    in_memory = load_model(path, max_len=64, compile_cache=False)
    same_model(out, in_memory, "q8_0", "exact")
    # --dtype f32 dequantizes at load: nothing stored
    f32 = tmp_path / "f.kiln"
    assert cli.main(["compile", str(path), "-o", str(f32), "--max-len", "64", "--dtype", "f32", "-q"]) == 0
    assert not {s for s, _ in stored(load_model(f32).cached_session.graph).values()} & set(C_FORMATS)


def test_compile_quantize_bad_choice_is_refused(hf_folder, tmp_path):
    with pytest.raises(SystemExit) as e:  # argparse's choices
        cli.main(["compile", str(hf_folder("gpt2")), "-o", str(tmp_path / "x.kiln"), "--quantize", "q3_k"])
    assert e.value.code == 2


def test_weight_options_that_cannot_apply_are_refused_or_reported(hf_folder, tmp_path, capsys):
    folder = hf_folder("qwen3")
    # --act int8 where no matmul reads quantized weights: refused, not silently fp32
    assert cli.main(["compile", str(folder), "-o", str(tmp_path / "a.kiln"), "--act", "int8", "--max-len", "32",
                     "-q"]) == 2
    assert "--act int8 applies to matmuls over quantized weights" in capsys.readouterr().err
    # weights whose K is not whole blocks stay fp32, and compiling says how many
    out = tmp_path / "k.kiln"
    assert cli.main(["compile", str(folder), "-o", str(out), "--quantize", "q4_k", "--max-len", "32"]) == 0
    err = capsys.readouterr().err
    assert "--quantize q4_k:" in err and "keep fp32 weights" in err and "256-element block" in err
    # a compiled file's weights and activations are fixed: options for them are refused
    for opt in (["--act", "int8"], ["--quantize", "q8_0"], ["--dtype", "f32"]):
        assert cli.main(["generate", "Hello", "--model", str(out), "-n", "2", *opt]) == 2
        assert "is a compiled Kiln file" in capsys.readouterr().err


def test_truncated_gguf_is_named(tmp_path):
    path = FIXTURES_DIR / "tiny-llama-Q8_0.gguf"
    if not path.is_file():
        pytest.skip(f"needs {path}")
    from kiln.errors import FileFormatError
    from kiln.models.gguf import read_gguf
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(FileFormatError, match="truncated or damaged"):
        read_gguf(cut)
