"""A fuzzer that stays: mutated .kiln files, GGUF files and feeds, each case in a worker subprocess.

    python -m tests.fuzz --seconds 100            # the CI run (.ci/run): fails on crashes and hangs
    python -m tests.fuzz --seconds 1800 --strict  # `make fuzz`: longer; --strict also fails on raw exceptions
    python -m tests.fuzz --replay kiln:1234       # re-run one case in this process, with its traceback

Outcomes per case: ok (ran), clean (a KilnError), raw (any other exception: a bug class to fix,
reported by type and the Kiln line that raised it), crash (the worker died from a signal) and
hang (no answer within --case-timeout). Cases are numbered: a case id (target:number) rebuilds
the same mutated input, so every finding can be replayed.
"""
