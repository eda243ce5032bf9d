"""torch.export → Kiln Graph.

The exported program is decomposed only as far as functionalization
(``run_decompositions({})``): high-level ops such as linear, layer_norm and
scaled_dot_product_attention reach the handlers intact, and higher-order
wrappers (autocast / grad-mode regions) are inlined.
"""
from __future__ import annotations

import operator
from typing import Any

import torch

from ...errors import KilnError, UnsupportedOpError
from ...ir.dims import Sym
from ...ir.graph import Graph
from ...ir.validate import validate
from . import aten_creation, aten_elementwise, aten_nn, aten_shape  # noqa: F401  (registers the handlers)
from .context import SYM_OPS, Ctx, kiln_dtype, sym_to_dim
from .handlers import HANDLERS


def supported_ops() -> list[str]:
    """The ATen ops Kiln converts (as 'aten.name.overload')."""
    return sorted(HANDLERS)


def export(module: torch.nn.Module, example_args: tuple, *, dynamic_shapes=None) -> Graph:
    if not isinstance(example_args, tuple):
        example_args = (example_args,)
    try:
        with torch.no_grad():
            ep = torch.export.export(module, example_args, dynamic_shapes=dynamic_shapes, strict=False)
            ep = ep.run_decompositions({})
    except KilnError:
        raise
    except Exception as e:  # torch's own errors are long; keep the first lines and chain the rest
        first = "\n".join(str(e).strip().splitlines()[:6])
        raise KilnError(f"torch.export could not capture {type(module).__name__}: {type(e).__name__}: {first}") from e
    return from_exported_program(ep)


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
    fx_nodes = list(ep.graph.nodes)
    for node in fx_nodes:
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

    for node in fx_nodes:
        if node.op == "call_function":
            ctx.node = node
            ctx.env[node] = _convert(ctx, node)
        elif node.op == "output":
            outs = node.args[0]
            for o in (outs if isinstance(outs, (list, tuple)) else [outs]):
                v = ctx.value(o)
                if not isinstance(v, str):
                    raise KilnError(f"model output {o} is not a tensor ({v!r}); Kiln graphs return tensors")
                g.outputs.append(v)
        elif node.op == "get_attr":
            raise UnsupportedOpError(f"get_attr {node.target} (submodules/higher-order ops) is not supported")
    for sym, vr in ep.range_constraints.items():
        g.sym_ranges[str(sym)] = (_bound(vr.lower, 0), _bound(vr.upper, 2**62))
    g.remove_unused_tensors()
    validate(g)
    return g


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


