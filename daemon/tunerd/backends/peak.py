"""The device's peak matmul FLOP/s in a dtype: measured once, then remembered. MFU's denominator
(training/flops.py) and what `dtype: auto` weighs (backends/dtypes.py).

    cached_peak(device, dtype, measure) -> FLOP/s   `measure()` is a backend's (mlx/peak.py, torch/peak.py)
    time_matmul(run, n) -> FLOP/s                   an n x n x n matmul, timed after a warm-up
    keep_peaks_in(path)                             remember them in this JSON file too

The peak is measured, not looked up: one large matmul in the training dtype on the device, timed
after a warm-up, cached per (device, dtype) in memory and, once the daemon named one (Core: its
home's device_peak.json, whether the home came from --home or $TUNER_HOME), in a file, so a daemon
measures each device once. This module imports neither mlx nor torch.
"""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Callable, Optional

from ..files import atomic_write_text

_PEAKS: dict[tuple[str, str], float] = {}
_FILE: Optional[Path] = None


def keep_peaks_in(path: Optional[Path]) -> None:
    """Read and write measured peaks in `path` (None: in memory only)."""
    global _FILE
    _FILE = Path(path) if path else None


def cached_peak(device: str, dtype: str, measure: Callable[[], float]) -> float:
    """The peak FLOP/s of `device` in `dtype`: measured once (by `measure`), then remembered."""
    key = (device, dtype)
    if key in _PEAKS:
        return _PEAKS[key]
    path = _FILE
    stored = {}
    if path is not None and path.exists():
        try:
            stored = json.loads(path.read_text())
        except (OSError, ValueError):
            stored = {}
    name = f"{device}|{dtype}"
    if isinstance(stored.get(name), (int, float)) and stored[name] > 0:
        _PEAKS[key] = float(stored[name])
        return _PEAKS[key]
    _PEAKS[key] = value = float(measure())
    if path is not None:
        try:
            stored[name] = value
            atomic_write_text(path, json.dumps(stored, indent=1))
        except OSError:
            pass
    return value


def time_matmul(run: Callable[[], None], n: int, min_seconds: float = 0.2) -> float:
    """FLOP/s of an n x n x n matmul: `run()` does one and waits for it; best of a few timed runs."""
    run()  # warm-up (kernel selection, allocation)
    best, total, reps = float("inf"), 0.0, 0
    while total < min_seconds or reps < 3:
        t0 = time.perf_counter()
        run()
        dt = time.perf_counter() - t0
        best, total, reps = min(best, dt), total + dt, reps + 1
    return 2.0 * n ** 3 / best
