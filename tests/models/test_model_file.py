"""Language-model files: compile → .kiln → generate in a fresh process without torch or transformers,
with the same tokens as the in-memory session; tokenizer, defaults and provenance travel in the file."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from kiln.backends import kernels
from kiln.errors import FileFormatError, KilnError
from kiln.models import model_file
from kiln.models.loading import compile_language_model, load_model
from kiln.models.text_tokenizer import KilnTokenizer
from tests.shared_fixtures import FIXTURES_DIR

ROOT = Path(__file__).resolve().parents[2]
GGUF = FIXTURES_DIR / "tiny-llama-F32.gguf"
PROMPTS = ["What is the capital of France?", "Hello world"]
NEW = 8

# Runs in a fresh interpreter: loads each file, generates greedily, and proves torch never came in.
CHILD = """
import json, sys
from kiln.models.loading import load_model
out = {}
for path, prompts, cache in json.loads(sys.argv[1]):
    lm = load_model(path, cache=cache)
    out[path + str(cache)] = [lm.generate(p, %d, temperature=0).ids for p in prompts]
out["torch"] = "torch" in sys.modules
out["transformers"] = "transformers" in sys.modules
print(json.dumps(out))
""" % NEW


def run_child(jobs: list) -> dict:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    done = subprocess.run([sys.executable, "-c", CHILD, json.dumps(jobs)], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


def compile_to(spec, path: Path, executor: str, max_len: int = 48):
    lm, meta = compile_language_model(spec, executor=executor, max_len=max_len, provenance_info=model_file.provenance(
        source=str(spec), source_sha256="test", options={"max_len": max_len}, cpu="test"))
    assert meta is not None
    model_file.save(path, lm.cached_session, meta)
    return lm


def sources(hf_folder) -> dict:
    out = {arch: hf_folder(arch) for arch in ("gpt2", "qwen3", "llama")}
    if GGUF.is_file():
        out["gguf"] = GGUF
    return out


def test_file_generates_the_same_tokens_without_torch(hf_folder, executor, tmp_path):
    expected, jobs = {}, []
    for name, spec in sources(hf_folder).items():
        path = tmp_path / f"{name}.kiln"
        lm = compile_to(spec, path, executor)
        for cache in (True, False):  # the no-cache path re-prefills the same graph from position 0
            expected[str(path) + str(cache)] = [lm.generate(p, NEW, temperature=0).ids for p in PROMPTS]
        jobs += [[str(path), PROMPTS, True], [str(path), PROMPTS, False]]
    got = run_child(jobs)
    assert got.pop("torch") is False and got.pop("transformers") is False
    assert got == expected
    for path, _prompts, _cache in jobs:  # cached and re-prefilled decoding agree
        assert expected[path + "True"] == expected[path + "False"]


def test_cli_generate_from_a_file_imports_no_torch(hf_folder, executor, tmp_path):
    path = tmp_path / "m.kiln"
    compile_to(hf_folder("qwen3"), path, executor)
    code = ("import sys, kiln.cli; rc = kiln.cli.main(['generate', 'Hi', '--model', sys.argv[1], '-n', '3']); "
            "print('torch' in sys.modules, 'transformers' in sys.modules, rc, file=sys.stderr)")
    done = subprocess.run([sys.executable, "-c", code, str(path)], cwd=ROOT, capture_output=True, text=True,
                          timeout=120, env=dict(os.environ, PYTHONPATH=str(ROOT)))
    assert done.returncode == 0, done.stderr
    assert done.stderr.strip().splitlines()[-1] == "False False 0"
    assert "time to first token" in done.stderr and "Warning" not in done.stderr


def test_tokenizer_matches_transformers(tiny_tokenizer):
    ours = KilnTokenizer.from_transformers(tiny_tokenizer)
    again = KilnTokenizer.from_json(json.loads(json.dumps(ours.to_json())))
    for text in PROMPTS + ["cafés in Zürich, 2024!", "<|im_start|>user\nHi<|im_end|>\n", ""]:
        for specials in (True, False):
            want = tiny_tokenizer(text, add_special_tokens=specials)["input_ids"]
            assert ours(text, add_special_tokens=specials)["input_ids"] == want == again.encode(text, specials)
        ids = tiny_tokenizer(text)["input_ids"]
        assert again.decode(ids) == tiny_tokenizer.decode(ids, skip_special_tokens=True,
                                                          clean_up_tokenization_spaces=False)
    assert again.special_tokens_map == tiny_tokenizer.special_tokens_map
    assert again.eos_token_id == tiny_tokenizer.eos_token_id and len(again) == len(tiny_tokenizer)
    from kiln.models.tokenizer import encode_prompt
    assert encode_prompt(again, "Hi there") == encode_prompt(tiny_tokenizer, "Hi there")  # chat template


def test_generation_config_defaults_travel(hf_folder, executor, tmp_path):
    folder = tmp_path / "with-defaults"
    shutil.copytree(hf_folder("llama"), folder)
    (folder / "generation_config.json").write_text(json.dumps(
        {"do_sample": True, "temperature": 0.7, "top_k": 5, "top_p": 0.9, "eos_token_id": [2, 1]}))
    path = tmp_path / "d.kiln"
    in_memory = compile_to(folder, path, executor)
    lm = load_model(path)
    assert lm.sampling == in_memory.sampling
    assert (lm.sampling.temperature, lm.sampling.top_k, lm.sampling.top_p) == (0.7, 5, 0.9)
    assert lm.eos_ids[:2] == (2, 1)
    assert lm.generate("Paris", 4, seed=3).ids == in_memory.generate("Paris", 4, seed=3).ids


def test_inspect_shows_everything(hf_folder, executor, tmp_path, capsys):
    from kiln import cli
    path = tmp_path / "i.kiln"
    compile_to(hf_folder("gpt2"), path, executor)
    assert cli.main(["inspect", str(path)]) == 0
    out = capsys.readouterr().out
    for what in ("kiln-lm/1", "source sha256", "Kiln 0.1.0", "options", "CPU features", "eos ids", "generation",
                 "tokenizer     BPE", "chat template", "KV cache 48 positions", "cached_attention"):
        assert what in out, what


def test_kiln_compile_command(executor, tmp_path, capsys):
    if not GGUF.is_file():
        pytest.skip("needs /work/shared/fixtures/tiny-llama-F32.gguf")
    from kiln import cli
    out = tmp_path / "c.kiln"
    assert cli.main(["compile", str(GGUF), "-o", str(out), "--max-len", "32", "--threads", "2"]) == 0
    assert f"wrote {out}" in capsys.readouterr().err
    _graph, lm, _meta = model_file.read(out)
    assert lm["defaults"]["threads"] == 2 and lm["provenance"]["options"]["max_len"] == 32
    assert lm["provenance"]["source_sha256"] != "test" and lm["provenance"]["cpu"]
    assert load_model(out).max_len == 32
    assert cli.main(["compile", str(GGUF), "-o", str(tmp_path / "x.bin")]) == 2


def test_bad_files_are_clear_errors(tmp_path, executor, hf_folder):
    import kiln
    import numpy as np
    plain = tmp_path / "plain.kiln"
    sess = compile_to(hf_folder("gpt2"), tmp_path / "lm.kiln", executor).cached_session
    kiln.Session(sess.graph).save(plain)  # a graph file without language-model metadata
    with pytest.raises(FileFormatError, match="not a language-model file"):
        load_model(plain)
    broken = tmp_path / "broken.kiln"
    broken.write_bytes((tmp_path / "lm.kiln").read_bytes()[:1000])
    with pytest.raises(FileFormatError):
        load_model(broken)
    with pytest.raises(KilnError, match="does not exist"):
        load_model(tmp_path / "missing.kiln")
    with pytest.raises(KilnError, match="holds no PyTorch model"):
        load_model(tmp_path / "lm.kiln", keep_torch=True)
    assert np.isfinite(load_model(tmp_path / "lm.kiln").logits([1, 2, 3])).all()


def test_file_stores_the_decode_plan(hf_folder, executor, tmp_path, monkeypatch):
    import kiln.planner
    from kiln.ir import serialize
    from kiln.ir.resolve import resolve
    from kiln.planner.stored import binding_key
    path = tmp_path / "m.kiln"
    compile_to(hf_folder("qwen3"), path, executor)
    graph, extra = serialize.load(path)
    binding = model_file.decode_binding(graph)
    plans = extra[model_file.PLANS_KEY]["plans"]
    if executor == "reference":  # the unplanned reference executor makes no plans to store
        assert plans == {}
        return
    assert list(plans) == [binding_key(binding)]
    fresh = kiln.planner.plan(resolve(graph, binding), scratch_rule=kernels.get("c").scratch_rule)

    def refuse(*_a, **_k):
        raise AssertionError("planned although the file holds the plan")
    monkeypatch.setattr(kiln.planner, "plan", refuse)
    lm = load_model(path)  # the decode plan comes from the file
    stored = lm.cached_session.plan(**binding)
    for field in ("steps", "slots", "placements", "lifetimes", "buffers", "stats", "options"):
        assert getattr(stored, field) == getattr(fresh, field), field
    monkeypatch.undo()
    assert lm.generate("Hi", 4, temperature=0).ids == load_model(path, executor="interpreted").generate(
        "Hi", 4, temperature=0).ids


def test_damaged_stored_plan_is_refused(hf_folder, executor, tmp_path):
    from kiln.ir import serialize
    if executor == "reference":
        pytest.skip("the reference executor stores no plans")
    path = tmp_path / "m.kiln"
    compile_to(hf_folder("gpt2"), path, executor)
    graph, extra = serialize.load(path)
    (stored,) = extra[model_file.PLANS_KEY]["plans"].values()
    stored["steps"].reverse()  # an order that runs nodes before their inputs
    serialize.save(graph, path, extra=extra)
    with pytest.raises(FileFormatError, match="stored plan.*recompile"):
        load_model(path)
    extra[model_file.PLANS_KEY] = {"format": "kiln-plans/1", "plans": []}
    serialize.save(graph, path, extra=extra)
    with pytest.raises(FileFormatError, match="kiln.plans"):
        load_model(path)
    del extra[model_file.PLANS_KEY]  # a file without stored plans plans at load
    serialize.save(graph, path, extra=extra)
    assert load_model(path).generate("Hi", 2, temperature=0).ids


@pytest.mark.slow
def test_default_model_file_without_torch(executor, tmp_path):
    path = tmp_path / "default.kiln"
    lm = compile_to("default", path, executor, max_len=256)
    expected = {str(path) + "True": [lm.generate(p, NEW, temperature=0).ids for p in PROMPTS]}
    got = run_child([[str(path), PROMPTS, True]])
    assert got.pop("torch") is False and got.pop("transformers") is False
    assert got == expected


def test_file_changed_in_place_is_refused(hf_folder, executor, tmp_path):
    path = tmp_path / "m.kiln"
    compile_to(hf_folder("gpt2"), path, executor)
    lm = load_model(path)
    lm.generate("Hi", 2)
    with open(path, "r+b") as f:  # truncated under the mapping: would be a SIGBUS without the check
        f.truncate(os.path.getsize(path) - 4096)
    with pytest.raises(FileFormatError, match="changed after"):
        lm.generate("Hi", 2)
