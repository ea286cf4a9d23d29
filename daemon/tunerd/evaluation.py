"""Loss and perplexity of a model (+ adapter) on a data set, run on the device worker."""
from __future__ import annotations

import math

from .config.loader import load_config
from .data.prepare import iterate_batches, prepare


def evaluate_loss(backend, model: str, data, batch_size: int = 8) -> dict:
    """Mean supervised-token loss of `backend`'s loaded model on `data` (a file or config data spec)."""
    cfg = load_config(doc={"model": model, "data": {"train": data, "validation": data}})
    prepared = prepare(cfg, backend.tokenizer)
    total, n = 0.0, 0
    for b in iterate_batches(prepared.validation, batch_size, backend.tokenizer.pad_token_id or 0,
                             shuffle=False):
        s, k = backend.eval_loss(b)
        total, n = total + s, n + k
    loss = total / max(n, 1)
    return {"loss": loss, "perplexity": math.exp(min(loss, 50)), "rows": len(prepared.validation),
            "metrics": {"supervised_tokens": float(n)}}
