"""Plan.verify: an independent check of a plan, from its placements and order alone.

It does not trust the planner's buffers or lifetimes: it recomputes lifetimes
from the order, rebuilds the sharing classes from the steps (an alias or in-place
step joins its output to input 0's class; every kernel output and every scratch
starts a class), and checks that
  * every placement lies within its slot, and arena buffers start 64-byte aligned;
  * an alias sits exactly where the op's alias_offset says, inside its source;
  * an in-place write happens only when everything sharing those bytes is dead after
    the step and no other input of the node reads them (for state writes: everything
    viewing the state's slot);
  * only graph outputs are written outside the arena;
  * no two classes that are live at the same step overlap in the arena.
"""
from __future__ import annotations

from ..errors import ValidationError
from ..ir.graph import ACT
from ..ops import registry
from .arena import ALIGNMENT
from .kinds import SlotKind, StepKind
from .lifetimes import alias_bytes, lifetimes
from .order import check_order
from .state import extra_deps, writes_state


def verify(plan) -> None:
    g = plan.graph
    order = [s.node for s in plan.steps]
    check_order(g, order, extra_deps(g))
    life = lifetimes(g, order)
    last_read: dict[str, int] = {}          # every tensor, external ones included
    for step, idx in enumerate(order):
        for i in g.nodes[idx].inputs:
            last_read[i] = step
    if dict(plan.lifetimes) != life:
        bad = next(k for k in set(life) | set(plan.lifetimes) if life.get(k) != plan.lifetimes.get(k))
        raise ValidationError(f"plan lifetime of {bad!r} is {plan.lifetimes.get(bad)}, the order gives {life.get(bad)}")
    arena_bytes = plan.slots[0].nbytes
    if plan.slots[0].kind != SlotKind.ARENA or arena_bytes != plan.stats.arena_bytes:
        raise ValidationError("slot 0 must be the arena, sized as the plan's stats say")
    outputs = set(g.outputs)
    own_slot = {}
    for i, s in enumerate(plan.slots[1:], start=1):
        t = g.tensors.get(s.name)
        if t is None or int(t.nbytes) != s.nbytes:
            raise ValidationError(f"slot {i} ({s.kind} {s.name!r}) does not match its tensor's size")
        own_slot[s.name] = i

    for name, p in plan.placements.items():
        t = g.tensors[name]
        if p.nbytes != int(t.nbytes):
            raise ValidationError(f"tensor {name!r} is placed with {p.nbytes} bytes, it has {int(t.nbytes)}")
        if not 0 <= p.slot < len(plan.slots):
            raise ValidationError(f"tensor {name!r} is placed in slot {p.slot}, which does not exist")
        if p.offset < 0 or p.offset + p.nbytes > plan.slots[p.slot].nbytes:
            raise ValidationError(f"tensor {name!r} at [{p.offset}, {p.offset + p.nbytes}) lies outside "
                                  f"slot {p.slot} ({plan.slots[p.slot].nbytes} bytes)")
        if (t.kind != ACT or name in outputs) and (p.slot != own_slot.get(name) or p.offset != 0):
            raise ValidationError(f"{t.kind if t.kind != ACT else 'output'} tensor {name!r} must sit at the "
                                  "start of its own slot")

    parent: dict[str, str] = {}

    def find(x: str) -> str:
        while parent.get(x, x) != x:
            x = parent[x]
        return x

    members: dict[str, list[str]] = {}     # class root -> members defined so far
    scratch_classes: list[tuple[int, int, int, int]] = []  # (offset, end, step, step)
    for step, s in enumerate(plan.steps):
        node = g.nodes[s.node]
        where = f"step {step}: {node.output} = {node.op}(...)"
        for i in node.inputs:
            if i not in plan.placements:
                raise ValidationError(f"{where}: input {i!r} has no placement")
        out = plan.placements.get(node.output)
        if out is None:
            raise ValidationError(f"{where}: output has no placement")
        src = plan.placements[node.inputs[0]] if node.inputs else None
        opdef = registry.get(node.op)
        if s.kind == StepKind.ALIAS:
            off = alias_bytes(g, node)
            if off is None or node.output in outputs:
                raise ValidationError(f"{where}: output may not alias its input here")
            if (out.slot, out.offset) != (src.slot, src.offset + off):
                raise ValidationError(f"{where}: alias placed at slot {out.slot}+{out.offset}, the op says "
                                      f"slot {src.slot}+{src.offset + off}")
        elif s.kind == StepKind.INPLACE:
            a, b = g.tensors[node.inputs[0]], g.tensors[node.output]
            if not opdef.has(registry.INPLACE) or a.dtype != b.dtype or tuple(a.shape) != tuple(b.shape):
                raise ValidationError(f"{where}: may not run in place over {node.inputs[0]!r}")
            if out != src:
                raise ValidationError(f"{where}: in-place output must sit exactly on input 0")
            if out.slot != 0:
                if writes_state(g, node) is None or plan.slots[out.slot].kind != "state":
                    raise ValidationError(f"{where}: writes in place outside the arena")
                for m, p in plan.placements.items():  # everything viewing the state's old bytes
                    defined = life[m][0] if m in life else -1
                    if p.slot == out.slot and defined < step and last_read.get(m, -1) > step:
                        raise ValidationError(f"{where}: overwrites state while {m!r} is still read "
                                              f"at step {last_read[m]}")
            else:
                cls = find(node.inputs[0])
                for m in members[cls]:
                    if life[m][1] > step:
                        raise ValidationError(f"{where}: writes over {node.inputs[0]!r} while {m!r}, sharing "
                                              f"its bytes, is still read at step {life[m][1]}")
                for j, other in enumerate(node.inputs[1:], start=1):
                    if other in parent and find(other) == cls and not (
                            other == node.inputs[0] and opdef.has(registry.ELEMENTWISE)):
                        raise ValidationError(f"{where}: writes over input 0 while input {j} ({other!r}) reads it")
        elif s.kind != StepKind.KERNEL:
            raise ValidationError(f"{where}: unknown step kind {s.kind!r}")
        if s.kind == StepKind.KERNEL and out.slot != 0 and node.output not in outputs:
            raise ValidationError(f"{where}: writes outside the arena but is not a graph output")
        if s.kind != StepKind.KERNEL and src.slot == 0:
            root = find(node.inputs[0])
            parent[node.output] = root
            members[root].append(node.output)
        elif out.slot == 0:
            parent[node.output] = node.output
            members[node.output] = [node.output]
            if out.offset % ALIGNMENT:
                raise ValidationError(f"{where}: arena offset {out.offset} is not {ALIGNMENT}-byte aligned")
        if s.scratch is not None:
            sc = s.scratch
            if sc.slot != 0 or sc.offset % ALIGNMENT or sc.offset < 0 or sc.offset + sc.nbytes > arena_bytes:
                raise ValidationError(f"{where}: scratch [{sc.offset}, {sc.offset + sc.nbytes}) is misplaced")
            scratch_classes.append((sc.offset, sc.offset + sc.nbytes, step, step))

    # Each arena class covers the union of its members' bytes over the union of their lifetimes.
    classes = list(scratch_classes)
    for root, ms in members.items():
        lo = min(plan.placements[m].offset for m in ms)
        hi = max(plan.placements[m].offset + plan.placements[m].nbytes for m in ms)
        classes.append((lo, hi, min(life[m][0] for m in ms), max(life[m][1] for m in ms)))
    _check_disjoint([c for c in classes if c[1] > c[0]])


def _check_disjoint(classes: list[tuple[int, int, int, int]]) -> None:
    """No two (lo, hi, start, end) classes overlap both in bytes and in time (sweep over time)."""
    classes.sort(key=lambda c: c[2])
    active: list[tuple[int, int, int, int]] = []
    for c in classes:
        active = [a for a in active if a[3] >= c[2]]
        for a in active:
            if a[0] < c[1] and c[0] < a[1]:
                raise ValidationError(f"arena bytes [{c[0]}, {c[1]}) live over steps {c[2]}..{c[3]} overlap "
                                      f"[{a[0]}, {a[1]}) live over steps {a[2]}..{a[3]}")
        active.append(c)

