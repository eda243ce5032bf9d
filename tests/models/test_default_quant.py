"""The default model (SmolLM2-135M-Instruct, Q4_1 GGUF) run in its own blocks (slow)."""
import numpy as np
import pytest

pytestmark = pytest.mark.slow


def test_default_model_native_q4_1_answers_and_matches_fp32():
    from kiln.models.loading import load_model
    nat = load_model("default", max_len=128)
    assert any(t.storage == "q4_1" for t in nat.session.graph.tensors.values())
    answer = nat.generate("What is the capital of France?", 16, temperature=0).text.strip()
    assert answer.startswith("The capital of France is Paris"), answer
    f32 = load_model("default", max_len=128, dtype="f32")
    ids = nat.encode("What is the capital of France?")
    a, b = np.asarray(nat.logits(ids)), np.asarray(f32.logits(ids))
    assert np.abs(a - b).max() <= 1e-3 * np.abs(b).max()
