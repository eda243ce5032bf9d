"""Memory planning: execution order, lifetimes, aliasing, in-place, and one arena.

    p = plan(graph)                      # order="memory", allocator="best_fit"
    p.verify(); print(p.summary())
"""
from .arena import ALIGNMENT, ALLOCATORS, Interval, get_allocator, register_allocator  # noqa: F401
from .order import ORDERS, register_order  # noqa: F401
from .kinds import Loc, SlotKind, StepKind  # noqa: F401
from .plan import DEVICE, HOST, BufferRecord, Placement, Plan, PlanStats, Slot, Step, plan  # noqa: F401
