"""A fuzzer that stays: mutated .kiln files, GGUF files and feeds, each case in a worker subprocess.

    python -m tests.fuzz --seconds 100            # the CI run: fails on crashes, hangs, raw exceptions, wrong outputs
    python -m tests.fuzz --seconds 1800           # `make fuzz`: longer (--allow-raw: fail on crashes and hangs only)
    python -m tests.fuzz --replay kiln:1234       # re-run one case in this process, with its traceback

Outcomes per case: ok (ran), clean (a KilnError), raw (any other exception: a bug class to fix,
reported by type and the Kiln line that raised it), crash (the worker died from a signal) and
hang (no answer within --case-timeout). Cases are numbered: a case id (target:number) rebuilds
the same mutated input, so every finding can be replayed.
"""
