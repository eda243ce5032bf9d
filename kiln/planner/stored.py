"""Plans stored with a model: a plan as JSON, and the checks that make a loaded one safe to run.

A compiled model file keeps the plans it was compiled with (kiln/models/model_file.py stores the
decode plan), so a warm start does not plan them again. Nothing read back is trusted: `load_plan`
rebuilds the Plan over the graph it is loaded for, recomputes what can be derived (slots from the
graph, lifetimes from the order, stats from the buffers), asks the backend for each step's scratch
and runs ``Plan.verify`` (kiln/planner/verify.py: the order respects every dependency and state
write, every placement lies in its slot with its tensor's size, aliases and in-place writes are
legal, no two live arena ranges overlap). A stored plan that fails those checks is damage
(FileFormatError); one made for other kernels or another memory space is simply not used
(``None``: plan afresh). The executor still checks every (slot, offset, size) it hands to C.

    {"format": "kiln-plan/1", "options": {...plan options...}, "arena_bytes": N,
     "steps": [[node, kind, scratch offset, scratch bytes] | [node, kind], ...],
     "placements": {tensor: [slot, offset, nbytes]},
     "buffers": [[offset, size, start, end, [members], scratch step or null], ...]}
"""
from __future__ import annotations

from typing import Any, Callable, Optional

from ..errors import FileFormatError, ValidationError
from ..ir.graph import Graph, Node
from ..ir.validate import validate
from .kinds import StepKind
from .lifetimes import lifetimes
from .plan import BufferRecord, Placement, Plan, Step, _normalize, make_slots, plan_stats

FORMAT = "kiln-plan/1"
_KINDS = {k.value: k for k in StepKind}


def binding_key(binding: dict) -> str:
    """The name a plan is stored under: "s0=1" (sorted "sym=value" pairs, comma-joined; "" if static)."""
    return ",".join(f"{k}={int(v)}" for k, v in sorted(binding.items()))


def dump_plan(plan: Plan) -> dict:
    """``plan`` as a JSON-able dict (see the module docstring)."""
    steps = [[s.node, s.kind.value] + ([s.scratch.offset, s.scratch.nbytes] if s.scratch is not None else [])
             for s in plan.steps]
    return {"format": FORMAT, "options": dict(plan.options), "arena_bytes": plan.arena_bytes, "steps": steps,
            "placements": {n: [p.slot, p.offset, p.nbytes] for n, p in plan.placements.items()},
            "buffers": [[b.offset, b.size, b.start, b.end, list(b.members), b.scratch_step] for b in plan.buffers]}


def load_plan(graph: Graph, data: Any, *, scratch_rule: Optional[Callable[[Graph, Node], int]],
              memory: str) -> Optional[Plan]:
    """The stored plan ``data`` over ``graph`` (static), checked; None when it was made for another
    memory space or other kernel scratch (the caller plans afresh).

    Raises FileFormatError when ``data`` is malformed or is not a valid plan of ``graph``."""
    validate(graph, static=True, executable=True)
    try:
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise ValueError(f"format {data.get('format') if isinstance(data, dict) else type(data).__name__!r}, "
                             f"expected {FORMAT!r}")
        options = data["options"]
        if not isinstance(options, dict):
            raise ValueError("options is not a dict")
        if options.get("memory") != memory:
            return None
        g = _normalize(graph)
        steps = [_step(s) for s in _list(data["steps"], "steps")]
        if len(steps) != len(g.nodes):
            raise ValueError(f"{len(steps)} steps for a graph of {len(g.nodes)} nodes")
        for s in steps:
            if not 0 <= s.node < len(g.nodes):
                raise ValueError(f"step names node {s.node}, the graph has {len(g.nodes)}")
            want = int(scratch_rule(g, g.nodes[s.node])) if scratch_rule is not None else 0
            if (s.scratch.nbytes if s.scratch is not None else 0) != want:
                return None  # another backend's scratch: not this plan
        placements = {_str(n): Placement(*_ints(p, 3, "placement")) for n, p in _dict(data["placements"]).items()}
        missing = set(placements) - set(g.tensors)
        if missing:
            raise ValueError(f"placement of unknown tensor {sorted(missing)[0]!r}")
        buffers = tuple(_buffer(b) for b in _list(data["buffers"], "buffers"))
        arena_bytes = _int(data["arena_bytes"], "arena_bytes")
        order = [s.node for s in steps]
        kinds = [s.kind for s in steps]
        scratch = [s.scratch.nbytes for s in steps if s.scratch is not None]
        p = Plan(g, tuple(steps), tuple(make_slots(g, arena_bytes, memory)), placements, lifetimes(g, order),
                 buffers, plan_stats(g, order, kinds, buffers, scratch, arena_bytes), dict(options), graph)
        p.verify()
    except (KeyError, TypeError, ValueError, ValidationError) as e:
        what = f"missing field {e}" if isinstance(e, KeyError) else str(e)
        raise FileFormatError(f"stored plan: {what}") from None
    return p


def _step(s: Any) -> Step:
    s = _list(s, "step")
    if len(s) not in (2, 4) or not isinstance(s[1], str) or s[1] not in _KINDS:
        raise ValueError(f"malformed step {s!r}")
    scratch = Placement(0, _int(s[2], "scratch offset"), _int(s[3], "scratch bytes")) if len(s) == 4 else None
    return Step(_int(s[0], "step node"), _KINDS[s[1]], scratch)


def _buffer(b: Any) -> BufferRecord:
    b = _list(b, "buffer")
    if len(b) != 6:
        raise ValueError(f"malformed buffer {b!r}")
    members = tuple(_str(m) for m in _list(b[4], "buffer members"))
    return BufferRecord(*_ints(b[:4], 4, "buffer"), members, None if b[5] is None else _int(b[5], "scratch step"))


def _int(x: Any, what: str) -> int:
    if not isinstance(x, int) or isinstance(x, bool) or x < 0:
        raise ValueError(f"{what} must be a non-negative integer, got {x!r}")
    return x


def _ints(xs: Any, n: int, what: str) -> list[int]:
    xs = _list(xs, what)
    if len(xs) != n:
        raise ValueError(f"{what} must hold {n} integers, got {xs!r}")
    return [_int(x, what) for x in xs]


def _list(x: Any, what: str) -> list:
    if not isinstance(x, list):
        raise ValueError(f"{what} must be a list, got {type(x).__name__}")
    return x


def _dict(x: Any) -> dict:
    if not isinstance(x, dict):
        raise ValueError(f"placements must be a dict, got {type(x).__name__}")
    return x


def _str(x: Any) -> str:
    if not isinstance(x, str):
        raise ValueError(f"tensor name must be a string, got {x!r}")
    return x
