"""The default job runner: fetch the model, pick the backend, then hand over to the training loop.

The model is fetched here, before the loop runs (models/download.py: Download events into the
job's events), so `training/` does no network I/O: the backend then reads the model from the
local cache. The config keeps the name the user gave (a hub id stays a hub id in the resolved
config.json, the adapter's base_model_name_or_path, Started and the chat lease).
"""
from __future__ import annotations

from typing import Callable, Optional

from ..backends.registry import get_backend, resolve_backend
from ..config.schema import TrainConfig
from ..models.download import fetch


def run_training(cfg: TrainConfig, emit: Callable, should_stop: Callable[[], bool],
                 base_dir: Optional[str] = None, lend: Optional[Callable] = None):
    """Train on the backend `cfg` asks for (a job's config, which its submit validated). With `lend(cfg, backend_name, backend) -> Lease` (the
    model registry's), the job's model serves chat on its base from its Started event until it ends."""
    from ..training.events import Started
    from ..training.loop import train
    fetch(cfg.model, cfg.revision, emit)   # a hub model not in the cache yet; a local one is left alone
    name = resolve_backend(cfg)
    backend = get_backend(name)
    if lend is None:
        return train(cfg, backend, emit, should_stop, base_dir, validated=True)
    lease = lend(cfg, name, backend)

    def emit_and_lend(e) -> None:
        emit(e)
        if isinstance(e, Started):
            lease.ready(e.dtype)
    try:
        return train(cfg, backend, emit_and_lend, should_stop, base_dir, validated=True)
    finally:
        lease.end()
