"""`tunerd.backends.torch_backend.TorchBackend`: the PyTorch backend (see backends/torch/)."""
from .torch.backend import TorchBackend

__all__ = ["TorchBackend"]
