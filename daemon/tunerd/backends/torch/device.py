"""Device and dtype selection for the torch backend, and memory statistics.

`device: auto` picks cuda > mps > cpu. A dtype the device cannot train in is an error that names
the device and the dtypes it supports, never a silent fallback.
"""
from __future__ import annotations

import os
import resource
import sys

import torch

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def pick_device(name: str = "auto") -> torch.device:
    name = (name or "auto").lower()
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device: {name!r} asked for but torch sees no CUDA GPU "
                         f"(torch {torch.__version__}, cuda build: {torch.version.cuda})")
    if name == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise ValueError("device: 'mps' asked for but torch.backends.mps is not available on this host")
    if name not in ("cpu", "mps") and not name.startswith("cuda"):
        raise ValueError(f"device: unknown device {name!r}; choose auto, cuda, mps or cpu")
    return torch.device(name)


def pick_dtype(name: str, device: torch.device, checkpoint: str = "float32") -> tuple[torch.dtype, str, str]:
    """(dtype, its name, why) for `dtype: name` (auto | float32 | float16 | bfloat16) of a
    checkpoint stored in `checkpoint` on `device`: the rule of backends/dtypes.py."""
    from .peak import peak_flops
    from ..dtypes import resolve_dtype

    bf16 = device.type != "cuda" or torch.cuda.is_bf16_supported()
    chosen, why = resolve_dtype(name, device.type, checkpoint, lambda dt: peak_flops(str(device), dt), bf16)
    if device.type == "cuda" and chosen == "bfloat16" and not bf16:
        raise ValueError("dtype: bfloat16 is not supported on this GPU "
                         f"({torch.cuda.get_device_name(device)}); use float16 or float32")
    return DTYPES[chosen], chosen, why


def _rss_bytes() -> int:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:  # macOS: no /proc
        return 0


def memory_bytes(device: torch.device) -> tuple[int, int]:
    """(active, peak) bytes: device allocator on cuda/mps, process RSS on cpu."""
    if device.type == "cuda":
        return torch.cuda.memory_allocated(device), torch.cuda.max_memory_allocated(device)
    if device.type == "mps":
        active = torch.mps.current_allocated_memory()
        return active, max(active, torch.mps.driver_allocated_memory())
    rss = _rss_bytes()
    return rss, max(rss, _peak_rss_bytes())


def _peak_rss_bytes() -> int:
    """This process's peak RSS. Linux: VmHWM, the high-water mark of its own memory; not
    ru_maxrss, which after exec also counts the parent's RSS at fork (a daemon or a benchmark
    started from a large process would report the parent's size)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024  # Linux reports KiB, macOS bytes


def reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
