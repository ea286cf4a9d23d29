"""The device's peak matmul FLOP/s in a dtype, measured with MLX (cached: backends/peak.py)."""
from __future__ import annotations

import mlx.core as mx

from ..peak import cached_peak, time_matmul


def peak_flops(device: str, dtype: str) -> float:
    """measure_peak, once per (device, dtype) (backends.peak.cached_peak)."""
    return cached_peak(device, dtype, lambda: measure_peak(device, dtype))


def measure_peak(device: str, dtype: str) -> float:
    n = 1024 if mx.default_device().type == mx.cpu else 8192
    dt = {"float32": mx.float32, "float16": mx.float16, "bfloat16": mx.bfloat16}[dtype]
    ka, kb = mx.random.split(mx.random.key(0))   # never the global RNG a training job draws from
    a = mx.random.normal((n, n), key=ka).astype(dt)
    b = mx.random.normal((n, n), key=kb).astype(dt)
    mx.eval(a, b)
    return time_matmul(lambda: mx.eval(a @ b), n)
