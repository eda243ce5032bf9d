"""`kiln cache list|clear|dir`: the compile cache (kiln/cache.py) of compiled source models."""
from __future__ import annotations

import argparse
import sys
import time
from typing import Any


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    p = subparsers.add_parser("cache", help="list or clear the compile cache",
                              description="The compile cache holds one compiled .kiln file per source model, "
                                          "Kiln version, options and CPU. Location: $KILN_CACHE_DIR, else "
                                          "$XDG_CACHE_HOME/kiln, else ~/.cache/kiln.")
    p.add_argument("action", choices=("list", "clear", "dir"),
                   help="list: entries with source and size; clear: remove them all; dir: print the location")
    p.set_defaults(fn=run)
    return p


def _describe(path) -> str:
    import json
    import struct
    size = path.stat().st_size
    try:  # the header only: listing must not map every entry's weights
        with open(path, "rb") as f:
            (n,) = struct.unpack("<Q", f.read(8))
            meta = json.loads(f.read(n))["__metadata__"]
        prov = json.loads(meta["kiln.extra"])["kiln.lm"]["provenance"]
        what = (f"{prov.get('source')} (Kiln {prov.get('kiln_version')}, options "
                f"{json.dumps(prov.get('options'), sort_keys=True)}, made {prov.get('created')})")
    except (OSError, ValueError, KeyError, TypeError, struct.error):
        what = "(unreadable: will be rebuilt on next use)"
    return f"{path.name}  {size / 2**20:8.1f} MiB  {what}"


def run(args: argparse.Namespace) -> int:
    from . import cache
    out = sys.stdout
    if args.action == "dir":
        print(cache.cache_dir(), file=out)
        return 0
    if args.action == "list":
        entries = list(cache.entries())
        print(f"{cache.models_dir()}: {len(entries)} entr{'y' if len(entries) == 1 else 'ies'}, "
              f"{sum(p.stat().st_size for p in entries) / 2**20:.1f} MiB", file=out)
        for p in entries:
            print(f"  {_describe(p)}", file=out)
        return 0
    t0 = time.perf_counter()
    n, freed = cache.clear()
    print(f"removed {n} file{'s' * (n != 1)} ({freed / 2**20:.1f} MiB) from {cache.cache_dir()} "
          f"in {time.perf_counter() - t0:.2f} s", file=out)
    return 0
