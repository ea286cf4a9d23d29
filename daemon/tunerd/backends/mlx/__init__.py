"""The MLX backend (mlx-lm models, LoRA layers, sampling); `backends.registry.get_backend("mlx")` builds it."""
from .backend import MLXBackend

__all__ = ["MLXBackend"]
