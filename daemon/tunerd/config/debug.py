"""`debug: true`, a smoke run of any config, defined once: at most 50 training and 10 evaluation
rows, one epoch, batches of 2. The loader applies it to every config it builds, the training loop
to one built in code (it is idempotent), and data loading caps the rows (`cap_rows`), so training's
evals and an Evaluate of a debug job see the same rows."""
from __future__ import annotations

import dataclasses

from .schema import TrainConfig

TRAIN_ROWS, EVAL_ROWS, BATCH_SIZE = 50, 10, 2


def apply_debug(cfg: TrainConfig) -> TrainConfig:
    """The config a debug run trains with (unchanged when `debug` is off)."""
    if not cfg.debug:
        return cfg
    return dataclasses.replace(
        cfg, num_epochs=1.0, max_steps=-1, per_device_train_batch_size=BATCH_SIZE,
        per_device_eval_batch_size=BATCH_SIZE,
        data=dataclasses.replace(cfg.data, max_rows=min(cfg.data.max_rows or TRAIN_ROWS, TRAIN_ROWS)))


def cap_rows(cfg: TrainConfig, train: list, validation: list) -> tuple[list, list]:
    """The rows of a debug run: the first 50 training and 10 validation rows."""
    if not cfg.debug:
        return train, validation
    return train[:TRAIN_ROWS], validation[:EVAL_ROWS]
