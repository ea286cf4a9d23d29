"""Facts about the host: memory, backends installed, devices, the BLAS MLX will use."""
from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import platform
import sys

OPENBLAS_CANDIDATES = (
    "/usr/lib/x86_64-linux-gnu/openblas-pthread/libblas.so.3",
    "/usr/lib/aarch64-linux-gnu/openblas-pthread/libblas.so.3",
    "/usr/lib64/libopenblas.so.0",
)


def memory() -> tuple[int, int]:
    """(total, available) bytes of host memory."""
    try:
        info = {}
        with open("/proc/meminfo") as f:
            for line in f:
                k, v = line.split(":", 1)
                info[k] = int(v.split()[0]) * 1024
        return info["MemTotal"], info.get("MemAvailable", info["MemFree"])
    except OSError:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
        return total, total  # macOS: no cheap "available"; callers treat it as an upper bound


def package_version(name: str) -> str:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return ""


def backend_status() -> list[dict]:
    out = []
    for name, mods in (("mlx", ("mlx", "mlx_lm")), ("torch", ("torch", "transformers", "peft"))):
        missing = [m for m in mods if importlib.util.find_spec(m) is None]
        out.append({"name": name, "available": not missing,
                    "version": package_version(name),
                    "reason": f"not installed: {', '.join(missing)} (pip install 'mactuner[{name}]')"
                    if missing else ""})
    return out


def optimized_blas_path() -> str:
    """An OpenBLAS to preload for MLX on Linux, or '' (macOS uses Accelerate)."""
    if sys.platform != "linux":
        return ""
    return next((p for p in OPENBLAS_CANDIDATES if os.path.exists(p)), "")


def blas_preloaded() -> bool:
    return "openblas" in os.environ.get("LD_PRELOAD", "")


def is_apple_silicon() -> bool:
    return sys.platform == "darwin" and platform.machine() == "arm64"


def training_device(backend: str) -> tuple[str, int]:
    """(device kind, free bytes) a job on `backend` would train on: an NVIDIA GPU's free memory for
    torch when CUDA is visible, else the host's available memory (Metal and MPS share it)."""
    from .backends.auto import detect

    if backend == "torch" and detect().cuda:
        import torch
        return "cuda", int(torch.cuda.mem_get_info()[0])
    if is_apple_silicon():
        return ("metal" if backend == "mlx" else "mps"), memory()[1]
    return "cpu", memory()[1]


def devices() -> list[dict]:
    """What `tunerctl info` lists: the CPU (torch), and MLX's device with how it computes (Metal,
    or on Linux the BLAS it found, with the package to install when only the slow reference one is)."""
    total, avail = memory()
    out = [{"name": "cpu", "backend": "torch", "memory_total_bytes": total, "memory_free_bytes": avail,
            "detail": ""}]
    if any(b["name"] == "mlx" and b["available"] for b in backend_status()):
        if is_apple_silicon():
            name, detail = "gpu", "Metal"
        else:
            from .backends.auto import mlx_blas_library
            lib = mlx_blas_library()
            name = "cpu"
            detail = f"BLAS: {lib}" if lib else reference_blas_hint()
        out.append({"name": name, "backend": "mlx", "memory_total_bytes": total, "memory_free_bytes": avail,
                    "detail": detail})
    return out


def default_backend() -> str:
    """The backend `backend: auto` picks on this host for a model it knows nothing about, or ''
    when that cannot be told (a broken install: `info` must still answer)."""
    try:
        from .backends.auto import choose_backend
        from .config.schema import TrainConfig
        return choose_backend(TrainConfig(model="?"))
    except Exception:  # noqa: BLE001
        return ""


def blas_hint() -> str:
    """'' when MLX's matmuls are fast here (macOS: Accelerate/Metal; Linux: an optimized BLAS
    serves MLX's cblas calls, backends.auto.mlx_blas_library); else the one sentence that says so
    and what to do, used by the daemon log, the MLX backend's warning, `backend: auto` and `info`."""
    if sys.platform != "linux":
        return ""
    from .backends.auto import mlx_blas_library

    return "" if mlx_blas_library() else reference_blas_hint()


def reference_blas_hint() -> str:
    """blas_hint's sentence, for a host already known to run MLX on its reference BLAS."""
    found = optimized_blas_path()
    fix = (f"start tunerd again (it preloads {found}) or set LD_PRELOAD={found}" if found else
           "install an optimized one (apt-get install libopenblas0-pthread) and start tunerd again")
    return f"MLX uses its reference BLAS on this host (training ~14x slower): {fix}"
