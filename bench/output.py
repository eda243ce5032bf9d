"""What every bench script writes besides its table: progress lines and the --json file."""
from __future__ import annotations

import json
import sys
from typing import Optional


def log(msg: str) -> None:
    """A progress line on stderr (stdout carries the table)."""
    print(msg, file=sys.stderr, flush=True)


def write_json(path: Optional[str], results, indent: int = 1) -> None:
    """``results`` as JSON at ``path`` (the script's --json); nothing when it is None."""
    if path:
        with open(path, "w") as f:
            json.dump(results, f, indent=indent)
