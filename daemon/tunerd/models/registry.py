"""Resident models: loaded once on the device worker, kept alive between requests.

Keyed by (model, backend, quantization, adapter). Used only from the device worker thread.
Entries idle past their keep-alive are evicted by `evict_expired` (called by the worker).
"""
from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from typing import Optional

from pathlib import Path

from .. import host
from ..backends.base import Backend, get_backend
from ..config.schema import TrainConfig

DEFAULT_KEEP_ALIVE = 300.0


@dataclass
class Resident:
    key: tuple
    backend: Backend
    model: str
    backend_name: str
    quantization: str
    adapter: str
    loaded_at: float
    last_used_at: float
    keep_alive: float = DEFAULT_KEEP_ALIVE
    info: dict = field(default_factory=dict)

    @property
    def expires_at(self) -> float:
        return 0.0 if self.keep_alive < 0 else self.last_used_at + self.keep_alive


class ModelRegistry:
    def __init__(self, resolve_backend, default_keep_alive: float = DEFAULT_KEEP_ALIVE):
        self._resolve_backend = resolve_backend
        self.default_keep_alive = default_keep_alive
        self._models: dict[tuple, Resident] = {}

    def get(self, model: str, backend: str = "auto", quantization: str = "none", dtype: str = "auto",
            adapter: str = "", keep_alive: Optional[float] = None) -> Resident:
        cfg = TrainConfig(model=model, backend=backend or "auto", quantization=quantization or "none",
                          dtype=dtype or "auto")
        name = self._resolve_backend(cfg)
        key = (model, name, cfg.quantization, adapter)
        res = self._models.get(key)
        if res is None:
            check_fits_in_memory(model, cfg.quantization)
            b = get_backend(name)
            info = b.load(dataclasses.replace(cfg, backend=name))
            if adapter:
                b.load_adapter(adapter)
            now = time.time()
            res = Resident(key, b, model, name, cfg.quantization, adapter, now, now,
                           self.default_keep_alive, dataclasses.asdict(info))
            self._models[key] = res
        res.last_used_at = time.time()
        if keep_alive:
            res.keep_alive = keep_alive
        return res

    def list(self) -> list[Resident]:
        return list(self._models.values())

    def unload(self, model: str) -> bool:
        keys = [k for k in self._models if k[0] == model]
        for k in keys:
            del self._models[k]
        if keys:
            import gc
            gc.collect()
        return bool(keys)

    def evict_expired(self, now: Optional[float] = None) -> list[str]:
        now = now or time.time()
        gone = [k for k, r in self._models.items() if r.expires_at and r.expires_at < now]
        for k in gone:
            del self._models[k]
        return [k[0] for k in gone]


def check_fits_in_memory(model: str, quantization: str = "none", available: Optional[int] = None) -> None:
    """Refuse to load a local model whose weights cannot fit in free memory (a clear
    RESOURCE_EXHAUSTED instead of the OOM killer). Hub models are checked after download."""
    path = Path(model).expanduser()
    if not path.is_dir():
        return
    size = sum(f.stat().st_size for f in path.glob("*.safetensors"))
    if quantization in ("4bit", "nf4", "int4"):
        size //= 3   # a 16-bit checkpoint quantized to 4 bits (+ scales) needs ~1/3..1/4
    avail = host.memory()[1] if available is None else available
    if size > 0.9 * avail:
        raise MemoryError(f"{model} needs about {size / 2**30:.1f} GiB for its weights but only "
                          f"{avail / 2**30:.1f} GiB is free")
