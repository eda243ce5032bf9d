"""A GGUF's quantized weights kept in their blocks (no fp32 copy in the compiled session).

The graph is still exported from a transformers model (export needs real modules), but
the weights that stay quantized are only uninitialized placeholders there (``torch.empty``:
address space, never touched, so never resident); right after export each placeholder
constant is replaced by the file's bytes (memory-mapped by ``gguf.GGUFReader``) read
through a ``dequantize`` node, which the fusion stage turns into ``qmatmul`` /
``qembedding`` (kiln/passes/quantize.py). Kept in blocks: every 2-D tensor whose GGUF type
has a C kernel (kiln/ops/quant.py C_FORMATS); everything else (norms, F16/BF16/F32 and
types without a kernel) is dequantized at load as before.

llama's Q/K rows are permuted in the file (llama.cpp's converter); since a block never
spans rows, undoing it is a reordering of whole row byte ranges (a copy of those two
tensors only, the rest stays mapped).
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Optional

import numpy as np

from ..core import storage
from ..errors import KilnError
from ..ir.graph import Graph
from ..ops.quant import C_FORMATS
from .gguf import GGUFFile, checked, hf_name, unpermute_qk


@dataclass(frozen=True)
class StoredWeight:
    raw: np.ndarray        # uint8 [N, row_bytes], memory-mapped where no reordering was needed
    storage: str           # storage-table name
    shape: tuple           # logical [N, K] (transformers' [out, in])


def native_storage(tensor: Any) -> Optional[str]:
    """The storage name a GGUF tensor is kept in, or None when it is dequantized at load."""
    try:
        st = storage.by_gguf_type(int(tensor.tensor_type))
    except KilnError:
        return None
    return st.name if st.name in C_FORMATS and len(tensor.shape) == 2 else None


def stored_weights(gf: GGUFFile) -> dict[str, StoredWeight]:
    """transformers parameter name → the file's blocks, for every tensor kept quantized."""
    d = checked(gf)
    out: dict[str, StoredWeight] = {}
    for name, t in gf.tensors.items():
        st = native_storage(t)
        hf = hf_name(name)
        if st is None or hf is None:
            continue
        n, k = (int(x) for x in reversed(t.shape.tolist()))
        raw = np.asarray(t.data)
        want = (n, storage.get(st).row_bytes(k))
        if raw.dtype != np.uint8 or tuple(raw.shape) != want:
            raise KilnError(f"{gf.path}: tensor {name!r} holds {raw.dtype}{list(raw.shape)}, {st} [{n}, {k}] "
                            f"needs uint8{list(want)}")
        if gf.architecture == "llama" and re.search(r"\.attn_[qk]\.", name):
            rows = unpermute_qk(np.arange(n), d.heads if ".attn_q." in name else d.kv_heads)
            raw = np.ascontiguousarray(raw[rows])
        out[hf] = StoredWeight(raw, st, (n, k))
    if d.tied and "model.embed_tokens.weight" in out:
        # A tied table is one constant after export, named after either user (torch.export keeps the
        # lm_head's name): offer the blocks under both names, or that constant stays a placeholder.
        out.setdefault("lm_head.weight", out["model.embed_tokens.weight"])
    return out


def placeholders(stored: dict[str, StoredWeight]) -> dict[str, Any]:
    """Uninitialized fp32 tensors of the stored weights' shapes, for building the module."""
    return {name: np.empty(w.shape, dtype=np.float32) for name, w in stored.items()}


def tied_names(model: Any) -> dict[str, list[str]]:
    """parameter name → every name of that parameter in ``model`` (a tied embedding and LM head are one
    parameter under two names; torch.export keeps only one of them as the graph constant)."""
    groups: dict[int, list[str]] = {}
    for name, p in model.named_parameters(remove_duplicate=False):
        groups.setdefault(id(p), []).append(name)
    return {name: names for names in groups.values() for name in names}


def attach(graph: Graph, stored: dict[str, StoredWeight], prefix: str = "",
           aliases: Optional[dict[str, list[str]]] = None) -> int:
    """Replace each placeholder constant of ``graph`` by the stored blocks read through ``dequantize``
    (one node per reader); returns how many were replaced. A stored weight ``name`` is the constant
    ``prefix + n`` for the first ``n`` of ``aliases[name]`` (default ``[name]``) the graph holds.

    KilnError when a stored weight is found under none of its names (its placeholder would stay in the
    graph uninitialized: wrong output, not an error) or a constant's shape differs from the file's."""
    done = 0
    attached: set[str] = set()
    for name, w in stored.items():
        names = (aliases or {}).get(name, [name])
        c = next((prefix + n for n in names if prefix + n in graph.constants), None)
        if c is None:
            if any(prefix + n in attached for n in names):
                continue  # the file holds both of a tied pair; the model (and graph) use one
            raise KilnError(f"quantized weight {name!r} (also named {names}) is none of the exported graph's "
                            f"constants; its placeholder would be read uninitialized")
        t = graph.tensors[c]
        if tuple(t.shape) != w.shape:
            raise KilnError(f"weight {c!r}: graph constant is {list(t.shape)}, the file's is {list(w.shape)}")
        q = graph.add_stored_const(graph.fresh(f"{c}.{w.storage}"), w.raw, w.shape, w.storage)
        for user in graph.users(c):
            dq = graph.add_node("dequantize", [q], {"storage": w.storage}, name=f"{c}.dq",
                                index=graph.nodes.index(user), source=user.source)
            graph.set_inputs(user, [dq if i == c else i for i in user.inputs])
        if c in graph.outputs:
            raise KilnError(f"weight {c!r} is a graph output; it cannot stay quantized")
        del graph.tensors[c]
        del graph.constants[c]
        attached.add(c)
        done += 1
    return done
