"""The MLX backend package; `tunerd.backends.mlx_backend.MLXBackend` re-exports it."""
from .backend import MLXBackend
from .model import blas_warning

__all__ = ["MLXBackend", "blas_warning"]
