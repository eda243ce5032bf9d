"""Where the GGUF fixtures made by llama.cpp's quantizer live: ``shared/fixtures`` beside the
repository (as CI lays it out), else the workplace's copy."""
from pathlib import Path

_BESIDE = Path(__file__).resolve().parents[2] / "shared" / "fixtures"
FIXTURES_DIR = _BESIDE if _BESIDE.is_dir() else Path("/work/shared/fixtures")
