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

Changed only on the device worker thread (given the worker, the registry refuses calls from any
other). Other threads (gRPC, HTTP) read `snapshot()`: a tuple of frozen `ModelStatus` values
published after every change and replaced atomically. Entries idle past their keep-alive are
evicted by `evict_expired` (the worker's idle hook).
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

from ..backends.families import check_family
from ..backends.own_base import changes_base
from ..backends.base import TRAINING, Backend, CannotShare, ModelSpec
from ..backends.registry import get_backend
from ..config.schema import TrainConfig
from ..gguf_file import is_gguf
from ..model_config import context_positions
from .download import fetch
from .fit import check_fits

DEFAULT_KEEP_ALIVE = 300.0


@dataclass(frozen=True)
class AttachedAdapter:
    """An adapter on a resident base, as other threads see it (ModelStatus.attached)."""
    name: str
    path: str
    memory_bytes: int
    loaded_at: float


@dataclass(frozen=True)
class ModelStatus:
    """A resident base as other threads see it (`ModelRegistry.snapshot`): what ListModels shows.
    Memory is the bytes of this base's weights plus its adapters' (the backend counts them), not
    the process's: two adapters on one base count the base once."""
    model: str
    backend: str
    quantization: str
    dtype: str
    dtype_reason: str
    requested_dtype: str
    memory_bytes: int
    base_bytes: int
    loaded_at: float
    last_used_at: float
    expires_at: float
    chat_adapters: tuple = ()           # AttachedAdapter: those chats attached, by name
    training: Optional[AttachedAdapter] = None   # a running job's model: its own adapter, training
    active_sequences: int = 0        # replies decoding on it now (serving.Scheduler's batches)
    peak_active_sequences: int = 0   # the most decoding together since it was loaded
    context_length: int = 0          # positions the model was trained for (its config.json); 0: unknown

    @property
    def attached(self) -> tuple:
        return ((self.training,) if self.training else ()) + self.chat_adapters

    @property
    def adapters(self) -> tuple:
        return tuple(a.name for a in self.attached)


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
    active: int = 0         # replies decoding on it now (set_active)
    peak_active: int = 0
    context_length: int = 0  # model_config.context_positions, read once at load

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

    def status(self) -> ModelStatus:
        training = AttachedAdapter(f"job:{self.job_id} (training)", "", self.own_bytes, self.loaded_at) \
            if self.job_id else None
        return ModelStatus(self.model, self.backend_name, self.quantization, self.dtype,
                           self.info.get("dtype_reason", ""), self.key[3], self.memory_bytes, self.base_bytes,
                           self.loaded_at, self.last_used_at, self.expires_at,
                           tuple(AttachedAdapter(a.name, a.path, a.memory_bytes, a.loaded_at)
                                 for a in self.adapters.values()), training, self.active, self.peak_active,
                           self.context_length)


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

    def decoder(self):
        """A batch decoder with this adapter (issue 21: evaluation's rows, concurrent chats)."""
        return self.backend.decoder(adapter=self.adapter)

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
        self._registry.add(Resident(
            self.key, self.backend, cfg.model, self.backend_name, cfg.quantization or "none", dtype, now, now,
            keep_alive=-1, job_id=self.job_id, base_bytes=base_bytes, own_bytes=adapters.get(TRAINING, 0),
            context_length=_positions(cfg.model)))

    def end(self) -> None:
        """The job is over: chats already streaming finish on its model; new ones load their own."""
        if self.key is not None:
            self._registry.remove(self.key)
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


def _positions(model: str) -> int:
    """The positions `model` was trained for, read once when it becomes resident (0: unknown)."""
    return (context_positions(model) or (0,))[0]


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
    def __init__(self, resolve_backend, default_keep_alive: float = DEFAULT_KEEP_ALIVE, worker=None):
        """With `worker` (the daemon's DeviceWorker), every change must come from its thread, and
        models past their keep-alive are evicted when it idles."""
        self._resolve_backend = resolve_backend
        self.default_keep_alive = default_keep_alive
        self._worker = worker
        self._models: dict[tuple, Resident] = {}
        self._snapshot: tuple = ()
        if worker is not None:
            worker.on_idle = self.evict_expired

    def snapshot(self) -> tuple:
        """The resident models (ModelStatus, frozen), as of the last change: for any thread."""
        return self._snapshot

    def _changed(self) -> None:
        self._snapshot = tuple(r.status() for r in self._models.values())   # one assignment: atomic

    def _on_worker(self) -> None:
        if self._worker is not None and not self._worker.on_worker_thread:
            raise RuntimeError("the model registry is changed on the device worker only (Core.worker)")

    def add(self, res: Resident) -> None:
        """A resident made elsewhere (a running job's lent model: Lease.ready)."""
        self._on_worker()
        self._models[res.key] = res
        self._changed()

    def remove(self, key: tuple) -> None:
        self._on_worker()
        if self._models.pop(key, None) is not None:
            self._changed()

    def set_active(self, counts: dict) -> None:
        """{resident key: replies decoding on it now}, from chat's scheduler when they change."""
        self._on_worker()
        changed = False
        for k, r in self._models.items():
            n = counts.get(k, 0)
            if r.active != n:
                r.active, r.peak_active, changed = n, max(r.peak_active, n), True
        if changed:
            self._changed()

    def get(self, model: str, backend: str = "auto", quantization: str = "none", dtype: str = "auto",
            adapter: str = "", keep_alive: Optional[float] = None, name: str = "") -> Resident:
        """The resident base (loaded on first use) with `adapter` attached as `name` (default: its
        path); `.serve(name)` uses it."""
        self._on_worker()
        try:
            return self._get(model, backend, quantization, dtype, adapter, keep_alive, name)
        finally:
            self._changed()   # loaded, attached or only used (last_used_at): published either way

    def _get(self, model, backend, quantization, dtype, adapter, keep_alive, name) -> Resident:
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
            local = fetch(model) or model   # a hub model: fetched first; a GGUF model: converted
            check_family(local, backend_name, auto=cfg.backend == "auto")
            check_fits(local, backend_name, cfg.quantization)
            b = get_backend(backend_name)
            info = b.load(dataclasses.replace(cfg, backend=backend_name, model=local if is_gguf(model) else model))
            if own:
                with damaged_adapter(adapter):
                    b.load_adapter(adapter)
            now = time.time()
            res = Resident(key, b, model, backend_name, cfg.quantization, info.dtype, now, now,
                           self.default_keep_alive, dataclasses.asdict(info), own_adapter=adapter if own else "",
                           base_bytes=b.weight_bytes()[0], context_length=_positions(model))
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
        """The residents themselves (their backends): for the device worker's thread."""
        return list(self._models.values())

    def unload(self, model: str = "", adapter: str = "", backend: str = "", quantization: str = "",
               dtype: str = "") -> int:
        """Unload a base with all its adapters, or (with `adapter`) only that adapter from the bases
        it is attached to. Empty filters match all. Returns how many bases or adapters went."""
        if not model and not adapter:
            raise ValueError("unload: name a model, an adapter, or both")
        self._on_worker()
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
            self._changed()
            gc.collect()
        return gone

    def evict_expired(self, now: Optional[float] = None) -> list[str]:
        self._on_worker()
        now = now or time.time()
        gone = [k for k, r in self._models.items() if r.expires_at and r.expires_at < now]
        for k in gone:
            del self._models[k]
        if gone:
            self._changed()
        return [k[0] for k in gone]

