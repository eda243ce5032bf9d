"""The optimization pipeline: one readable list of named stages.

Order matters and each position has a reason:
  canonicalize   one form for identities, chains and scalar division, so every later
                 pattern is written once
  absorb         transposes and scales into matmul flags — before folding, which would
                 materialize transposed copies of the weights
  fold           constant folding with the numpy reference, dead code and dead weights
  dedupe         common subexpressions merged, so DAG patterns see one shared value
  fuse-*         decomposed softmax/attention/norms/activations become single ops; GQA
                 reads shared K/V heads; causal masks become a flag (after attention
                 fusion, which is what exposes the mask)
  bias           matmul + bias → beta, after activation fusion has claimed its patterns
  epilogue       relu/gelu of a matmul (with its bias) applied in the matmul's output pass;
                 SiLU is left to the gated activation that consumes it
  merge          parallel matmuls on one input → one wider matmul (late: it rewrites
                 the matmuls every other stage matches on); then a gated activation
                 reads the merged gate/up output directly
  pack-weights   constant fp32 matmul weights (merged ones included) into the C GEMM's
                 panel layout, once (kiln/passes/pack.py; KILN_PACK_WEIGHTS=0 turns it off)
  cse            one node per distinct computation (e.g. the per-layer views of cos/sin)
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable, Optional, Sequence, Union

from ..errors import KilnError
from ..ir.graph import Graph
from ..ir.validate import validate
from . import absorb, attention, canonical, fusions, quantize
from .causal_mask import causal_mask_absorption
from .engine import RuleSet, rewrite
from .cse import cse
from .fold import constant_folding
from .merge import merge_parallel_matmuls
from .pack import pack_weights

Stage = tuple[str, Union[RuleSet, Callable[[Graph], int]]]

STAGES: list[Stage] = [
    ("canonicalize", canonical.RULES),
    ("absorb", absorb.RULES + canonical.RULES),
    ("fold", constant_folding),
    ("quantize", None),   # only with a QuantizeConfig: fp32 matmul weights → stored + dequantize
    ("dedupe", cse),
    ("fuse-softmax", attention.SOFTMAX + canonical.RULES),
    ("fuse-attention", attention.ATTENTION + attention.GQA),
    ("causal-mask", causal_mask_absorption),
    ("fuse-norms", fusions.NORMS),
    ("fuse-activations", fusions.ACTIVATIONS),
    ("fuse-rope", fusions.ROPE),
    ("fuse-gated", fusions.GATED),
    ("bias", fusions.BIAS),
    ("epilogue", fusions.EPILOGUE),
    ("fuse-quant", None),  # matmul(x, dequantize(W)) → qmatmul, after bias/act fusion (quantize.fuse_stage; tests/passes/test_quantize.py)
    ("merge-matmuls", merge_parallel_matmuls),
    ("fuse-gated-packed", fusions.GATED_PACKED),
    ("pack-weights", pack_weights),
    ("cse", cse),
    ("cleanup", constant_folding),
]
STAGE_NAMES = [name for name, _ in STAGES]


@dataclass
class StageLog:
    name: str
    nodes_before: int
    nodes_after: int
    fired: dict = field(default_factory=dict)
    ms: float = 0.0

    def __str__(self) -> str:
        fired = ", ".join(f"{k}×{v}" for k, v in self.fired.items())
        return f"{self.name:18s} {self.nodes_before:5d} → {self.nodes_after:5d} nodes  {self.ms:7.1f} ms  {fired}"


def optimize(graph: Graph, stages: Optional[Sequence[str]] = None, log: Optional[list] = None, *,
             quantize_cfg: Optional["quantize.QuantizeConfig"] = None, qmode: Optional[str] = None) -> Graph:
    """Run the named stages (default: all, in pipeline order) on a copy of ``graph``.
    ``quantize_cfg`` turns the quantize stage on; ``qmode`` (default: the config's mode, else
    "exact") is the activation mode of the quantized matmuls the fusion makes."""
    wanted = STAGE_NAMES if stages is None else list(stages)
    unknown = [s for s in wanted if s not in STAGE_NAMES]
    if unknown:
        raise KilnError(f"unknown pass stage(s) {unknown}; stages are: {', '.join(STAGE_NAMES)}")
    g = graph.copy()
    for name, stage in STAGES:
        if name not in wanted:
            continue
        before = len(g.nodes)
        t0 = time.perf_counter()
        if name == "quantize":  # a no-op without a config (still logged: every stage is)
            stage = quantize.make_stage(quantize_cfg) if quantize_cfg is not None else (lambda g: 0)
        if name == "fuse-quant":
            stage = quantize.fuse_stage(qmode or (quantize_cfg.mode if quantize_cfg else None))
        if isinstance(stage, RuleSet):
            fired = rewrite(g, stage)
        else:
            n = stage(g)
            fired = {name: n} if n else {}
        if log is not None:
            log.append(StageLog(name, before, len(g.nodes), fired, 1e3 * (time.perf_counter() - t0)))
        validate(g)
    return g
