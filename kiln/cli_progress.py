"""Progress on stderr as people expect it: a tqdm bar on a terminal, plain timed lines in a pipe, nothing
with --quiet.

Loaders call a progress object with one message per step (``say("reading x.gguf")``). A long
multi-step job (compiling a model) first calls ``begin(total)``: on a terminal its steps then advance
one bar, whose description is the current step; ``end()`` closes it. Outside such a job, and always
in a pipe, a message is one line ``[  5.3s] message``.
"""
from __future__ import annotations

import time
from typing import Any, Optional, TextIO


class Progress:
    def __init__(self, out: TextIO, *, quiet: bool = False, bar: Optional[bool] = None):
        self.out, self.quiet, self.t0 = out, quiet, time.perf_counter()
        isatty = getattr(out, "isatty", None)
        self.use_bar = bool(isatty and isatty()) if bar is None else bar
        self._bar: Any = None

    def begin(self, total: int) -> None:
        """A job of ``total`` steps starts: the next ``total`` messages advance one bar (on a terminal)."""
        if self.quiet or not self.use_bar:
            return
        from tqdm import tqdm
        self.end()
        self._bar = tqdm(total=total, file=self.out, unit="step", leave=True, dynamic_ncols=True,
                         bar_format="{desc:<60.60} {percentage:3.0f}%|{bar}| {n_fmt}/{total_fmt} [{elapsed}]")

    def __call__(self, message: str) -> None:
        if self.quiet:
            return
        if self._bar is not None:
            if self._bar.n > 0 or self._bar.desc:  # the previous step is done
                self._bar.update(1)
            self._bar.set_description_str(message)
            return
        print(f"[{time.perf_counter() - self.t0:6.1f}s] {message}", file=self.out, flush=True)

    def end(self) -> None:
        """The job is done: fill and close the bar."""
        if self._bar is not None:
            self._bar.update(self._bar.total - self._bar.n)
            self._bar.set_description_str("done")
            self._bar.close()
            self._bar = None
