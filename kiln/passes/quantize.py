"""Quantized weights in the graph: the quantize stage and the fusion rule.

* ``quantize_weights`` (the optional "quantize" stage): every constant float32 weight that
  only eligible matmuls read becomes a stored constant (kiln/core/storage.py) read through
  ``dequantize``; the matmul then reads ``dequantize(Wq)`` with ``transpose_b`` (a [K, N]
  weight is stored transposed, as rows of K). Runtime weights, weights other ops also read,
  and K that is not whole blocks are left alone (their fp32 path is unchanged). int8
  per-channel rows get least-error scales (kiln/core/quantize_int8.py), activation-aware
  with calibration feeds (kiln/passes/quantize_calibration.py).
* ``FUSE`` (the "fuse-quant" stage, always on): ``matmul(x, dequantize(W), transpose_b)
  [+ bias]`` → ``qmatmul`` and ``embedding(dequantize(W), ids)`` → ``qembedding``, so the
  kernels read the blocks and no fp32 copy of the weight exists. A graph loaded from a GGUF
  carries the same ``dequantize`` nodes (kiln/models/gguf_quant.py), so one rule serves both.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Optional

import numpy as np

from ..core import storage
from ..core.quantize_int8 import METHODS as INT8_SCALES, quantize_i8_row
from ..errors import KilnError
from ..ir.graph import CONST, PLAIN, Graph
from ..ops.quant import C_FORMATS, MODES
from .engine import Rule, RuleSet, rewrite
from .pattern import Any, Const, Op

# --quantize names -> storage types
FORMATS = {"int8": "i8_row", "q8_0": "q8_0", "q4_0": "q4_0", "q4_k": "q4_k"}


@dataclass(frozen=True)
class QuantizeConfig:
    """fmt: a FORMATS key (or a storage name with a kernel); mode: the qmatmul activation
    mode ("exact" or "int8"); keep: weight names left in fp32; keep_tied: leave a weight that
    an embedding also reads (a tied LM head) in fp32 (None: the format's default, ``tied_default``);
    scales: how int8 per-channel rows choose their scale, "mse" (least rounding error, default)
    or "max" (max|row| / 127; the ablation), kiln/core/quantize_int8.py; calibration: input
    feeds (Session-style mappings) on which the graph is run to weigh each int8 weight's error
    by its input channels' mean square (activation-aware, kiln/passes/quantize_calibration.py);
    None: every channel counts alike."""
    fmt: str
    mode: str = "exact"
    keep: frozenset = field(default_factory=frozenset)
    keep_tied: Optional[bool] = None
    scales: str = "mse"
    calibration: Optional[tuple] = field(default=None, compare=False)

    def __post_init__(self):
        st = FORMATS.get(self.fmt, self.fmt)
        if st not in C_FORMATS or st not in FORMATS.values():
            raise KilnError(f"quantize: format {self.fmt!r} is not one of {', '.join(FORMATS)}")
        if self.mode not in MODES:
            raise KilnError(f"quantize: mode {self.mode!r} is not one of {', '.join(MODES)}")
        if self.scales not in INT8_SCALES:
            raise KilnError(f"quantize: scales {self.scales!r} is not one of {', '.join(INT8_SCALES)}")

    @property
    def storage(self) -> str:
        return FORMATS.get(self.fmt, self.fmt)

    @property
    def tied_kept(self) -> bool:
        """Whether a tied LM head / embedding table stays fp32: ``keep_tied``, else the format's
        default (quantized for int8: measured in docs/DESIGN.md "Quantization accuracy", and an
        fp32 head would be most of int8 decode's bytes; fp32 for the block formats, unmeasured)."""
        return self.storage not in TIED_QUANTIZED if self.keep_tied is None else self.keep_tied


# storage types whose tied LM head / embedding is quantized by default
TIED_QUANTIZED = frozenset({"i8_row"})


def _eligible_matmul(graph: Graph, node, w: str, block: int) -> bool:
    """A matmul reading constant ``w`` as its B, in a form qmatmul takes."""
    a = node.attrs
    if node.op != "matmul" or node.inputs[1] != w or w in (node.inputs[0], *node.inputs[2:]):
        return False
    t = graph.tensors[w]
    if len(t.shape) != 2 or a.alpha != 1.0:
        return False
    k = t.shape[1] if a.transpose_b else t.shape[0]
    if k % block or k % 32:
        return False
    if len(node.inputs) == 3:
        n = t.shape[0] if a.transpose_b else t.shape[1]
        if a.beta != 1.0 or tuple(graph.tensors[node.inputs[2]].shape) != (n,):
            return False
    return True


def quantize_weights(graph: Graph, cfg: QuantizeConfig) -> int:
    """The quantize stage; returns the number of weights quantized. Mutates ``graph``."""
    st = storage.get(cfg.storage)
    energy = {}
    if cfg.calibration is not None and st.name == "i8_row" and cfg.scales == "mse":
        from .quantize_calibration import input_energy
        energy = input_energy(graph, list(cfg.calibration))
    done = 0
    for w, t in list(graph.tensors.items()):
        if t.kind != CONST or t.storage != PLAIN or t.dtype != "float32" or w in cfg.keep:
            continue
        users = graph.users(w)
        if not users or w in graph.outputs:
            continue
        embeds = [n for n in users if n.op == "embedding" and n.inputs[0] == w and n.inputs[1] != w]
        if embeds and (cfg.tied_kept or len(t.shape) != 2 or t.shape[1] % st.block_size):
            continue  # a (tied) embedding table stays fp32 unless asked
        mms = [n for n in users if n not in embeds]
        if not all(_eligible_matmul(graph, n, w, st.block_size) for n in mms):
            continue
        transposed = [n.attrs.transpose_b for n in mms] + [True] * len(embeds)
        if not (all(transposed) or not any(transposed)):
            continue
        value = np.asarray(graph.constants[w], np.float32)
        rows = value if transposed[0] else value.T
        rows = np.ascontiguousarray(rows)
        h = energy.get(w) if cfg.scales == "mse" else None
        raw = quantize_i8_row(rows, cfg.scales, h) if st.name == "i8_row" else st.quantize(rows)
        qname = graph.fresh(f"{w}.{st.name}")
        graph.add_stored_const(qname, raw, rows.shape, st.name)
        for n in users:
            idx = graph.nodes.index(n)
            dq = graph.add_node("dequantize", [qname], {"storage": st.name}, name=f"{w}.dq", index=idx,
                                source=n.source)
            if n.op == "embedding":
                new = dataclasses.replace(n, inputs=[dq, n.inputs[1]])
            else:
                new = dataclasses.replace(n, inputs=[n.inputs[0], dq] + list(n.inputs[2:]),
                                          attrs=dataclasses.replace(n.attrs, transpose_b=True))
            graph.replace_node(n, new)
        del graph.tensors[w]
        del graph.constants[w]
        done += 1
    return done


def make_stage(cfg: QuantizeConfig):
    def stage(graph: Graph) -> int:
        return quantize_weights(graph, cfg)
    return stage


# -- the fusion rule ----------------------------------------------------------------------
def _qmatmul(mode: Optional[str]):
    def build(b, x, w, dq):
        root = b.match.root
        a = root.attrs
        if not a.transpose_b or a.alpha != 1.0 or len(b.shape(w)) != 2:
            return None
        if b.graph.tensors[w].storage not in C_FORMATS:
            return None
        ins = [x, w]
        if len(root.inputs) == 3:
            bias = root.inputs[2]
            if a.beta != 1.0 or tuple(b.shape(bias)) != (b.shape(w)[0],) or b.dtype(bias) != "float32":
                return None
            ins.append(bias)
        st = b.node(dq).attrs.storage
        return b.op("qmatmul", ins, {"storage": st, "mode": mode or "exact", "act": a.act})
    return build


def _qembedding(b, w, ids, dq):
    if b.graph.tensors[w].storage not in C_FORMATS:
        return None
    return b.op("qembedding", [w, ids], {"storage": b.node(dq).attrs.storage})


def fuse_rules(mode: Optional[str] = None) -> RuleSet:
    """The fusion rules; ``mode`` the activation mode of the qmatmuls they make."""
    return RuleSet([
        Rule("qmatmul", Op("matmul", Any("x"), Op("dequantize", Const("w"), name="dq")).prefix(), _qmatmul(mode)),
        Rule("qembedding", Op("embedding", Op("dequantize", Const("w"), name="dq"), Any("ids")), _qembedding),
    ])


FUSE = fuse_rules()


def split_shared_dequantize(graph: Graph) -> int:
    """One dequantize node per reader (CSE merges them; the rule needs its dequantize private,
    e.g. a tied embedding and LM head each read the same blocks). Nodes only: no data copied."""
    split = 0
    for node in [n for n in graph.nodes if n.op == "dequantize"]:
        readers = graph.users(node.output)
        for r in readers[1:]:
            idx = graph.nodes.index(r)
            dq = graph.add_node("dequantize", list(node.inputs), node.attrs, name=node.output, index=idx,
                                source=node.source)
            graph.set_inputs(r, [dq if i == node.output else i for i in r.inputs])
            split += 1
    return split


def fuse_stage(mode: Optional[str] = None):
    """The "fuse-quant" stage: split shared dequantize nodes, then apply the rules."""
    rules = fuse_rules(mode)

    def stage(graph: Graph) -> int:
        split_shared_dequantize(graph)
        return sum(rewrite(graph, rules).values())
    return stage
