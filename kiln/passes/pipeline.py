"""The optimization pipeline: a list of named stages run in order."""
from __future__ import annotations

from typing import Optional, Sequence

from ..ir.graph import Graph


def optimize(graph: Graph, stages: Optional[Sequence[str]] = None, log=None) -> Graph:
    return graph
