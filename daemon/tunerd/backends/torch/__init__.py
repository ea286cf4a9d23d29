"""The PyTorch backend (CUDA, MPS, CPU): transformers + PEFT + bitsandbytes."""
from .backend import TorchBackend

__all__ = ["TorchBackend"]
