"""`dtype: auto`: which float dtype a model's weights and activations use, and why.

One rule for both backends and every use (training, chat, evaluation, fuse):
- An explicit `dtype` (float32 | float16 | bfloat16) always wins.
- A float32 checkpoint stays float32 (nothing is down-cast that the user did not ask for).
- On an accelerator (CUDA, MPS, Metal) a 16-bit checkpoint keeps its dtype, as mlx-lm and
  transformers' `dtype="auto"` do (bfloat16 becomes float16 on a GPU without bfloat16).
- On a CPU a 16-bit checkpoint keeps its dtype only where 16-bit matmuls are measured at least
  `CPU_16BIT_MIN_SPEEDUP` x faster than float32 (`measure` gives FLOP/s, cached per device), else it
  is trained in float32. Measured on a 2-core x86-64 with AMX (Nov 2026, training/flops.py): torch
  bfloat16 1,320 GFLOP/s vs float32 146 (a LoRA step on a 74M bf16 model 4.6x faster); MLX bfloat16
  7 GFLOP/s vs float32 159 (a step 13x slower). So auto is bfloat16 for torch and float32 for MLX there.
LoRA parameters stay float32 under a 16-bit base (PEFT's `autocast_adapter_dtype`, mlx-lm's
LoRALinear); QLoRA's adapters follow the compute dtype on torch, as TRL does.
"""
from __future__ import annotations

from typing import Callable, Optional

DTYPES = ("float32", "float16", "bfloat16")
CHOICES = ("auto",) + DTYPES
CPU_16BIT_MIN_SPEEDUP = 1.5


def checkpoint_dtype(model_config: dict) -> str:
    """The float dtype a checkpoint's config.json declares (`torch_dtype`, or `dtype` in newer
    transformers); float32 when it declares none."""
    c = model_config or {}
    for key in ("torch_dtype", "dtype"):
        value = c.get(key) or (c.get("text_config") or {}).get(key)
        if isinstance(value, str):
            value = value.replace("torch.", "")
            if value in DTYPES:
                return value
    return "float32"


def read_checkpoint_dtype(model: str) -> Optional[str]:
    """checkpoint_dtype of a local model directory; None when `model` is not one (a hub id)."""
    from ..model_config import read_model_config
    doc = read_model_config(model, cache=False)
    return checkpoint_dtype(doc) if doc is not None else None


def resolve_dtype(requested: str, device: str, ckpt: str, measure: Optional[Callable[[str], float]] = None,
                  bf16_supported: bool = True) -> tuple[str, str]:
    """(dtype, reason). `device` is the kind: cuda | mps | metal | cpu (anything else counts as an
    accelerator); `measure(dtype)` gives the device's matmul FLOP/s in that dtype (CPU only)."""
    requested = (requested or "auto").lower()
    if requested not in CHOICES:
        raise ValueError(f"dtype: {requested!r} is not one of {', '.join(CHOICES)}")
    if requested != "auto":
        return requested, "set in the config"
    if ckpt not in ("float16", "bfloat16"):
        return "float32", "the checkpoint is float32"
    if device != "cpu":
        if ckpt == "bfloat16" and not bf16_supported:
            return "float16", f"the checkpoint is bfloat16 but this {device} device has no bfloat16"
        return ckpt, f"the checkpoint's dtype, kept on {device}"
    if measure is None:
        return "float32", f"{ckpt} checkpoint on a CPU: float32 (16-bit speed not measured)"
    fast, base = measure(ckpt), measure("float32")
    ratio = fast / max(base, 1.0)
    if ratio >= CPU_16BIT_MIN_SPEEDUP:
        return ckpt, f"the checkpoint's dtype: {ckpt} matmuls measured {ratio:.1f}x float32's speed on this CPU"
    return "float32", f"{ckpt} matmuls measured {ratio:.2f}x float32's speed on this CPU: float32 is faster"
