"""torch.export → Kiln Graph.

The program ``torch.export`` returns is converted as it is whenever that is safe: high-level
ops (linear, layer_norm, scaled_dot_product_attention, reshape, to) reach their handlers
intact, and higher-order wrappers (autocast / grad-mode regions) are inlined. Only a program
that mutates tensors in place, or that uses an op no handler knows, first goes through
``run_decompositions({})`` (functionalization plus the composite ops' decompositions), which
costs more than the capture itself on a 30-layer model, so it is paid only where needed.
"""
from __future__ import annotations

import operator
import time
from typing import Any, Optional

import torch

from ...errors import KilnError, UnsupportedOpError
from ...core.dims import Sym
from ...ir.graph import Graph
from ...ir.validate import validate
from . import aten_creation, aten_elementwise, aten_nn, aten_shape  # noqa: F401  (registers the handlers)
from .context import SYM_OPS, Ctx, kiln_dtype, sym_to_dim
from .handlers import HANDLERS, SAFE_IN_PLACE

# Regions torch.export wraps in a submodule call; for fp32 inference they are their body.
HIGHER_ORDER = frozenset({torch.ops.higher_order.wrap_with_set_grad_enabled,
                          torch.ops.higher_order.wrap_with_autocast})


def supported_ops() -> list[str]:
    """The ATen ops Kiln converts (as 'aten.name.overload')."""
    return sorted(HANDLERS)


def export(module: torch.nn.Module, example_args: tuple, *, dynamic_shapes=None,
           timings: Optional[dict] = None) -> Graph:
    """Capture ``module`` with torch.export and convert it to a Kiln Graph.

    ``timings``, when given, receives seconds per step: "torch.export", "decompose" (0.0 when
    the program converts as captured) and "convert". Raises KilnError when capture fails and
    UnsupportedOpError for an op Kiln does not convert.
    """
    if not isinstance(example_args, tuple):
        example_args = (example_args,)
    t0 = time.perf_counter()
    try:
        with torch.no_grad():
            ep = torch.export.export(module, example_args, dynamic_shapes=dynamic_shapes, strict=False)
        t1 = time.perf_counter()
        reason = needs_decomposition(ep)
        if reason is not None:
            with torch.no_grad():
                ep = ep.run_decompositions({})
    except KilnError:
        raise
    except Exception as e:  # torch's own errors are long; keep the first lines and chain the rest
        first = "\n".join(str(e).strip().splitlines()[:6])
        raise KilnError(f"torch.export could not capture {type(module).__name__}: {type(e).__name__}: {first}") from e
    t2 = time.perf_counter()
    graph = from_exported_program(ep)
    if timings is not None:
        timings.update({"torch.export": t1 - t0, "decompose": t2 - t1, "convert": time.perf_counter() - t2})
        if reason is not None:
            timings["decompose_reason"] = reason
    return graph


def needs_decomposition(ep) -> Optional[str]:
    """Why ``ep`` must go through run_decompositions({}) before conversion, or None.

    Converting the captured program directly is exact when every op has a handler and no
    op writes into a tensor: Kiln's values are immutable, so an in-place op (``add_``,
    ``fill_`` on a view, ``copy_``) needs torch's functionalization to become a value again.
    """
    for gm in _graph_modules(ep.graph_module):
        for node in gm.graph.nodes:
            if node.op != "call_function":
                continue
            target = node.target
            if target is operator.getitem or target in SYM_OPS or target in HIGHER_ORDER:
                continue
            name = str(target)
            schema = getattr(target, "_schema", None)
            if schema is not None and schema.is_mutable and name not in SAFE_IN_PLACE:
                return f"{name} writes in place"
            if name not in HANDLERS:
                return f"{name} has no handler"
    return None


def _graph_modules(gm):
    """The top graph module and the submodules its higher-order ops call, recursively."""
    yield gm
    for child in gm.children():
        if isinstance(child, torch.fx.GraphModule):
            yield from _graph_modules(child)


def from_exported_program(ep) -> Graph:
    from torch.export.graph_signature import InputKind, OutputKind

    g = Graph()
    ctx = Ctx(g)
    sig = ep.graph_signature
    kinds = {spec.arg.name: spec for spec in sig.input_specs}
    for spec in sig.output_specs:
        if spec.kind not in (OutputKind.USER_OUTPUT,):
            raise UnsupportedOpError(f"the exported program mutates {spec.target!r} ({spec.kind.name}); "
                                     "only stateless models and Kiln's own KV cache are supported")
    for node in ep.graph.nodes:
        if node.op != "placeholder":
            continue
        spec = kinds.get(node.name)
        if spec is None or spec.kind == InputKind.USER_INPUT:
            ctx.env[node] = _user_input(g, node)
        elif spec.kind in (InputKind.PARAMETER, InputKind.BUFFER, InputKind.CONSTANT_TENSOR):
            value = ep.state_dict.get(spec.target) if spec.target in ep.state_dict else ep.constants.get(spec.target)
            if value is None:
                raise KilnError(f"exported program has no value for {spec.kind.name.lower()} {spec.target!r}")
            ctx.env[node] = g.add_const(spec.target, _to_numpy(value, spec.target))
        else:
            raise UnsupportedOpError(f"input {node.name!r} of kind {spec.kind.name} is not supported")

    outs = _convert_body(ctx, ep.graph_module)
    for o in outs:
        if not isinstance(o, str):
            raise KilnError(f"a model output is not a tensor ({o!r}); Kiln graphs return tensors")
        g.outputs.append(o)
    for sym, vr in ep.range_constraints.items():
        g.sym_ranges[str(sym)] = (_bound(vr.lower, 0), _bound(vr.upper, 2**62))
    g.remove_unused_tensors()
    validate(g)
    return g


def _convert_body(ctx: Ctx, gm) -> list:
    """Convert the call nodes of ``gm``'s graph (placeholders already bound); its outputs."""
    outs: list = []
    for node in gm.graph.nodes:
        if node.op == "call_function":
            if not node.users:  # dead as captured (run_decompositions would have removed it); no op writes
                continue
            ctx.node = node
            ctx.env[node] = _convert(ctx, node)
        elif node.op == "get_attr":
            sub = getattr(gm, node.target, None)
            if not isinstance(sub, torch.fx.GraphModule):
                raise UnsupportedOpError(f"get_attr {node.target} (a {type(sub).__name__}) is not supported")
            ctx.env[node] = sub
        elif node.op == "output":
            res = node.args[0]
            outs = [ctx.value(o) for o in (res if isinstance(res, (list, tuple)) else [res])]
    return outs


def _inline(ctx: Ctx, node) -> list:
    """A higher-order region (autocast, grad mode): its submodule's body, converted in place.

    The arguments are (flags..., submodule, *operands); the region's placeholders take the operands.
    """
    args = list(node.args)
    at = next((i for i, a in enumerate(args) if isinstance(ctx.env.get(a) if isinstance(a, torch.fx.Node) else None,
                                                          torch.fx.GraphModule)), None)
    if at is None:
        raise ctx.unsupported("a higher-order op without a submodule argument")
    gm, operands = ctx.env[args[at]], args[at + 1:]
    placeholders = [n for n in gm.graph.nodes if n.op == "placeholder"]
    if len(placeholders) != len(operands):
        raise ctx.unsupported(f"region takes {len(placeholders)} inputs but is given {len(operands)}")
    for ph, a in zip(placeholders, operands):
        ctx.env[ph] = ctx.value(a)
    return _convert_body(ctx, gm)


def _convert(ctx: Ctx, node) -> Any:
    target = node.target
    if target is operator.getitem:
        seq, i = ctx.value(node.args[0]), node.args[1]
        v = seq[i]
        if v is None:
            ctx.node = node.args[0]
            raise ctx.unsupported(f"output {i} of this op")
        return v
    if target in SYM_OPS:
        return SYM_OPS[target](*(ctx.dim(a) for a in node.args))
    if target in HIGHER_ORDER:
        return _inline(ctx, node)
    handler = HANDLERS.get(str(target))
    if handler is None:
        raise ctx.unsupported()
    try:
        return handler(ctx, *node.args, **node.kwargs)
    except KilnError as e:
        if ctx.source() and "model source" not in str(e) and "\n  at " not in str(e):
            raise type(e)(f"{e}\n  at {ctx.source()}") from None
        raise
    except Exception as e:
        raise KilnError(f"converting {target} (node {node.name}) failed: {type(e).__name__}: {e}\n"
                        f"  at {ctx.source()}") from e


def _user_input(g: Graph, node) -> str:
    val = node.meta.get("val")
    if not isinstance(val, torch.Tensor):
        raise UnsupportedOpError(f"model input {node.name!r} is not a tensor ({type(val).__name__}); "
                                 "pass tensors only")
    shape = tuple(sym_to_dim(d) for d in val.shape)
    name = g.add_input(node.name, shape, kiln_dtype(val.dtype, f"input {node.name!r}: "))
    for axis, d in enumerate(shape):
        if isinstance(d, Sym) and len(d.terms) == 1:
            (mono, coef), = d.terms.items()
            if coef == 1 and len(mono) == 1:  # a bare symbol: this axis binds it
                g.sym_sources.setdefault(mono[0], (name, axis))
    return name


def _bound(v, default: int) -> int:
    """A range bound as an int (torch uses sympy infinities for unbounded sides)."""
    try:
        return int(v)
    except (TypeError, ValueError, OverflowError, AttributeError):
        return default


def _to_numpy(t: torch.Tensor, name: str):
    t = t.detach()
    if t.dtype in (torch.float16, torch.bfloat16, torch.float64):
        t = t.float()
    kiln_dtype(t.dtype, f"weight {name!r}: ")
    return t.contiguous().cpu().numpy()


