"""Resident models: loaded once on the device worker, kept alive between requests.

One resident per base, keyed by (model, backend, quantization, dtype): every adapter used with
that base is attached to it by name (`Backend.attach_adapter`) and selected for each call that
uses it (`Resident.serve(name)`: generate and eval_loss with that adapter), so chat with adapter
A, chat with adapter B and the bare base share one copy of the base's weights (DESIGN.md §5). An
adapter that changes the base itself (a full fine-tune, or added chat tokens with their own
vocabulary) gets a base of its own, keyed with its path.

A running LoRA/DoRA job lends its model (`lend`): while it trains, chat on the same base (model,
backend, quantization, dtype) attaches its adapters to the job's model instead of loading another
copy; the job's own adapter stays apart (Backend.can_share_base) and the job's steps see exactly
what they would without the chats. A request the job's model cannot serve (CannotShare) gets a base
of its own as before.

Used only from the device worker thread. Entries idle past their keep-alive are evicted by
`evict_expired` (called by the worker).
"""
from __future__ import annotations

import dataclasses
import gc
import json
import os
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from .. import host
from ..backends.adapter_layout import changes_base
from ..backends.base import TRAINING, Backend, CannotShare, ModelSpec
from ..backends.registry import get_backend
from ..config.schema import TrainConfig
from ..quantization import bits as quantization_bits
from .download import fetch

DEFAULT_KEEP_ALIVE = 300.0


@dataclass
class Attached:
    name: str           # what requests call it: the adapter's path, or job:<id>
    path: str           # the folder it was read from (for job:<id>, the checkpoint of that moment)
    stamp: float        # that folder's mtime: a rewritten folder is read again
    memory_bytes: int
    loaded_at: float


@dataclass
class Resident:
    key: tuple
    backend: Backend
    model: str
    backend_name: str
    quantization: str
    dtype: str
    loaded_at: float
    last_used_at: float
    keep_alive: float = DEFAULT_KEEP_ALIVE
    info: dict = field(default_factory=dict)
    adapters: dict = field(default_factory=dict)   # name -> Attached
    own_adapter: str = ""   # a base of its own for one adapter that changes the base
    job_id: str = ""        # lent by this running job (its model; never evicted or unloaded here)
    base_bytes: int = 0     # its weights as the backend counts them (Backend.weight_bytes), at load
    own_bytes: int = 0      # a lending job's own adapter (Backend.weight_bytes()[1][TRAINING]), at lending

    @property
    def expires_at(self) -> float:
        return 0.0 if self.keep_alive < 0 else self.last_used_at + self.keep_alive

    def attach(self, name: str, path: str) -> None:
        """Attach the adapter at `path` as `name` (again when the folder changed since)."""
        stamp = _stamp(path)
        have = self.adapters.get(name)
        if have is not None and have.path == path and have.stamp == stamp:
            return
        if self.own_adapter:
            return   # loaded with the base (load_adapter)
        with damaged_adapter(path):
            size = self.backend.attach_adapter(name, Path(path))
        self.adapters[name] = Attached(name, path, stamp, size, time.time())

    def serve(self, name: str = "") -> "Served":
        """This base with adapter `name` ("": the bare base), as chat and evaluation use it: each
        call selects the adapter for its own duration (base.ServingBackend), so chats on one base
        and a lending job's steps can take turns on the device."""
        return Served(self.backend, None if self.own_adapter else name)

    def detach(self, name: str) -> bool:
        if self.adapters.pop(name, None) is None:
            return False
        if not self.own_adapter:
            self.backend.detach_adapter(name)
        return True

    @property
    def memory_bytes(self) -> int:
        """The base's weights plus each attached adapter's (and a lending job's own): the base counts once."""
        return self.base_bytes + self.own_bytes + sum(a.memory_bytes for a in list(self.adapters.values()))


@dataclass(frozen=True)
class Served:
    """One adapter of a resident base: `generate` and `eval_loss` pass it to the backend, which
    selects it for that call only (None: the model as loaded, e.g. a base of its own)."""
    backend: Backend
    adapter: Optional[str]

    @property
    def tokenizer(self):
        return self.backend.tokenizer

    def generate(self, prompt_ids, sampling, should_stop=lambda: False):
        return self.backend.generate(prompt_ids, sampling, should_stop, adapter=self.adapter)

    def eval_loss(self, batch):
        return self.backend.eval_loss(batch, adapter=self.adapter)


class Lease:
    """A running job's model, lent to chat from its Started event (`ready`) to its end (`end`)."""

    def __init__(self, registry: "ModelRegistry", job_id: str, cfg: TrainConfig, backend_name: str, backend: Backend):
        self._registry, self.job_id, self.cfg, self.backend_name, self.backend = \
            registry, job_id, cfg, backend_name, backend
        self.key: Optional[tuple] = None

    def ready(self, dtype: str) -> None:
        """The job's model is loaded and its adapter added (called on the worker thread)."""
        if not self.backend.can_share_base():
            return
        cfg, now = self.cfg, time.time()
        base_bytes, adapters = self.backend.weight_bytes()
        self.key = (_model_key(cfg.model), self.backend_name, cfg.quantization or "none", dtype, "job", self.job_id)
        self._registry._models[self.key] = Resident(
            self.key, self.backend, cfg.model, self.backend_name, cfg.quantization or "none", dtype, now, now,
            keep_alive=-1, job_id=self.job_id, base_bytes=base_bytes, own_bytes=adapters.get(TRAINING, 0))

    def end(self) -> None:
        """The job is over: chats already streaming finish on its model; new ones load their own."""
        if self.key is not None:
            self._registry._models.pop(self.key, None)
            self.key = None


@contextmanager
def damaged_adapter(path: str):
    """A library's error reading an adapter's files (checked before, but a file may change in
    between) -> ValueError (INVALID_ARGUMENT) naming the folder."""
    try:
        yield
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"adapter {path} is damaged: a JSON file in it does not parse ({e})") from e
    except Exception as e:
        if type(e).__name__ == "SafetensorError" or "safetensors" in type(e).__module__:
            raise ValueError(f"adapter {path} is damaged: its safetensors file does not load ({e})") from e
        raise


def _model_key(model: str) -> str:
    """A local model by its resolved path (a job records it so; a chat may name it relatively)."""
    path = Path(model).expanduser()
    return str(path.resolve()) if path.exists() else model


def _stamp(path: str) -> float:
    try:
        return os.stat(path).st_mtime
    except OSError:
        return 0.0


class ModelRegistry:
    def __init__(self, resolve_backend, default_keep_alive: float = DEFAULT_KEEP_ALIVE):
        self._resolve_backend = resolve_backend
        self.default_keep_alive = default_keep_alive
        self._models: dict[tuple, Resident] = {}

    def get(self, model: str, backend: str = "auto", quantization: str = "none", dtype: str = "auto",
            adapter: str = "", keep_alive: Optional[float] = None, name: str = "") -> Resident:
        """The resident base (loaded on first use) with `adapter` attached as `name` (default: its
        path); `.serve(name)` uses it."""
        cfg = ModelSpec(model=model, backend=backend or "auto", quantization=quantization or "none",
                        dtype=dtype or "auto")
        backend_name = self._resolve_backend(cfg)
        key = (model, backend_name, cfg.quantization, cfg.dtype)
        own = bool(adapter) and changes_base(adapter)
        if own:
            key += (adapter,)
        else:
            lent = self._lent(model, backend_name, cfg.quantization, cfg.dtype, adapter, name or adapter)
            if lent is not None:
                return lent
        res = self._models.get(key)
        if res is None:
            if model.startswith(("/", ".", "~")) and not Path(model).expanduser().exists():
                raise FileNotFoundError(f"model: local path not found: {model}")
            check_fits_in_memory(fetch(model) or model, cfg.quantization)   # a hub model: fetched first
            b = get_backend(backend_name)
            info = b.load(dataclasses.replace(cfg, backend=backend_name))
            if own:
                with damaged_adapter(adapter):
                    b.load_adapter(adapter)
            now = time.time()
            res = Resident(key, b, model, backend_name, cfg.quantization, info.dtype, now, now,
                           self.default_keep_alive, dataclasses.asdict(info), own_adapter=adapter if own else "",
                           base_bytes=b.weight_bytes()[0])
            if own:
                res.adapters[name or adapter] = Attached(name or adapter, adapter, _stamp(adapter), 0, now)
            self._models[key] = res
        if adapter:
            res.attach(name or adapter, adapter)
        res.last_used_at = time.time()
        if keep_alive:
            res.keep_alive = keep_alive
        return res

    def lend(self, job_id: str, cfg: TrainConfig, backend_name: str, backend: Backend) -> Lease:
        return Lease(self, job_id, cfg, backend_name, backend)

    def _lent(self, model, backend_name, quantization, dtype, adapter, name) -> Optional[Resident]:
        """A running job's model on this base with `adapter` attached (and servable), or None (no
        such job, or one whose model cannot serve this request)."""
        want = (_model_key(model), backend_name, quantization)
        for res in self._models.values():
            if not res.job_id or res.key[:3] != want or dtype not in ("auto", res.dtype):
                continue
            try:
                if adapter:
                    res.attach(name, adapter)
                res.backend.check_serves(name or None)
            except CannotShare:
                continue
            res.last_used_at = time.time()
            return res
        return None

    def list(self) -> list[Resident]:
        return list(self._models.values())

    def unload(self, model: str = "", adapter: str = "", backend: str = "", quantization: str = "",
               dtype: str = "") -> int:
        """Unload a base with all its adapters, or (with `adapter`) only that adapter from the bases
        it is attached to. Empty filters match all. Returns how many bases or adapters went."""
        if not model and not adapter:
            raise ValueError("unload: name a model, an adapter, or both")
        gone = 0
        for k, r in list(self._models.items()):
            if (model and r.model != model) or (backend and r.backend_name != backend) or \
                    (quantization and r.quantization != quantization) or (dtype and dtype not in (r.dtype, k[3])):
                continue
            if r.job_id:   # a running job's model: only the adapters chats attached to it go
                if adapter and r.detach(adapter):
                    gone += 1
                elif not adapter:
                    gone += sum(r.detach(a) for a in list(r.adapters))
                continue
            if not adapter:
                del self._models[k]
                gone += 1
            elif r.own_adapter and adapter in r.adapters:
                del self._models[k]
                gone += 1
            elif r.detach(adapter):
                gone += 1
        if gone:
            gc.collect()
        return gone

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
    if quantization_bits(quantization) == 4:
        size //= 3   # a 16-bit checkpoint quantized to 4 bits (+ scales) needs ~1/3..1/4
    avail = host.memory()[1] if available is None else available
    if size > 0.9 * avail:
        raise MemoryError(f"{model} needs about {size / 2**30:.1f} GiB for its weights but only "
                          f"{avail / 2**30:.1f} GiB is free")
