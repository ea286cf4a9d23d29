"""The device's peak matmul FLOP/s in a dtype, measured with torch (see training/flops.py)."""
from __future__ import annotations

import torch

from ...training.flops import time_matmul
from .device import DTYPES


def measure_peak(device: str, dtype: str) -> float:
    dev = torch.device(device)
    n = 8192 if dev.type == "cuda" else 4096 if dev.type == "mps" else 1024
    # its own generator: measured once per daemon (then cached), the global RNG a job's dropout
    # draws from must not move, or the first job after a start differs from the next (issue 10)
    gen = torch.Generator(device=dev).manual_seed(0)
    a = torch.randn(n, n, device=dev, generator=gen).to(DTYPES[dtype])
    b = torch.randn(n, n, device=dev, generator=gen).to(DTYPES[dtype])

    def run():
        torch.mm(a, b)
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
        elif dev.type == "mps":
            torch.mps.synchronize()
    with torch.no_grad():
        return time_matmul(run, n)
