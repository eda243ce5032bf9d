"""The C kernel library: loading, BLAS hand-over, and running calls.

The library is a plain shared object built by ``pip install`` (see setup.py):
``kiln/_kernels*.so`` (vectorized for the build machine) or, with
``KILN_FORCE_GENERIC=1``, ``kiln/_kernels_generic*.so`` (portable). ``KILN_LIB``
points at any other build (e.g. the ASan build from ``make -C csrc asan``).

The BLAS is not linked: we load it here and give its ``cblas_sgemm`` to C.
``KILN_BLAS=/path/to/lib.so`` selects any library exporting ``cblas_sgemm``
(and optionally ``openblas_set_num_threads`` / ``MKL_Set_Num_Threads``);
otherwise scipy-openblas32 is used.
"""
from __future__ import annotations

import contextlib
import ctypes
import glob
import importlib.util
import os
import warnings
import threading
from typing import Optional, Sequence

import numpy as np

from . import cabi
from .. import config
from ..errors import BackendError, KilnError
from ..core.dtypes import ITEMSIZE
from ..ir.graph import Tensor
from ..ops import registry
from .c import codegen
from .c.kernels import BACKEND as C

_PKG_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_lock = threading.Lock()
_state: dict = {}

ABI_VERSION = 2  # KILN_ABI_VERSION in csrc/kiln.h


class KernelError(BackendError):
    """kiln_run stopped at call `index` with status `code` (a KILN_ERR_* in csrc/kiln.h); the
    failing kernel wrote nothing, and no later call ran."""

    def __init__(self, message: str, index: int, code: int):
        super().__init__(message)
        self.index, self.code = index, code


def _find_library() -> str:
    path = os.environ.get("KILN_LIB")
    if path:
        if not os.path.exists(path):
            raise BackendError(f"KILN_LIB={path!r} does not exist")
        return path
    stem = "_kernels_generic" if os.environ.get("KILN_FORCE_GENERIC") == "1" else "_kernels"
    found = sorted(glob.glob(os.path.join(_PKG_DIR, f"{stem}.*so")) + glob.glob(os.path.join(_PKG_DIR, f"{stem}.so")))
    if not found:
        raise BackendError(f"C kernels not built ({stem}*.so not found in {_PKG_DIR}): "
                           "run `pip install -e .` in the repository")
    return found[0]


def _load_blas(lib) -> str:
    """Load a BLAS and hand its sgemm (and thread setter) to the kernels; returns a description."""
    candidates = []
    env = os.environ.get("KILN_BLAS")
    if env:
        candidates.append((env, ("cblas_sgemm",), ("openblas_set_num_threads", "MKL_Set_Num_Threads")))
    else:
        path = _scipy_openblas_path()
        if path:
            candidates.append((path, ("scipy_cblas_sgemm", "cblas_sgemm"),
                               ("scipy_openblas_set_num_threads", "openblas_set_num_threads")))
    for path, sgemm_names, thread_names in candidates:
        try:
            with _openblas_coretype():
                blas = ctypes.CDLL(path)
        except OSError as e:
            raise BackendError(f"cannot load BLAS {path!r}: {e}") from None
        sgemm = next((getattr(blas, n) for n in sgemm_names if hasattr(blas, n)), None)
        if sgemm is None:
            raise BackendError(f"BLAS {path!r} exports none of {', '.join(sgemm_names)}")
        setter = next((getattr(blas, n) for n in thread_names if hasattr(blas, n)), None)
        _state["blas"] = blas  # keep the handle alive
        lib.kiln_set_blas(ctypes.cast(sgemm, ctypes.c_void_p),
                          ctypes.cast(setter, ctypes.c_void_p) if setter is not None else None)
        core = _corename(blas)
        if not _sgemm_self_check(sgemm):
            lib.kiln_set_blas(None, None)
            warnings.warn(f"BLAS {path} ({core}) failed Kiln's sgemm self-check; using the built-in GEMM "
                          "(set KILN_OPENBLAS_CORETYPE=inherit to use the environment's OPENBLAS_CORETYPE)")
            return f"none (built-in GEMM; {path} failed the self-check)"
        return f"{path} ({core})" if core else path
    return "none (built-in GEMM)"


def _scipy_openblas_path() -> Optional[str]:
    """Locate scipy-openblas32's library without importing the package (its import loads the
    library, and the load is where OpenBLAS reads OPENBLAS_CORETYPE)."""
    spec = importlib.util.find_spec("scipy_openblas32")
    if spec is None or not spec.submodule_search_locations:
        return None
    found = sorted(glob.glob(os.path.join(spec.submodule_search_locations[0], "lib", "libscipy_openblas*.so*")))
    return found[0] if found else None


@contextlib.contextmanager
def _openblas_coretype():
    """Choose OpenBLAS's kernel for the one dlopen that reads OPENBLAS_CORETYPE.

    This environment may pin OPENBLAS_CORETYPE to an older core (Haswell, AVX2) because old
    OpenBLAS builds misbehaved on newer CPUs. The scipy-openblas32 Kiln uses detects this
    CPU correctly and its AVX-512 kernel is ~2x faster (docs/DESIGN.md), and every load is
    checked numerically below. KILN_OPENBLAS_CORETYPE: 'auto' (default: OpenBLAS detects
    the CPU), 'inherit' (keep the environment's setting), or a core name. The process
    environment is restored right after the load.
    """
    choice = os.environ.get("KILN_OPENBLAS_CORETYPE", "auto")
    saved = os.environ.get("OPENBLAS_CORETYPE")
    if choice == "inherit":
        yield
        return
    if choice == "auto":
        os.environ.pop("OPENBLAS_CORETYPE", None)
    else:
        os.environ["OPENBLAS_CORETYPE"] = choice
    try:
        yield
    finally:
        if saved is None:
            os.environ.pop("OPENBLAS_CORETYPE", None)
        else:
            os.environ["OPENBLAS_CORETYPE"] = saved


def _corename(blas) -> str:
    for name in ("scipy_openblas_get_corename", "openblas_get_corename"):
        if hasattr(blas, name):
            fn = getattr(blas, name)
            fn.restype = ctypes.c_char_p
            return fn().decode()
    return ""


def _sgemm_self_check(sgemm) -> bool:
    """A product with odd sizes, both layouts, against float64 numpy."""
    rng = np.random.default_rng(7)
    fp = ctypes.POINTER(ctypes.c_float)
    for m, n, k, tb in ((37, 29, 53, 112), (64, 48, 96, 111), (3, 130, 70, 112)):
        a = rng.standard_normal((m, k)).astype(np.float32)
        b = rng.standard_normal((n, k) if tb == 112 else (k, n)).astype(np.float32)
        c = np.zeros((m, n), np.float32)
        sgemm(101, 111, tb, m, n, k, ctypes.c_float(1.0), a.ctypes.data_as(fp), k, b.ctypes.data_as(fp),
              k if tb == 112 else n, ctypes.c_float(0.0), c.ctypes.data_as(fp), n)
        want = a.astype(np.float64) @ (b.T if tb == 112 else b).astype(np.float64)
        if not np.allclose(c, want, rtol=1e-4, atol=1e-4 * np.abs(want).max()):
            return False
    return True


def _load():
    path = _find_library()
    try:
        lib = ctypes.CDLL(path)
    except OSError as e:
        raise BackendError(f"cannot load C kernels {path!r}: {e} (rebuild with `pip install -e .`)") from None
    lib.kiln_run.restype = ctypes.c_int
    try:
        _check_library(lib, path)
    except AttributeError as e:
        raise BackendError(f"{path} lacks {e}: the C library is stale; rebuild the C library "
                           "(`pip install -e .`)") from None
    lib.kiln_run.argtypes = [ctypes.c_void_p, ctypes.c_int64, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p]
    lib.kiln_strerror.restype = ctypes.c_char_p
    lib.kiln_strerror.argtypes = [ctypes.c_int]
    lib.kiln_build_info.restype = ctypes.c_char_p
    lib.kiln_sizeof_call.restype = ctypes.c_int64
    lib.kiln_sizeof_tensor.restype = ctypes.c_int64
    lib.kiln_set_num_threads.argtypes = [ctypes.c_int]
    lib.kiln_set_blas.argtypes = [ctypes.c_void_p, ctypes.c_void_p]
    lib.kiln_set_blas.restype = ctypes.c_int
    lib.kiln_set_flash_min_sk.argtypes = [ctypes.c_int64]
    for what, c_size, py_size in (("kiln_call", lib.kiln_sizeof_call(), ctypes.sizeof(cabi.Call)),
                                  ("kiln_tensor", lib.kiln_sizeof_tensor(), ctypes.sizeof(cabi.Tensor))):
        if c_size != py_size:
            raise BackendError(f"{path}: sizeof({what}) is {c_size} in C but {py_size} in ctypes; "
                               "the library is stale: rebuild with `pip install -e .`")
    _state["blas_path"] = _load_blas(lib)
    lib.kiln_set_num_threads(config.num_threads())
    _state["path"] = path
    return lib


def _check_library(lib, path: str) -> None:
    """The library must speak this ABI and number the ops exactly as the declarations do
    (ids index the kernel table: a library built from other declarations would run the
    wrong kernel on the right-looking call)."""
    lib.kiln_abi_version.restype = ctypes.c_int
    if lib.kiln_abi_version() != ABI_VERSION:
        raise BackendError(f"{path} has ABI version {lib.kiln_abi_version()}, Kiln needs {ABI_VERSION}: "
                           "rebuild the C library (`pip install -e .`)")
    lib.kiln_num_ops.restype = ctypes.c_int64
    lib.kiln_op_name.restype = ctypes.c_char_p
    lib.kiln_op_name.argtypes = [ctypes.c_int64]
    names = [(lib.kiln_op_name(i) or b"").decode() for i in range(lib.kiln_num_ops())]
    want = codegen.c_ops()
    if names != want:
        diff = next((f"id {i}: C has {a!r}, the declarations say {b!r}" for i, (a, b) in enumerate(zip(names, want))
                     if a != b), f"C has {len(names)} ops, the declarations {len(want)}")
        raise BackendError(f"{path}: the op table does not match the op declarations ({diff}): "
                           "rebuild the C library (`python -m kiln.backends.c.codegen`, then `pip install -e .`)")


def lib():
    """The loaded C library (loads it, and the BLAS, on first use)."""
    if "lib" not in _state:
        with _lock:
            if "lib" not in _state:
                _state["lib"] = _load()
    return _state["lib"]


def available() -> bool:
    try:
        lib()
        return True
    except KilnError:
        return False


def build_info() -> str:
    lib()
    return f"{lib().kiln_build_info().decode()} (lib {_state['path']}, blas {_state['blas_path']})"


def set_num_threads(n: int) -> None:
    lib().kiln_set_num_threads(int(n))


def set_flash_min_sk(sk: int) -> None:
    """Testing hook: use the flash attention kernel from `sk` keys (-1: the built-in rule)."""
    lib().kiln_set_flash_min_sk(int(sk))


def run_calls(calls, n: int, slots, prof=None) -> None:
    """Run `n` resolved calls (a ctypes array of cabi.Call) over `slots` (array of void*).

    Raises KernelError (index of the failing call, its code and the reason) when a kernel
    refuses its call; the outputs of that call and every later one are then unwritten."""
    failed = ctypes.c_int64(-1)
    rc = lib().kiln_run(ctypes.addressof(calls) if n else None, int(n), ctypes.addressof(slots) if n else None,
                        ctypes.addressof(prof) if prof is not None else None, ctypes.byref(failed))
    if rc != 0:
        i, ops = int(failed.value), codegen.c_ops()
        op = ops[calls[i].op] if 0 <= i < n and 0 <= calls[i].op < len(ops) else "?"
        raise KernelError(f"kiln_run failed at call {i} ({op}) with code {rc}: {lib().kiln_strerror(rc).decode()}",
                          i, rc)


def _dtype_name(a: np.ndarray) -> str:
    name = "bool" if a.dtype == np.bool_ else str(a.dtype)
    if name not in cabi.DTYPE_CODE:
        raise BackendError(f"dtype {a.dtype} has no C kernel support")
    return name


def run_op(op: str, inputs: Sequence[np.ndarray], attrs, out: np.ndarray, *, scratch_bytes: Optional[int] = None) -> None:
    """Run one op's kernel on numpy arrays; `out` must be allocated with the inferred shape/dtype.

    `out` may be the same array as inputs[0] for in-place ops. Every array must be
    C-contiguous; byte sizes are checked against the shapes before anything reaches C.
    """
    opdef = registry.get(op)
    if opdef.has(registry.FOLD_ONLY):
        raise BackendError(f"op {op} is fold-only and has no kernel")
    kernel = C.kernel(op)
    attrs = opdef.make_attrs(attrs)
    opdef.check_arity(len(inputs))
    if any(isinstance(a, np.ndarray) and a.dtype == np.uint8 for a in inputs):
        # a weight in a storage type: its logical shape is not in the array (the plan has it)
        raise BackendError(f"{op}: a stored-weight input runs through the compiled executor only")
    arrays = list(inputs) + [out]
    for i, a in enumerate(arrays):
        if not isinstance(a, np.ndarray) or not a.flags.c_contiguous:
            raise BackendError(f"{op}: argument {i} must be a C-contiguous numpy array")
    if not out.flags.writeable:
        raise BackendError(f"{op}: output array is read-only")
    in_shapes = [tuple(int(d) for d in a.shape) for a in inputs]
    out_shape = tuple(int(d) for d in out.shape)
    specs = [Tensor(f"input{i}", s, _dtype_name(a)) for i, (s, a) in enumerate(zip(in_shapes, inputs))]
    want_shape, want_dtype = opdef.infer(specs, attrs)
    if tuple(int(d) for d in want_shape) != out_shape or want_dtype != _dtype_name(out):
        raise BackendError(f"{op}: output is {list(out_shape)} {_dtype_name(out)}, "
                           f"the op produces {list(want_shape)} {want_dtype}")
    if scratch_bytes is None:
        scratch_bytes = kernel.scratch_bytes(in_shapes, out_shape, attrs)
    scratch = np.empty(max(int(scratch_bytes), 0) // 4 + 1, dtype=np.float32)
    call = (cabi.Call * 1)()
    c = call[0]
    c.op = cabi.op_id(op)
    c.n_in = len(inputs)
    slots = (ctypes.c_void_p * (len(arrays) + 1))()
    for i, a in enumerate(arrays):
        t = c.out if i == len(inputs) else getattr(c, "in")[i]
        cabi.fill_tensor(t, slot=i, offset=0, shape=a.shape, dtype=_dtype_name(a))
        if t.nbytes != a.nbytes or a.size * ITEMSIZE[_dtype_name(a)] != a.nbytes:
            raise BackendError(f"{op}: argument {i} has {a.nbytes} bytes, tensor needs {t.nbytes}")
        slots[i] = a.ctypes.data
    if scratch_bytes > 0:
        cabi.fill_tensor(c.scratch, slot=len(arrays), offset=0, shape=(int(scratch_bytes),), dtype="bool")
        slots[len(arrays)] = scratch.ctypes.data
    params = cabi.make_params(op, kernel.param_values(attrs, in_shapes, out_shape))
    c.params = ctypes.cast(ctypes.pointer(params), ctypes.c_void_p) if params is not None else None
    run_calls(call, 1, slots)
