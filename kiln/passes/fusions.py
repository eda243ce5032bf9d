"""Fusions of decomposed norms and activations into single ops, and a matmul's bias into beta."""
from __future__ import annotations

import dataclasses
import math

from .engine import Rule, RuleSet
from .pattern import Any, Const, Op, Scalar


def _last(b, x, *reductions) -> bool:
    last = len(b.shape(x)) - 1
    return all(tuple(b.node(r).attrs.axes) == (last,) and b.node(r).attrs.keepdim
               for r in reductions)


def _vector(b, w, x) -> bool:
    return w is None or tuple(b.shape(w)) == (b.shape(x)[-1],)


# -- RMSNorm: x * rsqrt(mean(x^2) + eps) [* w] ------------------------------------------------
def _square(name="x"):
    return Op({"pow"}, Any(name), Scalar(value=2.0))


def _rms_core():
    return Op("mul", Any("x"), Op("rsqrt", Op("add", Op("mean", _square(), name="ms"), Scalar("eps"))), name="n")


def _rms(b, x, ms, eps, n):
    if not _last(b, x, ms) or b.dtype(x) != "float32":
        return None
    return b.op("rms_norm", [x], {"eps": float(b.value(eps).reshape(()))})


# -- LayerNorm: (x - mean) / sqrt(var + eps) [* w] [+ b] --------------------------------------
def _centered():
    return Op("sub", Any("x"), Op("mean", Any("x"), name="mu"), name="xc")


def _ln_core(variant):
    var = Op("add", Op("mean", Op("pow", Any("xc"), Scalar(value=2.0)), name="var"), Scalar("eps"))
    if variant == "div":
        return Op("div", _centered(), Op("sqrt", var), name="n")
    return Op("mul", _centered(), Op("rsqrt", var), name="n")


def _ln(b, x, mu, xc, var, eps, n):
    if not _last(b, x, mu, var) or b.dtype(x) != "float32":
        return None
    return b.op("layer_norm", [x], {"eps": float(b.value(eps).reshape(()))})


def _absorb_weight(b, n, w):
    node = b.node(n)
    x = node.inputs[0]
    if len(node.inputs) != 1 or not _vector(b, w, x):
        return None
    return b.op(node.op, [x, w], node.attrs)


def _absorb_bias(b, n, bias):
    node = b.node(n)
    x = node.inputs[0]
    if len(node.inputs) != 2 or not _vector(b, bias, x):
        return None
    return b.op("layer_norm", [x, node.inputs[1], bias], node.attrs)


# The core patterns produce a bare norm; the scale and shift are absorbed afterwards by
# their own rules, so each affine variant is not a separate pattern.
NORMS = RuleSet([
    Rule("rms-norm", _rms_core(), _rms),
    # x - mean(x) normalized by its RMS is a layer norm: the more specific pattern wins.
    Rule("layer-norm-div", _ln_core("div"), _ln, priority=1),
    Rule("layer-norm-rsqrt", _ln_core("rsqrt"), _ln, priority=1),
    Rule("norm-weight", Op("mul", Op({"rms_norm", "layer_norm"}, name="n"), Const("w")), _absorb_weight),
    Rule("norm-bias", Op("add", Op("layer_norm", name="n"), Const("bias")), _absorb_bias),
])


# -- activations ------------------------------------------------------------------------------
def _unary(op):
    return lambda b, x, **_: b.op(op, [x])


SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)
ACTIVATIONS = RuleSet([
    Rule("silu", Op("mul", Any("x"), Op("sigmoid", Any("x"))), _unary("silu")),
    Rule("silu-from-exp", Op("div", Any("x"), Op("add", Op("exp", Op("neg", Any("x"))), Scalar(value=1.0))),
         _unary("silu")),
    # 0.5 * x * (1 + erf(x / sqrt(2)))   (division already normalized to a multiply)
    Rule("gelu-erf", Op("mul", Op("mul", Any("x"), Scalar(value=0.5)),
                        Op("add", Op("erf", Op("mul", Any("x"), Scalar(value=1 / math.sqrt(2.0), tol=1e-5))),
                           Scalar(value=1.0))), _unary("gelu")),
    Rule("gelu-erf-2", Op("mul", Any("x"), Op("mul", Op("add", Op("erf", Op("mul", Any("x"), Scalar(
        value=1 / math.sqrt(2.0), tol=1e-5))), Scalar(value=1.0)), Scalar(value=0.5))), _unary("gelu")),
    # GPT-2's NewGELU: 0.5 * x * (1 + tanh(sqrt(2/pi) * (x + 0.044715 * x^3)))
    Rule("gelu-tanh", Op("mul", Op("mul", Any("x"), Scalar(value=0.5)), Op("add", Op("tanh", Op(
        "mul", Op("add", Any("x"), Op("mul", Op("pow", Any("x"), Scalar(value=3.0)), Scalar(value=0.044715, tol=1e-5))),
        Scalar(value=SQRT_2_OVER_PI, tol=1e-5))), Scalar(value=1.0))), _unary("gelu_tanh")),
])


# -- matmul + bias → beta ---------------------------------------------------------------------
def _bias(b, mm, bias):
    node = b.node(mm)
    n = b.shape(mm)[-1]
    bshape = b.shape(bias)
    if len(node.inputs) != 2 or not bshape or bshape[-1] != n or any(d != 1 for d in bshape[:-1]) \
            or len(bshape) > len(b.shape(mm)):
        return None
    flat = bias if len(bshape) == 1 else b.op("reshape", [bias], {"shape": (n,)})
    return b.op("matmul", list(node.inputs) + [flat], dataclasses.replace(node.attrs, beta=1.0))


BIAS = RuleSet([Rule("matmul-bias", Op("add", Op("matmul", name="mm"), Const("bias")), _bias)])


# -- gated activations: act(gate) * up --------------------------------------------------------
def _gated(act):
    def build(b, g, u):
        if tuple(b.shape(g)) != tuple(b.shape(u)) or b.dtype(g) != "float32":
            return None
        return b.op("gated_act", [g, u], {"act": act})
    return build


GATED = RuleSet([Rule(f"gated-{act}", Op("mul", Op(act, Any("g")), Any("u")), _gated(act))
                 for act in ("silu", "gelu", "gelu_tanh", "relu")])


def _packed(b, m, g, u):
    """gated_act(m[..., :I], m[..., I:]) reads the merged gate/up matmul output directly."""
    last = len(b.shape(m)) - 1
    ga, ua = b.node(g).attrs, b.node(u).attrs
    n = b.shape(m)[-1]
    if not (ga.axis == ua.axis == last and ga.step == ua.step == 1 and ga.start == 0 and ga.end == ua.start
            and ua.end == n and 2 * ga.end == n):
        return None
    return b.op("gated_act", [m], b.match.root.attrs)


GATED_PACKED = RuleSet([Rule("gated-packed", Op("gated_act", Op("slice", Any("m"), name="g"),
                                                Op("slice", Any("m"), name="u")), _packed)])


# -- rotary embedding (rotate-half form) -------------------------------------------------------
def _rope(b, x, cos, sin, hi, lo):
    xs = b.shape(x)
    if len(xs) < 2 or b.dtype(x) != "float32":
        return None
    d = xs[-1]
    last = len(xs) - 1
    ha, la = b.node(hi).attrs, b.node(lo).attrs
    if not (ha.axis == la.axis == last and ha.step == la.step == 1 and la.start == 0 and ha.start == la.end
            and 2 * la.end == d and ha.end == d):
        return None
    sd = tuple(xs[-2:])
    trig = []
    for t in (cos, sin):
        s = tuple(b.shape(t))
        if len(s) < 2 or s[-2:] != sd or any(x_ != 1 for x_ in s[:-2]):
            return None
        trig.append(t if len(s) == 2 else b.op("reshape", [t], {"shape": sd}))
    return b.op("rope", [x] + trig)


ROPE = RuleSet([Rule("rope-rotate-half", Op("add", Op("mul", Any("x"), Any("cos")), Op("mul", Op(
    "concat", Op("neg", Op("slice", Any("x"), name="hi")), Op("slice", Any("x"), name="lo")), Any("sin"))), _rope)])


# -- activation epilogue: act(matmul + bias) in the matmul's output pass --------------------
def _epilogue(act):
    def build(b, mm, view=None):
        node = b.node(mm)
        if node.attrs.act != "none":
            return None
        out = b.op("matmul", list(node.inputs), dataclasses.replace(node.attrs, act=act))
        # An elementwise activation commutes with a reshape (GPT-2's Conv1D views its output).
        return out if view is None else b.op("reshape", [out], {"shape": tuple(b.shape(view))})
    return build


EPILOGUE = RuleSet([Rule(f"matmul-{act}", Op(act, Op("matmul", name="mm")), _epilogue(act))
                    for act in ("relu", "gelu", "gelu_tanh")] +
                   [Rule(f"matmul-{act}-through-view", Op(act, Op("reshape", Op("matmul", name="mm"), name="view")),
                         _epilogue(act)) for act in ("relu", "gelu", "gelu_tanh")])
