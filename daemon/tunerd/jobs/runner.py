"""The default job runner: fetch the model, pick the backend, then hand over to the training loop.

The model is fetched here, before the loop runs (models/download.py: Download events into the
job's events), so `training/` does no network I/O: the backend then reads the model from the
local cache. The config keeps the name the user gave (a hub id stays a hub id in the resolved
config.json, the adapter's base_model_name_or_path, Started and the chat lease). A GGUF model
(a `.gguf` file, `ollama:NAME`) is converted into the model cache instead, and the loop trains on
that folder (which the adapter then names as its base); the chat lease keeps the GGUF name.
A job with `distributed:` over more than one process runs as a process group started by the
engine's launcher (tunerd.distributed.launch); its model is the ranks', so it lends none to chat.
"""
from __future__ import annotations

import dataclasses
from typing import Callable, Optional

from ..backends.registry import get_backend, resolve_backend
from ..config.schema import TrainConfig
from ..distributed.launch import run_group, world_size
from ..gguf_file import is_gguf
from ..models.download import fetch


def run_training(cfg: TrainConfig, emit: Callable, should_stop: Callable[[], bool],
                 base_dir: Optional[str] = None, job_id: str = "",
                 serve_interactive: Callable[[], None] = lambda: None, lend: Optional[Callable] = None):
    """Train job `job_id` on the backend `cfg` asks for. Between two steps (the loop's step hook)
    the device is free: `serve_interactive()` (the device worker's) runs the chats, evaluations
    and loads queued meanwhile, then `should_stop()` says whether the job must stop. With
    `lend(job_id, cfg, backend_name, backend) -> Lease` (the model registry's), the job's model
    serves chat on its base from its Started event until it ends."""
    from ..training.events import Started
    from ..training.loop import train

    def between_steps() -> bool:
        serve_interactive()
        return should_stop()
    folder = fetch(cfg.model, cfg.revision, emit)   # a hub model not in the cache yet; a local one is left alone
    named = cfg
    if is_gguf(cfg.model):
        cfg = dataclasses.replace(cfg, model=folder)   # the converted folder: what the backend loads
    name = resolve_backend(cfg)
    if cfg.distributed is not None and world_size(cfg.distributed) > 1:   # a process group: tunerd.distributed
        return run_group(cfg, name, emit, should_stop, base_dir, serve_interactive)
    backend = get_backend(name)
    if lend is None:
        return train(cfg, backend, emit, between_steps, base_dir, validated=True)
    lease = lend(job_id, named, name, backend)

    def emit_and_lend(e) -> None:
        emit(e)
        if isinstance(e, Started):
            lease.ready(e.dtype)
    try:
        return train(cfg, backend, emit_and_lend, between_steps, base_dir, validated=True)
    finally:
        lease.end()
