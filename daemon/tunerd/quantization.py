"""Quantization of the frozen base (QLoRA): the one place for its names, their aliases, their bits
and what each backend makes of them. Imports nothing of ours (it sits at the floor).

    config name                  canonical   bits   mlx                         torch (bitsandbytes)
    none (or empty)              none        0      -                           -
    4bit, nf4, int4              4bit        4      affine, `bits` (default 4)  4-bit, bnb_4bit_quant_type
    fp4                          4bit        4      (not on mlx)                4-bit fp4
    8bit, int8                   8bit        8      affine 8-bit                LLM.int8()

On mlx the `bits` key picks another affine width (2, 3, 5, 6, 8) under a 4-bit request; nf4/fp4
are bitsandbytes' data types, which mlx approximates (nf4, int4) with its affine 4-bit.
"""
from __future__ import annotations

from typing import Optional

ALIASES = {"none": "none", "4bit": "4bit", "nf4": "4bit", "int4": "4bit", "fp4": "4bit",
           "8bit": "8bit", "int8": "8bit"}
NAMES = tuple(ALIASES)                        # what a config's `quantization` may say
BITS = {"none": 0, "4bit": 4, "8bit": 8}      # canonical name -> bits per weight
BACKENDS = {"mlx": tuple(n for n in NAMES if n != "fp4"), "torch": NAMES}   # the names each backend runs
MLX_BITS = (2, 3, 4, 5, 6, 8)                 # affine widths the mlx-only `bits` key may pick


def canonical(name: Optional[str], backend: str = "") -> str:
    """none | 4bit | 8bit for a config name (case-insensitive; empty is none); a ValueError naming
    the allowed names (those of `backend` when given) otherwise."""
    q = (name or "none").lower()
    allowed = BACKENDS.get(backend, NAMES)
    if q not in allowed:
        on = f" on {backend}" if backend in BACKENDS else ""
        raise ValueError(f"quantization: {name!r} is not one of {', '.join(allowed)}{on}")
    return ALIASES[q]


def bits(name: Optional[str]) -> int:
    """0, 4 or 8: the bits per weight a config name asks for (memory estimates, the fit check)."""
    return BITS[canonical(name)]


def mlx_bits(name: Optional[str], bits_key: int = 4) -> int:
    """MLX's affine width: 0 (none), 8 for 8bit/int8, else `bits_key` (the mlx-only `bits`, one of
    MLX_BITS; default 4) under a 4-bit request."""
    b = BITS[canonical(name, "mlx")]
    return bits_key if b == 4 and bits_key in MLX_BITS else b


def torch_mode(name: Optional[str]) -> Optional[str]:
    """bitsandbytes' mode: "4bit" | "8bit" | None (no quantization)."""
    q = canonical(name, "torch")
    return None if q == "none" else q


def bnb_4bit_type(name: Optional[str], quant_type: str = "nf4") -> str:
    """The bitsandbytes 4-bit data type: fp4 when the name says so, else the config's
    `bnb_4bit_quant_type` (nf4 | fp4)."""
    return "fp4" if (name or "").lower() == "fp4" else quant_type
