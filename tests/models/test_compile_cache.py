"""The compile cache: miss then hit, stale and damaged entries rebuilt, atomic writes under concurrency, clear."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from kiln import cache, cli
from kiln.ir import serialize
from kiln.models import loading, model_file
from tests.shared_fixtures import FIXTURES_DIR

ROOT = Path(__file__).resolve().parents[2]
GGUF = FIXTURES_DIR / "tiny-llama-F32.gguf"
pytestmark = pytest.mark.skipif(not GGUF.is_file(), reason="needs /work/shared/fixtures/tiny-llama-F32.gguf")


@pytest.fixture
def cache_dir(tmp_path, monkeypatch):
    d = tmp_path / "cache"
    monkeypatch.setenv("KILN_CACHE_DIR", str(d))
    return d


def load(messages=None, **kw):
    return loading.load_model(GGUF, max_len=32, progress=(messages.append if messages is not None else None), **kw)


def no_compiling(monkeypatch):
    def refuse(*_a, **_k):
        raise AssertionError("compiled although the cache holds the model")
    monkeypatch.setattr(loading, "compile_language_model", refuse)


def test_dir_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("KILN_CACHE_DIR", str(tmp_path / "a"))
    assert cache.cache_dir() == tmp_path / "a"
    monkeypatch.delenv("KILN_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache.cache_dir() == tmp_path / "xdg" / "kiln"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert cache.cache_dir() == Path.home() / ".cache" / "kiln"


def test_miss_then_hit(cache_dir, executor, monkeypatch):
    messages: list = []
    first = load(messages, executor=executor)
    assert any("saving to the compile cache" in m for m in messages)
    entries = list(cache.entries())
    assert len(entries) == 1 and first.timings["save"] >= 0
    messages.clear()
    no_compiling(monkeypatch)
    second = load(messages, executor=executor)
    assert any("from the compile cache" in m for m in messages)
    assert second.generate("Hello", 6, temperature=0).ids == first.generate("Hello", 6, temperature=0).ids
    assert second.provenance["cache_key"] == entries[0].stem
    # other options, or a changed source, are other entries
    monkeypatch.undo()
    monkeypatch.setenv("KILN_CACHE_DIR", str(cache_dir))
    loading.load_model(GGUF, max_len=24, executor=executor)
    assert len(list(cache.entries())) == 2


def test_source_hash_sees_changes(cache_dir, tmp_path, monkeypatch):
    reads: list = []
    digest = cache._file_digest
    monkeypatch.setattr(cache, "_file_digest", lambda p: reads.append(p) or digest(p))
    f = tmp_path / "m.gguf"
    f.write_bytes(b"one")
    h1 = cache.source_hash(f)
    assert cache.source_hash(f) == h1 and len(reads) == 1  # memoized: a warm start does not read the source
    st = f.stat()
    f.write_bytes(b"two")  # same size; a new mtime
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns + 1))
    assert cache.source_hash(f) != h1 and len(reads) == 2
    (cache.cache_dir() / "hashes.json").write_text("{not json")  # a damaged memo only costs a re-hash
    assert cache.source_hash(f) == cache.source_hash(f) and len(reads) == 3
    folder = tmp_path / "folder"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    h2 = cache.source_hash(folder)
    (folder / "model.safetensors").write_bytes(b"w")
    assert cache.source_hash(folder) != h2


def test_other_kiln_version_misses(cache_dir, executor, monkeypatch):
    load(executor=executor)
    monkeypatch.setattr(model_file, "kiln_version", lambda: "99.0")
    messages: list = []
    lm = load(messages, executor=executor)
    assert any("saving to the compile cache" in m for m in messages)
    assert lm.provenance["kiln_version"] == "99.0" and len(list(cache.entries())) == 2


def test_changed_kiln_code_misses(cache_dir, executor, monkeypatch):
    """Same version string, other code (an editable install after a pull): a new entry, not the old one."""
    load(executor=executor)
    monkeypatch.setattr(cache, "code_stamp", lambda root=None: "other code")
    messages: list = []
    load(messages, executor=executor)
    assert any("saving to the compile cache" in m for m in messages) and len(list(cache.entries())) == 2


def test_code_stamp_sees_edits(tmp_path):
    pkg = tmp_path / "pkg"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "a.py").write_text("x = 1\n")
    (pkg / "sub" / "_k.so").write_bytes(b"elf")
    (pkg / "notes.txt").write_text("ignored")
    first = cache.code_stamp(pkg)
    assert cache.code_stamp(pkg) == first
    (pkg / "notes.txt").write_text("still ignored")
    assert cache.code_stamp(pkg) == first
    (pkg / "a.py").write_text("x = 22\n")
    second = cache.code_stamp(pkg)
    assert second != first
    st = (pkg / "sub" / "_k.so").stat()
    os.utime(pkg / "sub" / "_k.so", ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    assert cache.code_stamp(pkg) != second
    assert cache.code_stamp() == cache.code_stamp()  # the installed package itself


def test_stale_entry_is_reported_and_rebuilt(cache_dir, executor):
    load(executor=executor)
    (entry,) = cache.entries()
    graph, extra = serialize.load(entry)
    extra["kiln.lm"]["provenance"]["kiln_version"] = "0.0.1"  # as if an older Kiln had written it
    serialize.save(graph, entry, extra=extra)
    messages: list = []
    lm = load(messages, executor=executor)
    assert [m for m in messages if "unusable" in m and "stale" in m]
    assert model_file.read(entry)[1]["provenance"]["kiln_version"] == model_file.kiln_version()
    assert lm.generate("Hi", 3, temperature=0).ids


@pytest.mark.parametrize("damage", ["truncate", "garbage", "format", "plan"])
def test_damaged_entry_is_reported_and_rebuilt(cache_dir, executor, damage):
    good = load(executor=executor).generate("Hi", 4, temperature=0).ids
    (entry,) = cache.entries()
    if damage == "truncate":
        entry.write_bytes(entry.read_bytes()[: entry.stat().st_size // 2])
    elif damage == "garbage":
        entry.write_bytes(b"\x00" * 64)
    elif damage == "format":
        graph, extra = serialize.load(entry)
        extra["kiln.lm"]["format"] = "kiln-lm/0"
        serialize.save(graph, entry, extra=extra)
    else:  # the stored decode plan places a tensor outside the arena
        graph, extra = serialize.load(entry)
        (stored,) = extra["kiln.plans"]["plans"].values()
        name = next(n for n, p in stored["placements"].items() if p[0] == 0)
        stored["placements"][name][1] = stored["arena_bytes"]
        serialize.save(graph, entry, extra=extra)
    messages: list = []
    lm = load(messages, executor=executor)
    assert len([m for m in messages if "unusable, rebuilding" in m]) == 1
    assert lm.generate("Hi", 4, temperature=0).ids == good
    model_file.read(entry)  # whole again


def test_killed_writer_leaves_no_entry(tmp_path):
    target = tmp_path / "models" / "k.kiln"

    def dies(tmp):
        Path(tmp).write_bytes(b"half a model")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        cache.write_atomic(target, dies)
    assert not target.exists() and list(target.parent.iterdir()) == []


def test_concurrent_first_runs(cache_dir):
    """Two processes miss at once: both generate, one whole entry remains, no temp files."""
    env = dict(os.environ, KILN_CACHE_DIR=str(cache_dir), PYTHONPATH=str(ROOT))
    cmd = [sys.executable, "-m", "kiln.cli", "generate", "Hi", "--model", str(GGUF), "-n", "3", "--max-len", "32"]
    procs = [subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    outs = [p.communicate(timeout=600) for p in procs]
    for p, (_out, err) in zip(procs, outs):
        assert p.returncode == 0, err
        assert "Warning" not in err, err
    files = sorted(os.listdir(cache_dir / "models"))
    assert len(files) == 1 and files[0].endswith(".kiln"), files
    model_file.read(cache_dir / "models" / files[0])
    assert outs[0][0] == outs[1][0]


def test_cache_commands(cache_dir, executor, capsys):
    load(executor=executor)
    assert cli.main(["cache", "list"]) == 0
    out = capsys.readouterr().out
    assert "1 entry" in out and str(GGUF) in out and "max_len" in out
    assert cli.main(["cache", "dir"]) == 0
    assert capsys.readouterr().out.strip() == str(cache_dir)
    assert cli.main(["cache", "clear"]) == 0
    assert "removed" in capsys.readouterr().out and list(cache.entries()) == []
    assert cli.main(["cache", "list"]) == 0 and "0 entries" in capsys.readouterr().out


def test_no_compile_cache_stores_nothing(cache_dir, executor, capsys):
    assert cli.main(["generate", "Hi", "--model", str(GGUF), "-n", "2", "--max-len", "32", "--executor", executor,
                     "--no-compile-cache", "--quiet"]) == 0
    out, err = capsys.readouterr()
    assert err == "" and out.endswith("\n")
    assert list(cache.entries()) == []


def test_cache_hit_imports_no_torch(cache_dir, executor):
    load(executor=executor)
    code = ("import sys, kiln.cli; rc = kiln.cli.main(['generate', 'Hi', '--model', sys.argv[1], '-n', '3', "
            "'--max-len', '32']); print('torch' in sys.modules, 'transformers' in sys.modules, rc, file=sys.stderr)")
    done = subprocess.run([sys.executable, "-c", code, str(GGUF)], cwd=ROOT, capture_output=True, text=True,
                          timeout=120, env=dict(os.environ, KILN_CACHE_DIR=str(cache_dir), PYTHONPATH=str(ROOT)))
    assert done.returncode == 0, done.stderr
    assert "from the compile cache" in done.stderr
    assert done.stderr.strip().splitlines()[-1] == "False False 0"


def test_progress_bar_lines_and_quiet():
    import io

    from kiln.cli_progress import Progress
    for bar, quiet in ((True, False), (False, False), (True, True)):
        out = io.StringIO()
        p = Progress(out, bar=bar, quiet=quiet)
        p.begin(3)
        for step in ("reading", "exporting", "saving"):
            p(step)
        p.end()
        text = out.getvalue()
        if quiet:
            assert text == ""
        elif bar:
            assert "3/3" in text and "100%" in text and "saving" in text
        else:
            assert [line.split("] ")[1] for line in text.splitlines()] == ["reading", "exporting", "saving"]
