"""PyTorch frontend: torch.export + one ATen handler per op."""
from .export import export, from_exported_program, supported_ops  # noqa: F401
