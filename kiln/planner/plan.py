"""The Plan: execution order, where every tensor lives, and what memory that costs.

Slots are the buffers an executor binds pointers to: slot 0 is the arena (all
activations and scratch), then one slot per graph input, graph output, weight
and state tensor. A Placement is (slot, byte offset, byte size); executors need
nothing else to find a tensor's bytes. Every slot names its memory space (HOST or
DEVICE, as ExecuTorch's memory ids do): an executor allocates the slots of its own
space and refuses a plan made for another. Kernel scratch comes from the backend
that will run the plan (``scratch_rule``), since only it knows what its kernels need.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Optional

from ..errors import ValidationError
from ..ir.graph import ACT, CONST, STATE, Graph, Node
from ..ir.validate import validate
from . import arena, order as order_mod
from .kinds import SlotKind, StepKind
from .lifetimes import share
from .state import extra_deps, writes_state


HOST, DEVICE = "host", "device"
MEMORY_SPACES = (HOST, DEVICE)


@dataclass(frozen=True)
class Slot:
    kind: SlotKind
    name: str      # the tensor owning it ("" for the arena)
    nbytes: int
    memory: str = HOST   # the memory space the executor allocates it in


@dataclass(frozen=True)
class Placement:
    slot: int
    offset: int    # bytes from the start of the slot
    nbytes: int


@dataclass(frozen=True)
class Step:
    node: int                          # index into plan.graph.nodes
    kind: StepKind
    scratch: Optional[Placement] = None


@dataclass(frozen=True)
class BufferRecord:
    offset: int
    size: int
    start: int
    end: int
    members: tuple[str, ...]           # tensors living in it (empty for scratch)
    scratch_step: Optional[int] = None


@dataclass(frozen=True)
class PlanStats:
    arena_bytes: int
    no_reuse_bytes: int        # arena a bump allocator needs without aliasing, in-place or reuse
    alias_saved_bytes: int     # bytes of outputs that alias their input instead of being copied
    inplace_saved_bytes: int   # bytes of outputs written over their input
    scratch_bytes: int         # total kernel scratch (each live for one step)
    live_bytes: tuple[int, ...]  # arena bytes live at each step (aligned sizes)

    @property
    def peak_live_bytes(self) -> int:
        return max(self.live_bytes, default=0)

    def __str__(self) -> str:
        return (f"arena {fmt_bytes(self.arena_bytes)} (no reuse {fmt_bytes(self.no_reuse_bytes)}, peak live "
                f"{fmt_bytes(self.peak_live_bytes)}); aliasing saved {fmt_bytes(self.alias_saved_bytes)}, "
                f"in-place {fmt_bytes(self.inplace_saved_bytes)}")


def fmt_bytes(n: int) -> str:
    for unit, scale in (("MiB", 2 ** 20), ("KiB", 2 ** 10)):
        if n >= scale:
            return f"{n / scale:.2f} {unit}"
    return f"{n} B"


@dataclass(frozen=True)
class Plan:
    graph: Graph                        # the graph the steps index (outputs normalized, see _normalize)
    steps: tuple[Step, ...]
    slots: tuple[Slot, ...]
    placements: dict[str, Placement]    # every tensor the steps touch
    lifetimes: dict[str, tuple[int, int]]  # activation -> (def step, last use step)
    buffers: tuple[BufferRecord, ...]
    stats: PlanStats
    options: dict = field(default_factory=dict)
    source: Optional[Graph] = field(default=None, repr=False, compare=False)  # the graph given to plan()

    @property
    def order(self) -> tuple[int, ...]:
        return tuple(s.node for s in self.steps)

    @property
    def arena_bytes(self) -> int:
        return self.stats.arena_bytes

    def check_memory(self, memory: str, who: str) -> None:
        """Raise unless every slot lives in ``memory`` (``who`` names the executor)."""
        bad = sorted({s.memory for s in self.slots} - {memory})
        if bad:
            raise ValidationError(f"{who} allocates {memory} memory, but this plan places slots in {', '.join(bad)}"
                                  f" (plan it with memory={memory!r})")

    def slot_of(self, kind: SlotKind, name: str) -> int:
        for i, s in enumerate(self.slots):
            if s.kind == kind and s.name == name:
                return i
        raise KeyError((kind, name))

    def verify(self) -> None:
        from .verify import verify
        verify(self)

    def graph_to_run(self, graph: Graph) -> Graph:
        """The graph executors should run: the plan's own, after checking `graph` is the one planned."""
        if graph is not self.graph and graph is not self.source:
            raise ValidationError("this plan was made for a different graph")
        return self.graph

    def summary(self) -> str:
        kinds = [s.kind for s in self.steps]
        return (f"Plan: {len(self.steps)} steps ({kinds.count('alias')} aliases, {kinds.count('inplace')} in place), "
                f"{len(self.buffers)} arena buffers; {self.stats}")


def plan(graph: Graph, *, order: str = "memory", allocator: str = "best_fit",
         inplace: bool = True, alias: bool = True, check: bool = True,
         scratch_rule: Optional[Callable[[Graph, Node], int]] = None, memory: str = HOST) -> Plan:
    """Plan a static, executable graph. ``order``: "memory" (best of the registered orders),
    or a registered order name ("given", "greedy"). ``allocator``: a registered allocator.
    ``scratch_rule(graph, node) -> bytes``: the kernel scratch of the backend that will run the
    plan (``kiln.backends.kernels.Backend.scratch_rule``; None: no scratch). ``memory``: the
    memory space (HOST or DEVICE) of every slot."""
    validate(graph, static=True, executable=True)
    if memory not in MEMORY_SPACES:
        raise ValidationError(f"memory must be one of {', '.join(MEMORY_SPACES)}, got {memory!r}")
    alloc = arena.get_allocator(allocator)
    g = _normalize(graph)
    if order == "memory":
        names = list(order_mod.ORDERS)
    elif order in order_mod.ORDERS:
        names = [order]
    else:
        raise ValidationError(f"unknown plan order {order!r}; known: memory, {', '.join(order_mod.ORDERS)}")
    deps = extra_deps(g)
    if scratch_rule is not None:  # asked once per node, not once per order tried
        scratch_rule = _memo_scratch(scratch_rule)
    best: Optional[Plan] = None
    tried: set[tuple[int, ...]] = set()
    for name in names:  # "given" first: on ties the graph's own order wins
        steps = order_mod.ORDERS[name](g, alias, deps)
        if tuple(steps) in tried:
            continue
        tried.add(tuple(steps))
        order_mod.check_order(g, steps, deps)
        p = _build(g, graph, steps, alloc, alias=alias, inplace=inplace, scratch_rule=scratch_rule, memory=memory,
                   options={"order": name, "allocator": allocator, "inplace": inplace, "alias": alias,
                            "memory": memory})
        if best is None or p.stats.arena_bytes < best.stats.arena_bytes:
            best = p
    assert best is not None
    if check:
        best.verify()
    return best


def _memo_scratch(rule: Callable[[Graph, Node], int]) -> Callable[[Graph, Node], int]:
    memo: dict[int, int] = {}

    def memoized(graph: Graph, node: Node) -> int:
        key = id(node)  # the nodes of one normalized graph, alive for the whole plan() call
        if key not in memo:
            memo[key] = rule(graph, node)
        return memo[key]
    return memoized


def _normalize(graph: Graph) -> Graph:
    """Give every graph output its own producer node: an output that is an input, weight or
    state tensor, a state written in place, or that is listed twice, becomes a `copy` node's
    output. Then each output owns one external slot that the executor allocates per run."""
    seen: set[str] = set()
    bad = []
    for i, o in enumerate(graph.outputs):
        p = graph.producer(o)
        if graph.tensors[o].kind != ACT or o in seen or (p is not None and writes_state(graph, p) is not None):
            bad.append(i)
        seen.add(o)
    if not bad:
        return graph
    g = graph.copy()
    for i in bad:
        g.outputs[i] = g.add_node("copy", [g.outputs[i]], name=f"{g.outputs[i]}_out")
    return g


def _build(g: Graph, source: Graph, steps: list[int], alloc, *, alias: bool, inplace: bool, scratch_rule,
           memory: str, options: dict) -> Plan:
    sh = share(g, steps, alias=alias, inplace=inplace, scratch_rule=scratch_rule)
    intervals = [arena.Interval(b.size, b.start, b.end) for b in sh.buffers]
    offsets = alloc(intervals, arena.ALIGNMENT)
    arena_bytes = max((arena.align(o + b.size) for o, b in zip(offsets, sh.buffers)), default=0)

    slots = make_slots(g, arena_bytes, memory)
    slot_index = {s.name: i for i, s in enumerate(slots) if i}

    placements: dict[str, Placement] = {}
    for name, loc in sh.loc.items():
        nbytes = int(g.tensors[name].nbytes)
        if loc.in_arena:
            placements[name] = Placement(0, offsets[loc.buffer] + loc.offset, nbytes)
        else:
            placements[name] = Placement(slot_index[loc.external], loc.offset, nbytes)

    plan_steps = []
    for s, idx in enumerate(steps):
        sb = sh.scratch[s]
        scratch = Placement(0, offsets[sb], sh.buffers[sb].size) if sb is not None else None
        plan_steps.append(Step(idx, sh.kinds[s], scratch))
    buffers = tuple(BufferRecord(offsets[i], b.size, b.start, b.end, tuple(b.members), b.scratch_step)
                    for i, b in enumerate(sh.buffers))
    return Plan(g, tuple(plan_steps), tuple(slots), placements, sh.lifetimes, buffers,
                _stats(g, steps, sh, arena_bytes), options, source)


def make_slots(g: Graph, arena_bytes: int, memory: str) -> list[Slot]:
    """Slot 0 the arena, then one slot per input, output, weight and state tensor, in that order."""
    slots = [Slot(SlotKind.ARENA, "", arena_bytes, memory)]
    groups = ((SlotKind.INPUT, list(g.inputs)), (SlotKind.OUTPUT, list(g.outputs)),
              (SlotKind.CONST, [n for n, t in g.tensors.items() if t.kind == CONST]),
              (SlotKind.STATE, [n for n, t in g.tensors.items() if t.kind == STATE]))
    for kind, names in groups:
        for n in names:
            slots.append(Slot(kind, n, int(g.tensors[n].nbytes), memory))
    return slots


def _stats(g: Graph, steps: list[int], sh, arena_bytes: int) -> PlanStats:
    scratch = [sh.buffers[b].size for b in sh.scratch if b is not None]
    return plan_stats(g, steps, sh.kinds, sh.buffers, scratch, arena_bytes)


def plan_stats(g: Graph, steps: list[int], kinds, buffers, scratch_sizes: list[int], arena_bytes: int) -> PlanStats:
    """The stats of a plan from its order, step kinds, arena buffers (anything with size, start and
    end) and scratch sizes: derived, so a stored plan's stats are recomputed, never read."""
    outputs = set(g.outputs)
    no_reuse = sum(arena.align(int(g.tensors[g.nodes[i].output].nbytes)) for i in steps
                   if g.nodes[i].output not in outputs)
    scratch = sum(scratch_sizes)
    no_reuse += sum(arena.align(n) for n in scratch_sizes)
    saved = {StepKind.ALIAS: 0, StepKind.INPLACE: 0}
    for s, idx in enumerate(steps):
        if kinds[s] != StepKind.KERNEL:
            saved[kinds[s]] += int(g.tensors[g.nodes[idx].output].nbytes)
    delta = [0] * (len(steps) + 2)
    for b in buffers:  # live bytes per step via a difference array
        delta[b.start] += arena.align(b.size)
        delta[b.end + 1] -= arena.align(b.size)
    live, acc = [], 0
    for s in range(len(steps)):
        acc += delta[s]
        live.append(acc)
    return PlanStats(arena_bytes, no_reuse, saved[StepKind.ALIAS], saved[StepKind.INPLACE], scratch, tuple(live))
