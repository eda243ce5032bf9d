"""The compile cache: one model file (`.kiln`) per source model, Kiln version, options and CPU.

    $KILN_CACHE_DIR, else $XDG_CACHE_HOME/kiln, else ~/.cache/kiln
      models/<key>.kiln      a model file (kiln/models/model_file.py), named by its key
      hashes.json            source hashes memoized by (path, size, mtime, inode)

The key is a SHA-256 over the source's content hash (the file's bytes, or every file of a folder),
Kiln's version and a stamp of its installed code (`code_stamp`), the compile options and the CPU features the kernels were built for, so a changed
source, another Kiln or other options never hit an old entry. Entries are written to a temporary
file in the same directory and renamed into place (`os.replace` is atomic on one filesystem): two
first runs at once both finish with a whole entry, and a run killed mid-write leaves only a temp
file, which `kiln cache clear` removes. Nothing here imports torch.
"""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Callable, Iterator, Mapping, Optional

from .errors import KilnError

SUFFIX = ".kiln"
_HASH_MEMO = "hashes.json"
# /proc/cpuinfo flags the kernels (csrc, built with -march=native) and the BLAS choose code paths by.
KERNEL_FLAGS = ("sse4_2", "avx", "avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512vl", "avx512dq",
                "avx512_vnni", "avx512_bf16", "amx_tile")


def cache_dir() -> Path:
    """Where compiled models are kept (not created here)."""
    env = os.environ.get("KILN_CACHE_DIR")
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg).expanduser() if xdg else Path.home() / ".cache") / "kiln"


def models_dir() -> Path:
    return cache_dir() / "models"


# -- content hashes ------------------------------------------------------------------
def _file_digest(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def _source_files(path: Path) -> list[Path]:
    if path.is_dir():
        return sorted(p for p in path.rglob("*") if p.is_file() and not any(
            part.startswith(".") for part in p.relative_to(path).parts))
    return [path]


def source_hash(path: str | os.PathLike) -> str:
    """SHA-256 of a file's bytes, or of a folder's files (relative names and contents, in sorted order).

    Digests are memoized per file by (real path, size, mtime_ns, inode) in the cache's hashes.json,
    so a warm start does not re-read a large GGUF; writing a file changes its mtime (and usually its
    size), and replacing it changes its inode, so the next run re-hashes it. What this cannot see, as
    make and ccache's stat checks cannot: a rewrite that restores the old mtime on the same inode with
    the same size (e.g. ``touch -d`` after editing). ``kiln cache clear`` drops the memo.
    """
    root = Path(path)
    if not root.exists():
        raise KilnError(f"{str(root)!r} does not exist")
    memo_path = cache_dir() / _HASH_MEMO
    try:
        memo = json.loads(memo_path.read_text())
        memo = memo if isinstance(memo, dict) else {}
    except (OSError, ValueError):
        memo = {}
    changed = False
    total = hashlib.sha256()
    for f in _source_files(root):
        st = f.stat()
        stamp = f"{f.resolve()}|{st.st_size}|{st.st_mtime_ns}|{st.st_ino}"
        digest = memo.get(stamp)
        if not isinstance(digest, str):
            digest, changed = _file_digest(f), True
            memo[stamp] = digest
        rel = f.name if f == root else str(f.relative_to(root))
        total.update(f"{rel}\0{digest}\n".encode())
    if changed:
        try:
            write_atomic(memo_path, lambda tmp: Path(tmp).write_text(json.dumps(memo)))
        except OSError:
            pass  # a read-only cache still works; it only hashes again next time
    return total.hexdigest()


# -- the CPU the kernels run on ----------------------------------------------------------
def cpu_features() -> str:
    """What the kernels were built for: the C library's ISA (when it loads) and the CPU's relevant flags."""
    parts = []
    try:
        from .backends import clib
        parts.append(clib.lib().kiln_build_info().decode().split()[0])
    except (KilnError, OSError, AttributeError):
        parts.append("no-clib")
    if os.environ.get("KILN_FORCE_GENERIC") == "1":
        parts.append("forced-generic")
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((line.split(":", 1)[1].split() for line in f if line.startswith("flags")), [])
    except OSError:
        flags = []
    parts.append(",".join(x for x in KERNEL_FLAGS if x in flags) or "unknown-flags")
    return " ".join(parts)


def code_stamp(root: Optional[Path] = None) -> str:
    """A digest of Kiln's own code as installed: every module and kernel library of the package by
    relative name, size and mtime (stat only, ~1 ms). The version string alone does not change while
    Kiln is worked on (an editable install, a git pull): without this, an entry compiled by older code
    would be served after the code that compiles (passes, kernels, loaders) changed. ``root``: another
    package folder (tests)."""
    root = Path(__file__).resolve().parent if root is None else Path(root)
    h = hashlib.sha256()
    for f in sorted(p for p in root.rglob("*") if p.suffix in (".py", ".so") and "__pycache__" not in p.parts):
        st = f.stat()
        h.update(f"{f.relative_to(root)}|{st.st_size}|{st.st_mtime_ns}\n".encode())
    return h.hexdigest()[:16]


def entry_key(source_digest: str, version: str, options: Mapping[str, object], cpu: str) -> str:
    """The entry's name: changes with the source, Kiln's version and code (code_stamp), the options and the CPU."""
    blob = json.dumps({"source": source_digest, "kiln": version, "code": code_stamp(), "options": dict(options),
                       "cpu": cpu}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:32]


def entry_path(key: str) -> Path:
    return models_dir() / f"{key}{SUFFIX}"


# -- atomic writes ------------------------------------------------------------------------
def write_atomic(path: str | os.PathLike, write: Callable[[str], None]) -> None:
    """``write(tmp)`` writes a temporary file next to ``path``; it then replaces ``path`` in one step.

    On any failure (or KeyboardInterrupt) the temporary file is removed and ``path`` is untouched."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


# -- listing and clearing ------------------------------------------------------------------
def entries() -> Iterator[Path]:
    d = models_dir()
    if d.is_dir():
        yield from sorted(d.glob(f"*{SUFFIX}"))


def clear() -> tuple[int, int]:
    """Remove every entry, leftover temp file and the hash memo: (files removed, bytes freed)."""
    n = freed = 0
    d = cache_dir()
    targets = list(models_dir().glob("*")) if models_dir().is_dir() else []
    targets += [d / _HASH_MEMO] + (list(d.glob(f".{_HASH_MEMO}.*")) if d.is_dir() else [])
    for p in targets:
        try:
            size = p.stat().st_size
            p.unlink()
        except (FileNotFoundError, IsADirectoryError):
            continue
        n, freed = n + 1, freed + size
    return n, freed


def remove(path: Optional[Path]) -> None:
    if path is not None:
        try:
            path.unlink()
        except FileNotFoundError:
            pass
