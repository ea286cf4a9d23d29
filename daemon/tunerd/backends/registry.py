"""Backends by name: `get_backend("mlx" | "torch")` imports a backend's packages only when asked
for it, so the daemon starts (and the other backend works) without them.

    get_backend(name) -> Backend            a new, empty backend (load a model into it)
    resolve_backend(spec) -> "mlx" | "torch"  `backend: auto` -> the rule in backends/auto.py
    peak_flops(device, dtype) -> float      a device's measured matmul peak, by the backend that names it
"""
from __future__ import annotations

import importlib

from .base import Backend, BackendUnavailable

# name -> (module, class, what it needs, the pip extra)
_BACKENDS = {
    "mlx": ("tunerd.backends.mlx.backend", "MLXBackend", "mlx and mlx-lm", "mlx"),
    "torch": ("tunerd.backends.torch.backend", "TorchBackend", "torch, transformers and peft", "torch"),
}
NAMES = tuple(_BACKENDS)


def get_backend(name: str) -> Backend:
    """Import and build the backend `name`; BackendUnavailable (with the install command) when its
    packages are missing."""
    if name not in _BACKENDS:
        raise ValueError(f"backend: unknown backend {name!r}; choose auto, {', '.join(NAMES)}")
    module, cls, needs, extra = _BACKENDS[name]
    try:
        impl = getattr(importlib.import_module(module), cls)
    except ImportError as e:
        raise BackendUnavailable(f"the {name} backend needs {needs}: pip install 'mactuner[{extra}]' ({e})") from e
    return impl()


def resolve_backend(spec) -> str:
    """The backend a config or ModelSpec runs on: its `backend`, or for `auto` the rule in
    tunerd.backends.auto (see README, 'Backends'), which also looks at `quantization`."""
    if spec.backend != "auto":
        return spec.backend
    from .auto import choose_backend
    return choose_backend(spec)


def peak_flops(device: str, dtype: str) -> float:
    """Measured peak FLOP/s (cached, backends/peak.py) for a device name as the backends report it
    ('cpu', 'cuda', 'cuda:0', 'mps'; 'Device(gpu, 0)' or 'Device(cpu, 0)' for MLX) in dtype 'float32' |
    'bfloat16' | 'float16': for scripts and tests; a backend's own `peak_flops()` is the same number."""
    name = "mlx" if device.startswith("Device(") or device in ("gpu", "metal") else "torch"
    return importlib.import_module(f"tunerd.backends.{name}.peak").peak_flops(device, dtype)
