"""Arena allocators: place buffers with known lifetimes at byte offsets in one arena.

Every allocator has the same signature, ``(buffers, alignment) -> offsets``, and is
registered by name, so memory ablations are a string in ``plan(allocator=...)``.
Two buffers may share bytes only if their lifetimes (inclusive step ranges) are
disjoint; ``Plan.verify`` checks the result independently of the allocator.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np

from ..errors import KilnError

ALIGNMENT = 64  # bytes: one cache line, enough for AVX-512 loads


@dataclass(frozen=True)
class Interval:
    """One arena buffer to place: ``size`` bytes live from step ``start`` to ``end`` inclusive."""
    size: int
    start: int
    end: int

    def overlaps_in_time(self, other: "Interval") -> bool:
        return self.start <= other.end and other.start <= self.end


Allocator = Callable[[Sequence[Interval], int], list[int]]
ALLOCATORS: dict[str, Allocator] = {}


def register_allocator(name: str) -> Callable[[Allocator], Allocator]:
    def deco(fn: Allocator) -> Allocator:
        if name in ALLOCATORS:
            raise KilnError(f"allocator {name!r} registered twice")
        ALLOCATORS[name] = fn
        return fn
    return deco


def get_allocator(name: str) -> Allocator:
    try:
        return ALLOCATORS[name]
    except KeyError:
        raise KilnError(f"unknown allocator {name!r}; known: {', '.join(sorted(ALLOCATORS))}") from None


def align(n: int, a: int = ALIGNMENT) -> int:
    return (n + a - 1) // a * a


def _gap_offsets(placed: list[tuple[int, int]], size: int, alignment: int) -> list[tuple[int, int]]:
    """Candidate (offset, gap size) pairs among `placed` (offset, end) ranges; last gap is unbounded."""
    out = []
    cursor = 0
    for off, end in sorted(placed):
        if off - cursor >= size:
            out.append((cursor, off - cursor))
        cursor = max(cursor, align(end, alignment))
    out.append((cursor, -1))  # -1: the open space above everything (used when nothing else fits)
    return out


def _greedy(buffers: Sequence[Interval], alignment: int, order: list[int], best: bool) -> list[int]:
    n = len(buffers)
    offsets = [0] * n
    # The time-overlap filter over every placed buffer is the planner's hot loop (O(n^2) pairs on a
    # model of a thousand buffers), so it runs on arrays; the gap search stays in Python.
    starts = np.fromiter((b.start for b in buffers), np.int64, n)
    ends = np.fromiter((b.end for b in buffers), np.int64, n)
    sizes = np.fromiter((b.size for b in buffers), np.int64, n)
    offs = np.zeros(n, np.int64)
    done = np.zeros(n, bool)
    for i in order:
        b = buffers[i]
        size = align(b.size, alignment)
        if size == 0:
            offsets[i] = 0
            continue
        # Only nonempty placed buffers alive at the same time constrain this one.
        near = np.flatnonzero(done & (starts <= b.end) & (ends >= b.start))
        lo = offs[near]
        placed = list(zip(lo.tolist(), (lo + sizes[near]).tolist()))
        gaps = _gap_offsets(placed, size, alignment)
        bounded = [g for g in gaps if g[1] >= 0]
        if best and bounded:
            offsets[i] = min(bounded, key=lambda g: (g[1], g[0]))[0]  # tightest gap that fits
        else:
            offsets[i] = gaps[0][0]                                   # lowest offset that fits
        offs[i] = offsets[i]
        done[i] = True
    return offsets


@register_allocator("best_fit")
def best_fit(buffers: Sequence[Interval], alignment: int) -> list[int]:
    """Largest buffers first, each into the tightest gap among time-overlapping ones (TFLite's
    'greedy by size'): big buffers settle low and small ones fill the holes between them."""
    order = sorted(range(len(buffers)), key=lambda i: (-buffers[i].size, buffers[i].start, i))
    return _greedy(buffers, alignment, order, best=True)


@register_allocator("first_fit")
def first_fit(buffers: Sequence[Interval], alignment: int) -> list[int]:
    """Largest buffers first, each at the lowest offset where it fits."""
    order = sorted(range(len(buffers)), key=lambda i: (-buffers[i].size, buffers[i].start, i))
    return _greedy(buffers, alignment, order, best=False)


@register_allocator("linear")
def linear(buffers: Sequence[Interval], alignment: int) -> list[int]:
    """In order of definition, lowest offset that fits (what a malloc-like free list would do)."""
    order = sorted(range(len(buffers)), key=lambda i: (buffers[i].start, i))
    return _greedy(buffers, alignment, order, best=False)


@register_allocator("no_reuse")
def no_reuse(buffers: Sequence[Interval], alignment: int) -> list[int]:
    """Every buffer gets its own bytes: the baseline the others are measured against."""
    offsets = []
    cursor = 0
    for b in buffers:
        offsets.append(cursor)
        cursor += align(b.size, alignment)
    return offsets
