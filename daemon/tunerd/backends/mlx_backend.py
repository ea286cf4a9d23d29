"""The MLX backend (implementation in `tunerd.backends.mlx`); imported only when asked for."""
from .mlx import MLXBackend, blas_warning

__all__ = ["MLXBackend", "blas_warning"]
