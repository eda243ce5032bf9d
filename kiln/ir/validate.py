"""Structural checks at stage boundaries; each failure names the node or tensor."""
from __future__ import annotations

from ..core import dims
from ..errors import KilnError, ValidationError
from ..ops import registry
from ..ops.schema import check_input_dtypes
from .graph import ACT, CONST, INPUT, PLAIN, STATE, Graph


def validate(graph: Graph, *, static: bool = False, executable: bool = False) -> None:
    """Raise ValidationError on the first structural problem.

    static: every shape must be bound to integers (after resolve).
    executable: no fold-only op may remain (what an executor receives).
    """
    produced: set[str] = set()
    for name, t in graph.tensors.items():
        if t.kind in (INPUT, CONST, STATE):
            produced.add(name)
        if t.kind in (CONST, STATE) and name not in graph.constants:
            raise ValidationError(f"{t.kind} tensor {name!r} has no data")
        if static and not dims.is_static(t.shape):
            raise ValidationError(f"tensor {name!r} has unresolved shape {dims.fmt_shape(t.shape)}")
    for name in graph.inputs:
        if graph.tensors.get(name) is None or graph.tensors[name].kind != INPUT:
            raise ValidationError(f"graph input {name!r} is not an input tensor")
    _check_storage(graph)
    seen_outputs: set[str] = set()
    for node in graph.nodes:
        where = f"node {node.output} = {node.op}(...)"
        if node.op not in registry.REGISTRY:
            raise ValidationError(f"{where}: unknown op {node.op!r}")
        opdef = registry.REGISTRY[node.op]
        try:
            opdef.check_arity(len(node.inputs))
        except Exception as e:
            raise ValidationError(f"{where}: {e}") from None
        try:
            check_input_dtypes(node.op, [graph.tensors[i].dtype for i in node.inputs if i in graph.tensors])
        except KilnError as e:
            raise ValidationError(f"{where}: {e}") from None
        if executable and opdef.has(registry.FOLD_ONLY):
            raise ValidationError(f"{where}: fold-only op {node.op!r} reached the executor "
                                  f"(its inputs were not all constant)")
        for i in node.inputs:
            if i not in graph.tensors:
                raise ValidationError(f"{where}: input {i!r} does not exist (dangling name)")
            if i not in produced:
                raise ValidationError(f"{where}: input {i!r} is used before it is produced (cycle or bad order)")
        if node.output in seen_outputs or graph.tensors.get(node.output) is None:
            raise ValidationError(f"{where}: output {node.output!r} is produced twice or has no tensor")
        if graph.tensors[node.output].kind != ACT:
            raise ValidationError(f"{where}: writes {graph.tensors[node.output].kind} tensor {node.output!r}")
        seen_outputs.add(node.output)
        produced.add(node.output)
    for o in graph.outputs:
        if o not in produced:
            raise ValidationError(f"graph output {o!r} is never produced")
    try:
        graph.check_use_def()
    except KilnError as e:
        raise ValidationError(str(e)) from None
    _check_kv_cache(graph)


def _check_storage(graph: Graph) -> None:
    """A non-plain storage type only on a constant, read only where an op takes that input
    in storage (kiln/ops/quant.py STORED_INPUTS); never a graph output."""
    from ..ops.quant import STORED_INPUTS
    stored = {n for n, t in graph.tensors.items() if t.storage != PLAIN}
    for name in stored:
        if graph.tensors[name].kind != CONST:
            raise ValidationError(f"tensor {name!r}: storage {graph.tensors[name].storage} on a "
                                  f"{graph.tensors[name].kind} tensor (only constants may have one)")
        if name in graph.outputs:
            raise ValidationError(f"graph output {name!r} is in storage {graph.tensors[name].storage}")
    for node in graph.nodes:
        for j, i in enumerate(node.inputs):
            if i in stored and STORED_INPUTS.get(node.op) != j:
                raise ValidationError(f"node {node.output} = {node.op}(...): input {j} ({i!r}) is in storage "
                                      f"{graph.tensors[i].storage}, which {node.op} does not read")


def _check_kv_cache(graph: Graph) -> None:
    """KV-cache metadata, when present, must name the graph's own inputs and state."""
    info = graph.kv_cache
    if info is None:
        return
    for name, role in ((info.token_input, "token_input"), (info.position_input, "position_input")):
        if name not in graph.inputs:
            raise ValidationError(f"kv_cache.{role} {name!r} is not a graph input")
    pos = graph.tensors[info.position_input]
    if info.slots:
        _check_batched(graph, info)
    elif pos.dtype != "int64" or tuple(pos.shape) != ():
        raise ValidationError(f"kv_cache.position_input {pos.name!r} must be an int64 scalar, "
                              f"got {pos.dtype}{list(pos.shape)}")
    if not info.state_names or len(set(info.state_names)) != len(info.state_names):
        raise ValidationError(f"kv_cache.state_names must list each cache state tensor once, "
                              f"got {list(info.state_names)}")
    for name in info.state_names:
        t = graph.tensors.get(name)
        if t is None or t.kind != STATE or len(t.shape) != 4 or t.shape[2] != info.max_len \
                or (info.slots and t.shape[0] != info.slots):
            raise ValidationError(f"kv_cache state {name!r} must be a [B, H, {info.max_len}, D] state tensor, "
                                  f"got {t.kind + str(list(t.shape)) if t else 'no tensor'}")


def _check_batched(graph: Graph, info) -> None:
    """A batched cache (kiln/passes/kv_batch.py): per-token slot ids and positions int64 [S] beside the
    [1, S] tokens, and int64 [R] logit rows, all graph inputs."""
    seq = graph.tensors[info.token_input].shape[-1]
    for name, role in ((info.slot_input, "slot_input"), (info.logits_input, "logits_input")):
        if name not in graph.inputs:
            raise ValidationError(f"kv_cache.{role} {name!r} is not a graph input")
    for name in (info.slot_input, info.position_input):
        t = graph.tensors[name]
        if t.dtype != "int64" or tuple(t.shape) != (seq,):
            raise ValidationError(f"kv_cache input {name!r} must be int64 [S] (one per token), "
                                  f"got {t.dtype}{list(t.shape)}")
    t = graph.tensors[info.logits_input]
    if t.dtype != "int64" or len(t.shape) != 1:
        raise ValidationError(f"kv_cache.logits_input {t.name!r} must be int64 [R], got {t.dtype}{list(t.shape)}")
