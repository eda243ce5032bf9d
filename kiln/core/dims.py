"""Symbolic dimensions: integer polynomials over named symbols.

torch.export names dynamic sizes ``s0``, ``s27``...; shapes like ``[1, s0*12]``
keep them symbolic until a call binds them. Transformers only ever need sums
and products of symbols (plus exact division by a constant), so a canonical
polynomial is enough and makes equality a plain comparison of terms.
"""
from __future__ import annotations

import re
from typing import Mapping, Union

from ..errors import ShapeError

Monomial = tuple[str, ...]  # sorted symbol names; () is the constant term


class Sym:
    __slots__ = ("terms",)

    def __init__(self, terms: Mapping[Monomial, int]):
        self.terms = {m: c for m, c in terms.items() if c != 0}

    @staticmethod
    def var(name: str) -> "Sym":
        return Sym({(name,): 1})

    # -- arithmetic -------------------------------------------------------------
    def __add__(self, other: "DimLike") -> "Dim":
        o = _as_sym(other)
        terms = dict(self.terms)
        for m, c in o.terms.items():
            terms[m] = terms.get(m, 0) + c
        return _norm(Sym(terms))

    __radd__ = __add__

    def __neg__(self) -> "Dim":
        return _norm(Sym({m: -c for m, c in self.terms.items()}))

    def __sub__(self, other: "DimLike") -> "Dim":
        return self + (-_as_sym(other))

    def __rsub__(self, other: "DimLike") -> "Dim":
        return _as_sym(other) + (-self)

    def __mul__(self, other: "DimLike") -> "Dim":
        o = _as_sym(other)
        terms: dict[Monomial, int] = {}
        for m1, c1 in self.terms.items():
            for m2, c2 in o.terms.items():
                m = tuple(sorted(m1 + m2))
                terms[m] = terms.get(m, 0) + c1 * c2
        return _norm(Sym(terms))

    __rmul__ = __mul__

    def __floordiv__(self, other: "DimLike") -> "Dim":
        if isinstance(other, int) and other != 0 and all(c % other == 0 for c in self.terms.values()):
            return _norm(Sym({m: c // other for m, c in self.terms.items()}))
        o = _as_sym(other)
        if len(o.terms) == 1:
            (mono, coef), = o.terms.items()
            out: dict[Monomial, int] = {}
            for m, c in self.terms.items():
                rest = list(m)
                try:
                    for s in mono:
                        rest.remove(s)
                except ValueError:
                    break
                if c % coef:
                    break
                out[tuple(rest)] = c // coef
            else:
                return _norm(Sym(out))
        raise ShapeError(f"symbolic size {self} is not exactly divisible by {other}")

    # -- comparison / evaluation ------------------------------------------------
    def __eq__(self, other: object) -> bool:
        if isinstance(other, (int, Sym)):
            return _as_sym(other).terms == self.terms
        return NotImplemented

    def __hash__(self) -> int:
        return hash(tuple(sorted(self.terms.items())))

    @property
    def symbols(self) -> set[str]:
        return {s for m in self.terms for s in m}

    def evaluate(self, binding: Mapping[str, int]) -> int:
        total = 0
        for m, c in self.terms.items():
            v = c
            for s in m:
                if s not in binding:
                    raise ShapeError(f"symbolic size {self} needs a value for {s!r}")
                v *= binding[s]
            total += v
        return total

    def __repr__(self) -> str:
        parts = []
        for m, c in sorted(self.terms.items(), key=lambda t: (-len(t[0]), t[0])):
            body = "*".join(m)
            if not body:
                parts.append(str(c))
            elif c == 1:
                parts.append(body)
            elif c == -1:
                parts.append("-" + body)
            else:
                parts.append(f"{c}*{body}")
        return "+".join(parts).replace("+-", "-") or "0"


Dim = Union[int, Sym]
DimLike = Union[int, Sym]


def _as_sym(d: DimLike) -> Sym:
    if isinstance(d, Sym):
        return d
    if isinstance(d, int):
        return Sym({(): d})
    raise TypeError(f"not a dimension: {d!r}")


def _norm(s: Sym) -> Dim:
    """A Sym with no symbols is just an int."""
    if not s.terms:
        return 0
    if set(s.terms) == {()}:
        return s.terms[()]
    return s


def is_static(shape) -> bool:
    return all(isinstance(d, int) for d in shape)


def evaluate(d: Dim, binding: Mapping[str, int]) -> int:
    return d if isinstance(d, int) else d.evaluate(binding)


def resolve_shape(shape, binding: Mapping[str, int]) -> tuple[int, ...]:
    return tuple(evaluate(d, binding) for d in shape)


def numel(shape) -> Dim:
    n: Dim = 1
    for d in shape:
        n = n * d
    return n


def symbols_of(shape) -> set[str]:
    out: set[str] = set()
    for d in shape:
        if isinstance(d, Sym):
            out |= d.symbols
    return out


_TOKEN = re.compile(r"\s*(?:(\d+)|([A-Za-z_]\w*)|(.))")


def parse(text: str) -> Dim:
    """Inverse of repr: '12*s0+3', '-s1', 's0*s1' -> Dim. Used when loading files."""
    text = str(text).strip()
    if re.fullmatch(r"-?\d+", text):
        return int(text)
    total: Dim = 0
    sign = 1
    term: Dim = 1
    expect_factor = True
    for num, name, other in _TOKEN.findall(text):
        if num or name:
            if not expect_factor:
                raise ShapeError(f"bad symbolic size {text!r}")
            term = term * (int(num) if num else Sym.var(name))
            expect_factor = False
        elif other == "*" and not expect_factor:
            expect_factor = True
        elif other in "+-" and (not expect_factor or (other == "-" and term == 1)):
            if not expect_factor:
                total = total + sign * term
                term = 1
                sign = 1
            if other == "-":
                sign = -sign
            expect_factor = True
        else:
            raise ShapeError(f"bad symbolic size {text!r}")
    if expect_factor:
        raise ShapeError(f"bad symbolic size {text!r}")
    return total + sign * term


def fmt_shape(shape) -> str:
    return "[" + ", ".join(str(d) for d in shape) + "]"
