"""`backend: auto`: pick the fastest backend that works on this host (DESIGN.md §2).

Imports neither mlx nor torch unless a fact needs them; `HostFacts` can be passed in for tests.
"""
from __future__ import annotations

import ctypes
import importlib.util
import os
import platform
import sys
from dataclasses import dataclass
from typing import Optional

_OPTIMIZED_BLAS = ("openblas", "mkl", "blis", "accelerate", "armpl")


@dataclass
class HostFacts:
    system: str                 # platform.system(): Darwin | Linux | Windows
    machine: str                # arm64 | x86_64 | ...
    mlx_available: bool         # mlx and mlx-lm importable
    torch_available: bool       # torch, transformers and peft importable
    cuda: bool                  # torch sees an NVIDIA GPU
    mlx_blas: Optional[str]     # Linux: the library serving MLX's cblas calls (None: MLX's bundled reference BLAS)

    @property
    def mlx_blas_optimized(self) -> bool:
        return bool(self.mlx_blas) and any(n in os.path.basename(self.mlx_blas).lower() + self.mlx_blas.lower()
                                           for n in _OPTIMIZED_BLAS)


class _DlInfo(ctypes.Structure):
    _fields_ = [("dli_fname", ctypes.c_char_p), ("dli_fbase", ctypes.c_void_p),
                ("dli_sname", ctypes.c_char_p), ("dli_saddr", ctypes.c_void_p)]


def mlx_blas_library() -> Optional[str]:
    """The shared library that resolves `cblas_sgemm` in the process's global symbol scope.

    The `mlx[cpu]` wheel ships a reference BLAS; an optimized BLAS preloaded
    (`LD_PRELOAD=/usr/lib/x86_64-linux-gnu/openblas-pthread/libblas.so.3`) interposes its
    `cblas_*` symbols, and MLX's matmuls go there. Without a preload nothing global defines
    `cblas_sgemm` and MLX uses its own reference copy (-> None). Looking for "openblas" in
    /proc/self/maps is not enough: numpy's wheel maps `libscipy_openblas64_`, whose symbols are
    suffixed (`scipy_cblas_sgemm64_`) and serve numpy only.
    """
    if sys.platform != "linux":
        return None
    try:
        glob = ctypes.CDLL(None)
        fn = glob.cblas_sgemm
    except (OSError, AttributeError):
        return None
    info = _DlInfo()
    if not glob.dladdr(ctypes.cast(fn, ctypes.c_void_p), ctypes.byref(info)) or not info.dli_fname:
        return None
    return os.path.realpath(info.dli_fname.decode())


def _importable(*names: str) -> bool:
    return all(importlib.util.find_spec(n) is not None for n in names)


def detect() -> HostFacts:
    system, machine = platform.system(), platform.machine().lower()
    torch_ok = _importable("torch", "transformers", "peft")
    cuda = False
    if torch_ok and (system != "Linux" or os.path.exists("/proc/driver/nvidia/version")
                     or os.path.exists("/dev/nvidiactl")):
        import torch

        cuda = torch.cuda.is_available()
    return HostFacts(system=system, machine=machine, mlx_available=_importable("mlx", "mlx_lm"),
                     torch_available=torch_ok, cuda=cuda, mlx_blas=mlx_blas_library())


def choose_backend(cfg=None, facts: Optional[HostFacts] = None) -> str:
    """The backend `backend: auto` resolves to: "mlx" or "torch".

    Rule, in order:
    1. macOS on Apple Silicon with mlx + mlx-lm importable -> mlx (Metal; the fast path, incl. 4-bit).
    2. An NVIDIA GPU visible to torch -> torch (CUDA; bitsandbytes QLoRA).
    3. Only one backend installed -> that one.
    4. macOS without MLX -> torch (MPS or CPU).
    5. Linux/other CPU-only hosts with both installed -> torch, by measurement: torch's LoRA step
       beats MLX's on this CPU in every case measured, fp32 and 4-bit, with or without an optimized
       BLAS for MLX (table below). An optimized BLAS narrows the gap (3.4-9x faster MLX) but does
       not close it; without one MLX is 16-28x slower than torch. MLX's CPU 4-bit
       (`quantized_matmul`) is slower still. So `backend: mlx` on a Linux CPU is an explicit
       choice (parity checks, mlx-only features), and the daemon warns when MLX runs there
       without an optimized BLAS (`mlx_blas_library()` tells which library serves it).

    Measured with `python bench/bench_torch.py --backends --repeat 3` (LoRA r 8 on all linear
    layers, batch 8 rows of 25-256 tokens, unpacked, float32 compute, AdamW; median ms per step,
    best of 3 runs; 2-core x86-64 shared with other jobs, torch 2.13 / MKL, mlx 0.32.4 [cpu]
    uncompiled (the mlx backend's CPU default), Nov 2026):

        model                      torch fp32  torch nf4  mlx fp32+OpenBLAS  mlx 4bit+OpenBLAS  mlx fp32 ref BLAS
        tiny  (hidden 64, 2 layers)      18         22*          84               195                285
        bench (hidden 256, 4 layers)    128        148          402              2664               3645
        (* re-measured in 3 more runs, 22-24 ms each; the sweep's own best of 3 was a disturbed 231 ms)

    Re-measured at a real shape (`python bench/bench_scale.py --shape mid`: bf16 checkpoint, hidden 512,
    8 layers, 32k vocabulary, rows of 30-512 tokens, each backend with its defaults): torch 1,391 real
    tokens/s in bfloat16 (dtype auto: AMX makes bf16 matmuls 9x float32's on this CPU) and 1,094 in
    float32, MLX 322 in float32 (its CPU bfloat16 is 20x slower than float32): torch 3.4-4.3x.
    With an NVIDIA GPU torch stays the default (bitsandbytes QLoRA, the tested CUDA path); MLX's CUDA
    build (`pip install 'mactuner[mlx-cuda]'`, then `backend: mlx`) is an option that ran 11.6k tok/s
    vs torch's 9.5k on an H100 before this session's torch fixes (DESIGN.md §2); not re-measured since.
    """
    return choose_backend_with_reason(cfg, facts)[0]


def choose_backend_with_reason(cfg=None, facts: Optional[HostFacts] = None) -> tuple[str, str]:
    """(backend, a sentence saying why) -- the rule of `choose_backend`, for logs and `tunerctl`."""
    facts = facts or detect()
    quantized = bool(cfg is not None and (getattr(cfg, "quantization", "none") or "none").lower()
                     not in ("none", ""))
    if facts.system == "Darwin" and facts.machine in ("arm64", "aarch64") and facts.mlx_available:
        return "mlx", "Apple Silicon with MLX: Metal is the fast path (incl. 4-bit)"
    if facts.cuda and facts.torch_available:
        return "torch", "an NVIDIA GPU is visible to torch"
    if not facts.torch_available and not facts.mlx_available:
        raise RuntimeError("no training backend is installed: pip install 'mactuner[torch]' or 'mactuner[mlx]'")
    if not facts.torch_available:
        why = "only mlx is installed"
        if facts.system == "Linux" and not facts.mlx_blas_optimized:
            why += ("; it runs on its reference BLAS here (~14x slower) unless an optimized one is preloaded "
                    "(LD_PRELOAD; `tunerctl info` says which)")
        return "mlx", why
    if not facts.mlx_available:
        return "torch", "only torch is installed"
    if facts.system == "Darwin":
        return "torch", "macOS without Apple Silicon MLX: torch (MPS or CPU)"
    if quantized:
        return "torch", ("CPU-only host, 4-bit: bitsandbytes nf4 steps measured 9-18x faster than "
                         "MLX's CPU quantized_matmul")
    if facts.mlx_blas_optimized:
        return "torch", (f"CPU-only host: even with an optimized BLAS for MLX ({facts.mlx_blas}) torch "
                         f"trained 3.1-4.7x faster (and 3.4-4.3x at a 32k-vocabulary mid-size shape)")
    return "torch", ("CPU-only host: MLX would use its reference BLAS (no optimized BLAS preloaded); torch's "
                     "LoRA step measured 16-28x faster")
