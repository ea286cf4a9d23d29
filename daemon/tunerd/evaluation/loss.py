"""Loss and perplexity on evaluation rows: one way, for training's evals and for Evaluate.

    eval_batches(rows, cfg, pad_id)   the rows in order, `per_device_eval_batch_size` a batch, no packing
    mean_loss(backend, batches)       (mean loss per supervised token, supervised tokens)
    perplexity(loss)                  exp(loss); inf where exp overflows a float
"""
from __future__ import annotations

import math

from ..config.schema import TrainConfig
from ..data.prepare import iterate_batches

MAX_EXP_ARG = 700.0   # math.exp overflows a float64 just above 709.78


def perplexity(loss: float) -> float:
    return math.exp(loss) if loss < MAX_EXP_ARG else float("inf")


def eval_batches(rows: list, cfg: TrainConfig, pad_id: int) -> list:
    return iterate_batches(rows, cfg.per_device_eval_batch_size, pad_id, packing=False,
                           max_seq_length=cfg.max_seq_length, shuffle=False)


def mean_loss(backend, batches: list) -> tuple[float, int]:
    """The summed loss of every batch over their supervised tokens (not a mean of batch means)."""
    total, n = 0.0, 0
    for b in batches:
        s, k = backend.eval_loss(b)
        total, n = total + s, n + k
    return total / max(n, 1), n
