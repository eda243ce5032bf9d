"""The planner's small vocabulary: what a step does, what a slot holds, where a tensor's bytes are."""
from __future__ import annotations

import enum
from dataclasses import dataclass, replace
from typing import Optional


class StepKind(str, enum.Enum):
    """What a plan step does (a str, so it prints and compares as its value)."""
    KERNEL = "kernel"      # runs the op's kernel into its own bytes
    ALIAS = "alias"        # no work: the output is a view of input 0's bytes
    INPLACE = "inplace"    # runs the kernel, the output written over input 0

    def __str__(self) -> str:
        return self.value


class SlotKind(str, enum.Enum):
    """What a slot (a buffer the executor binds a pointer to) holds."""
    ARENA = "arena"        # slot 0: every activation and all scratch
    INPUT = "input"
    OUTPUT = "output"
    CONST = "const"
    STATE = "state"

    def __str__(self) -> str:
        return self.value


@dataclass(frozen=True)
class Loc:
    """Where a tensor's bytes are during sharing: arena buffer ``buffer``, or the external
    slot owned by tensor ``external`` (an input, output, weight or state), at ``offset`` bytes."""
    buffer: Optional[int] = None
    external: Optional[str] = None
    offset: int = 0

    @property
    def in_arena(self) -> bool:
        return self.buffer is not None

    def same_bytes_owner(self, other: "Loc") -> bool:
        return self.buffer == other.buffer and self.external == other.external

    def shifted(self, nbytes: int) -> "Loc":
        return replace(self, offset=self.offset + nbytes)
