"""The default job runner: pick the backend, then hand over to the training loop."""
from __future__ import annotations

from typing import Callable, Optional

from ..backends.base import get_backend
from ..config.schema import TrainConfig


def resolve_backend(cfg: TrainConfig) -> str:
    """`backend: auto` -> the rule in tunerd.backends.auto (see README, 'Backends')."""
    if cfg.backend != "auto":
        return cfg.backend
    from ..backends.auto import choose_backend
    return choose_backend(cfg)


def run_training(cfg: TrainConfig, emit: Callable, should_stop: Callable[[], bool],
                 base_dir: Optional[str] = None):
    from ..training.loop import train
    return train(cfg, get_backend(resolve_backend(cfg)), emit, should_stop, base_dir)
