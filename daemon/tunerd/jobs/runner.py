"""The default job runner: pick the backend, then hand over to the training loop."""
from __future__ import annotations

from typing import Callable, Optional

from ..backends.registry import get_backend, resolve_backend
from ..config.schema import TrainConfig


def run_training(cfg: TrainConfig, emit: Callable, should_stop: Callable[[], bool],
                 base_dir: Optional[str] = None, lend: Optional[Callable] = None):
    """Train on the backend `cfg` asks for (a job's config, which its submit validated). With `lend(cfg, backend_name, backend) -> Lease` (the
    model registry's), the job's model serves chat on its base from its Started event until it ends."""
    from ..training.events import Started
    from ..training.loop import train
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
