"""The default job runner: pick the backend, then hand over to the training loop."""
from __future__ import annotations

from typing import Callable, Optional

from ..backends.registry import get_backend, resolve_backend
from ..config.schema import TrainConfig


def run_training(cfg: TrainConfig, emit: Callable, should_stop: Callable[[], bool],
                 base_dir: Optional[str] = None):
    from ..training.loop import train
    return train(cfg, get_backend(resolve_backend(cfg)), emit, should_stop, base_dir)
