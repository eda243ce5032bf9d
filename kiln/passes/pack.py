"""Packed weights: every constant fp32 matmul weight rewritten once, at compile time, into the
C GEMM's panel layout (storage ``f32_p16``, kiln/core/storage.py; layout in csrc/gemm.h).

The "pack-weights" stage runs late (after merge-matmuls and quantize, so the merged QKV /
gate-up weights are packed as one, and quantized weights are left to their own kernels).
A weight is packed when every reader is a matmul taking it as B, it is 2-D, plain float32
and not a graph output. A [K, N] weight (``transpose_b`` off, e.g. GPT-2's Conv1D) is packed
from its transpose and its matmuls switch ``transpose_b`` on: the packed form is always
the logical [N, K]. A table an embedding also reads (tied to the LM head)
is packed too, and the embedding gathers its rows from the panels (one copy, not two); a
weight any other op reads stays plain. A merged weight (merge-matmuls' ``concat`` of its
constant parts along N) is packed straight from the parts into one new buffer, so the
weights are copied once at compile time (storage.pack_f32_p16; new pages: core/buffers.py).

The packed bytes are what a saved model file stores (memory-mapped like any stored weight);
the C kernel reads them for every M, nothing packs per call. The numpy reference unpacks.

Ablation (the BLAS path): ``KILN_PACK_WEIGHTS=0`` turns the stage off (weights stay plain
and the matmuls run the BLAS / skinny kernels of csrc/matmul.c), as does leaving
"pack-weights" out of ``kiln.compile(passes=...)``.
"""
from __future__ import annotations

import concurrent.futures
import dataclasses
import os

import numpy as np

from ..config import num_threads
from ..core import storage
from ..ir.graph import CONST, PLAIN, Graph

PACKED = "f32_p16"


def enabled() -> bool:
    """False when KILN_PACK_WEIGHTS=0 (the BLAS ablation)."""
    return os.environ.get("KILN_PACK_WEIGHTS", "1").strip() not in ("0", "false", "no", "off")


def _plain_weight(graph: Graph, w: str) -> bool:
    t = graph.tensors[w]
    return (t.kind == CONST and t.storage == PLAIN and t.dtype == "float32" and len(t.shape) == 2
            and w not in graph.outputs and 0 not in t.shape)


def _packable(graph: Graph, w: str) -> bool:
    if not _plain_weight(graph, w):
        return False
    users = graph.users(w)
    mms = [n for n in users if n.op == "matmul" and n.inputs[1] == w and w not in (n.inputs[0], *n.inputs[2:])]
    embeds = [n for n in users if n.op == "embedding" and n.inputs[0] == w and n.inputs[1] != w]
    if not mms or len(mms) + len(embeds) != len(users):
        return False
    # one logical [N, K] for every reader: an embedding's rows are a transposed-B weight's
    return len({n.attrs.transpose_b for n in mms} | ({True} if embeds else set())) == 1


def _stacked(graph: Graph, node) -> bool:
    """A merged weight (merge-matmuls): a concat along N of plain fp32 weights that only
    transposed-B matmuls read, as B. Packed from its parts."""
    w = node.output
    if node.op != "concat" or node.attrs.axis != 0 or w in graph.outputs:
        return False
    if not all(_plain_weight(graph, p) for p in node.inputs):
        return False
    users = graph.users(w)
    return bool(users) and all(n.op == "matmul" and n.attrs.transpose_b and n.inputs[1] == w
                               and w not in (n.inputs[0], *n.inputs[2:]) for n in users)


def pack_weights(graph: Graph) -> int:
    """The "pack-weights" stage; returns the number of weights packed. Mutates ``graph``."""
    if not enabled():
        return 0
    weights = [name for name, t in graph.tensors.items() if t.kind == CONST and _packable(graph, name)]
    stacks = [n for n in graph.nodes if _stacked(graph, n)]
    jobs = []   # the [N, K] parts of each new packed weight
    for w in weights:
        transposed = next(n.attrs.transpose_b for n in graph.users(w) if n.op == "matmul")
        value = graph.constants[w]
        jobs.append([value if transposed else np.asarray(value).T])
    jobs += [[graph.constants[p] for p in node.inputs] for node in stacks]
    # The copies run on threads (numpy drops the GIL while it copies): packing is mostly the
    # first touch of new memory, which in a VM is page faults served by the host, and two cores
    # take them about twice as fast (docs/DESIGN.md, "Compile time"). The graph is then changed
    # in one thread, in the same order as before, so names and results do not depend on it.
    workers = min(num_threads(), 4, len(jobs))
    if workers > 1:
        with concurrent.futures.ThreadPoolExecutor(workers, thread_name_prefix="kiln-pack") as pool:
            packed = list(pool.map(storage.pack_f32_p16, jobs))
    else:
        packed = [storage.pack_f32_p16(j) for j in jobs]
    del jobs
    for w, raw in zip(weights, packed):
        _use_packed(graph, w, raw)
        _drop_const(graph, w)
    for node, raw in zip(stacks, packed[len(weights):]):
        _use_packed(graph, node.output, raw)
        graph.remove_node(node)
        for p in dict.fromkeys(node.inputs):
            if not graph.is_used(p):
                _drop_const(graph, p)
    return len(weights) + len(stacks)


def _use_packed(graph: Graph, w: str, raw: np.ndarray) -> None:
    """Every reader of ``w`` reads ``raw`` instead: the f32_p16 packing of its [N, K] value
    (storage.pack_f32_p16, uint8 [N, 4K])."""
    name = graph.add_stored_const(graph.fresh(f"{w}.{PACKED}"), raw, (raw.shape[0], raw.shape[1] // 4), PACKED)
    for n in graph.users(w):
        if n.op == "embedding":
            graph.set_inputs(n, [name, n.inputs[1]])
        else:
            graph.replace_node(n, dataclasses.replace(n, inputs=[n.inputs[0], name] + list(n.inputs[2:]),
                                                      attrs=dataclasses.replace(n.attrs, transpose_b=True)))


def _drop_const(graph: Graph, w: str) -> None:
    del graph.tensors[w]
    del graph.constants[w]


def unpack_weights(graph: Graph) -> int:
    """The inverse, in place: packed weights back to plain [N, K] fp32 (for a backend without a
    packed matmul kernel, e.g. Triton). Returns the number unpacked."""
    st = storage.get(PACKED)
    done = 0
    for w in [name for name, t in graph.tensors.items() if t.storage == PACKED]:
        t = graph.tensors[w]
        value = st.dequantize(graph.constants[w], tuple(int(d) for d in t.shape))
        users = graph.users(w)
        name = graph.add_const(graph.fresh(w.removesuffix(f".{PACKED}")), value)
        for n in users:
            graph.set_inputs(n, [name if i == w else i for i in n.inputs])
        _drop_const(graph, w)
        done += 1
    return done


def for_backend(graph: Graph, get_backend) -> Graph:
    """``graph``, or an unpacked copy of it when the backend (``get_backend()``, a
    kiln.backends.kernels.Backend, asked only when the graph holds a packed weight) has no
    matmul kernel for a packed B: a packed model file still runs there."""
    if not any(t.storage == PACKED for t in graph.tensors.values()):
        return graph
    if not any(PACKED in storages for _, storages in get_backend().missing(graph)):
        return graph
    graph = graph.copy()
    unpack_weights(graph)
    return graph
