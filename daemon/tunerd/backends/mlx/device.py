"""MLX's device, dtypes and memory: which device the model runs on and how much it holds."""
from __future__ import annotations

import mlx.core as mx

DTYPES = {"float32": mx.float32, "float16": mx.float16, "bfloat16": mx.bfloat16}


def device_kind() -> str:
    """cpu | metal | gpu (MLX's CUDA build)."""
    if mx.default_device().type == mx.cpu:
        return "cpu"
    return "metal" if mx.metal.is_available() else "gpu"


def set_memory_limits() -> None:
    """On Metal, wire up to the recommended working set as mlx-lm does (fewer page-outs of model
    weights under memory pressure). The buffer cache is bounded by clearing it after every step,
    eval batch and reply (`clear_cache`), as mlx-lm's trainer does: with a new sequence length almost
    every step, freed buffers of old shapes otherwise pile up until the device is full (DESIGN.md §2)."""
    if device_kind() != "metal":
        return
    info = mx.device_info() if hasattr(mx, "device_info") else mx.metal.device_info()
    limit = info.get("max_recommended_working_set_size")
    if limit:
        mx.set_wired_limit(int(limit))


def memory_bytes() -> tuple[int, int]:
    """(active, peak) bytes of MLX's allocator."""
    return int(mx.get_active_memory()), int(mx.get_peak_memory())
