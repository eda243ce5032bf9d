"""The default model (SmolLM2-135M-Instruct, Q4_1 GGUF) run in its own blocks (slow).

Prints the numbers the issue's goal names (`pytest -m slow -s`): the answer, and the max logit
error relative to max |logit| against the same weights dequantized to fp32."""
import numpy as np
import pytest

pytestmark = pytest.mark.slow
QUESTION = "What is the capital of France?"


def test_default_model_native_q4_1_answers_and_matches_fp32():
    from kiln.models.loading import load_model
    nat = load_model("default", max_len=128, compile_cache=False)
    g = nat.cached_session.graph
    assert {t.storage for t in g.tensors.values() if t.storage != "plain"} == {"q4_1", "q8_0"}
    assert "dequantize" not in g.op_histogram() and g.op_histogram().get("qembedding") == 1
    answer = nat.generate(QUESTION, 16, temperature=0).text.strip()
    f32 = load_model("default", max_len=128, dtype="f32", compile_cache=False)
    ids = nat.encode(QUESTION)
    a, b = np.asarray(nat.logits(ids)), np.asarray(f32.logits(ids))
    rel = float(np.abs(a - b).max() / np.abs(b).max())
    top2 = np.sort(b)[-2:]
    print(f"\nnative Q4_1 (exact): answer {answer!r}; max |logit - fp32| / max |logit| = {rel:.2e} "
          f"(max |logit| {np.abs(b).max():.2f}; fp32 top-2 margin {top2[1] - top2[0]:.3f}); "
          f"weight bytes {g.param_bytes() / 2**20:.1f} MiB")
    assert answer.startswith("The capital of France is Paris"), answer
    assert a.argmax() == b.argmax()
    assert rel <= 1e-3
