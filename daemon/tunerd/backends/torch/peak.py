"""The device's peak matmul FLOP/s in a dtype, measured with torch (cached: backends/peak.py)."""
from __future__ import annotations

import torch

from ..peak import cached_peak, time_matmul


def peak_flops(device: str, dtype: str) -> float:
    """measure_peak, once per (device, dtype) (backends.peak.cached_peak)."""
    return cached_peak(device, dtype, lambda: measure_peak(device, dtype))


def measure_peak(device: str, dtype: str) -> float:
    dev = torch.device(device)
    n = 8192 if dev.type == "cuda" else 4096 if dev.type == "mps" else 1024
    gen = torch.Generator().manual_seed(0)   # never the global RNG a training job draws from
    a = torch.randn(n, n, generator=gen).to(dev, getattr(torch, dtype))
    b = torch.randn(n, n, generator=gen).to(dev, getattr(torch, dtype))

    def run():
        torch.mm(a, b)
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
        elif dev.type == "mps":
            torch.mps.synchronize()
    with torch.no_grad():
        return time_matmul(run, n)
