"""Where Triton kernels run, and the small shared facts every launcher needs.

Triton decides at decoration time whether a ``@triton.jit`` function is compiled for a GPU
or run by its CPU interpreter (the ``TRITON_INTERPRET`` environment variable). So whether
this backend is interpreted is fixed when ``kiln.backends.triton`` is first imported:
``INTERPRETED`` records it, and ``device()`` picks 'cpu' (interpreter, on CPU torch
tensors) or 'cuda'; anything else is a KilnError saying what is missing.
"""
from __future__ import annotations

from typing import Sequence

from ...errors import BackendError

try:
    import torch
    import triton
    import triton.language as tl  # noqa: F401
except ImportError as e:  # pragma: no cover - the gpu extra is missing
    raise BackendError(f"the Triton backend needs torch and triton (pip install 'kiln-runtime[gpu]'): {e}") from None

INTERPRETED = bool(triton.knobs.runtime.interpret)
if INTERPRETED:
    from triton.runtime.interpreter import InterpretedFunction
    if not isinstance(tl.standard.zeros_like, InterpretedFunction):
        raise BackendError("TRITON_INTERPRET=1 was set after triton was imported: Triton's own library is "
                           "compiled-mode while these kernels would be interpreted; set it before importing triton")
    # Triton imports this lazily on the first launch and asserts interpreter mode then;
    # importing it now lets the caller unset TRITON_INTERPRET once the kernels are decorated.
    import triton.experimental.gluon  # noqa: F401

MAX_DIMS = 8          # matches kiln.ops.registry.MAX_DIMS

TORCH_DTYPES = {"float32": torch.float32, "int64": torch.int64, "int32": torch.int32, "bool": torch.bool}


def device() -> "torch.device":
    """The device kernels run on: 'cuda' on a GPU build, 'cpu' under Triton's interpreter."""
    if INTERPRETED:
        return torch.device("cpu")
    if torch.cuda.is_available():
        # With its index: tensors made on "cuda" report "cuda:0", and devices compare by index.
        return torch.device("cuda", torch.cuda.current_device())
    raise BackendError("the Triton backend needs a CUDA GPU (torch.cuda.is_available() is False), or "
                       "TRITON_INTERPRET=1 in the environment before kiln.backends.triton is first imported "
                       "to run its kernels in Triton's CPU interpreter")


def next_pow2(n: int) -> int:
    return 1 << max(0, int(n) - 1).bit_length()


def block(n: int, lo: int = 16, hi: int = 1024) -> int:
    """A power-of-two block size covering n, clamped to [lo, hi]."""
    return max(lo, min(hi, next_pow2(max(1, n))))


def contiguous_strides(shape: Sequence[int]) -> list[int]:
    out, acc = [], 1
    for d in reversed(list(shape)):
        out.append(acc)
        acc *= int(d)
    return out[::-1]


def broadcast_strides(shape: Sequence[int], out_shape: Sequence[int]) -> list[int]:
    """Element strides of a contiguous tensor of `shape` read as `out_shape` (0 on broadcast axes)."""
    lead = len(out_shape) - len(shape)
    own = contiguous_strides(shape)
    return [0 if i < lead or int(shape[i - lead]) == 1 else own[i - lead] for i in range(len(out_shape))]


def coalesce(shape: Sequence[int], *strides: Sequence[int]) -> tuple[list[int], list[list[int]]]:
    """Drop size-1 axes and merge neighbours that every operand walks contiguously, so a
    strided kernel loops over as few axes as possible (often one: the flat fast path)."""
    keep = [i for i, d in enumerate(shape) if int(d) != 1]
    dims = [int(shape[i]) for i in keep]
    sts = [[int(s[i]) for i in keep] for s in strides]
    i = len(dims) - 1
    while i > 0:
        if all(s[i - 1] == s[i] * dims[i] for s in sts):
            dims[i - 1] *= dims[i]
            for s in sts:
                s[i - 1] = s[i]
                del s[i]
            del dims[i]
        i -= 1
    if not dims:
        return [1], [[0] for _ in sts]
    return dims, sts


# Never evicted: a recorded CUDA graph keeps reading these tensors' addresses. Each holds at
# most 4 x MAX_DIMS int64, and there is one per distinct shape a plan launches.
_META: dict = {}


def meta(values: Sequence[int], dev) -> "torch.Tensor":
    """A small int64 device tensor of shape/stride facts for a kernel, uploaded once per
    distinct content (kernels read it with tl.load, so no per-launch host work beyond a lookup)."""
    key = (str(dev), tuple(int(v) for v in values))
    t = _META.get(key)
    if t is None:
        t = torch.tensor(key[1] or [0], dtype=torch.int64, device=dev)
        _META[key] = t
    return t


def padded(*rows: Sequence[int]) -> list[int]:
    """Rows of at most MAX_DIMS ints, each padded to MAX_DIMS, concatenated (the meta layout)."""
    out: list[int] = []
    for r in rows:
        r = [int(x) for x in r]
        if len(r) > MAX_DIMS:
            raise BackendError(f"triton backend: {len(r)} dims exceed the limit of {MAX_DIMS}")
        out += r + [0] * (MAX_DIMS - len(r))
    return out


class Context:
    """Per-executor launch context: the device and a device-side error flag.

    Kernels that index by runtime data (ids, cache positions) cannot raise; instead they
    store a nonzero code into ``flag`` and write nothing out of bounds. The executor
    reads the flag once per run, where it synchronizes anyway, and raises a KilnError
    naming the node (``code`` is set per launch by the executor)."""

    def __init__(self, dev=None):
        self.device = torch.device(dev) if dev is not None else device()
        if self.device.type == "cuda" and self.device.index is None:
            self.device = torch.device("cuda", torch.cuda.current_device())
        self.flag = torch.zeros(1, dtype=torch.int32, device=self.device)
        self.code = 1

    def check(self, what=None) -> None:
        """Raise if a kernel reported bad runtime data since the last check; ``what(code)`` names it."""
        code = int(self.flag.item())
        if code:
            self.flag.zero_()
            where = what(code) if what is not None else "a kernel"
            raise BackendError(f"{where}: an index or cache position was out of range at run time")
