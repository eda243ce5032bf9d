"""Op declarations, one module per family; importing this package registers them all."""
from . import attention, cache, creation, elementwise, fused, matmul, quant, reduce, shape, slot_cache  # noqa: F401  (registration)
from .registry import REGISTRY, OpDef, get  # noqa: F401
