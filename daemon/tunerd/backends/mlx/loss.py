"""The summed cross-entropy over supervised positions, and a batch as the arrays it takes.

- The LM head runs on the gathered supervised positions only (`PLAIN_HEAD` families), so no
  [B, T, vocab] logits exist; float32 logits exist only for those positions, in chunks recomputed
  in the backward pass (mx.checkpoint) when a frozen head's would be large (base.ce_chunk_rows).
- Packed rows: block-diagonal causal mask through `PackedAttention` (see model.py for why position
  ids need no reset with RoPE).
"""
from __future__ import annotations

import mlx.core as mx
import mlx.nn as nn
import numpy as np

from ...data.batch import Batch
from .model import PACKING_MODEL_TYPES, PackedAttention, block_causal_mask

# families whose logits are exactly lm_head(final hidden) (or the tied embedding's as_linear): no
# logit scaling or soft-capping, so the head can run on the supervised positions alone
PLAIN_HEAD = {"llama", "mistral", "qwen2", "qwen3", "phi3", "olmo2"}


def summed_loss(model, inputs, idx, targets, weights, segment_ids=None, mask_dtype=mx.float32,
                plain=True, chunk=0):
    """Summed cross-entropy over the supervised positions `idx` (flat indices into [B*T]).

    The LM head runs on the gathered positions only (`plain` families), so no [B, T, vocab] logits
    exist, and float32 logits exist only for the supervised positions -- in chunks of `chunk` rows
    recomputed in the backward pass (mx.checkpoint) when a frozen head's would be large
    (base.ce_chunk_rows). Other families compute full logits and gather before the float32 cast."""
    cache = None
    if segment_ids is not None:
        cache = [PackedAttention(block_causal_mask(segment_ids, mask_dtype))] * len(model.layers)
    if not plain:
        logits = model(inputs, cache=cache)
        logits = logits.reshape(-1, logits.shape[-1])[idx].astype(mx.float32)
        return (nn.losses.cross_entropy(logits, targets, reduction="none") * weights).sum(), weights.sum()
    h = model.model(inputs, cache=cache)
    h = h.reshape(-1, h.shape[-1])[idx]
    head = model.lm_head if "lm_head" in model else model.model.embed_tokens.as_linear

    def ce(h, t, w):
        return (nn.losses.cross_entropy(head(h).astype(mx.float32), t, reduction="none") * w).sum()
    if chunk and h.shape[0] > chunk:   # only h crosses mx.checkpoint: no gradient for ids and weights
        loss = sum(mx.checkpoint(lambda x, t=targets[i:i + chunk], w=weights[i:i + chunk]: ce(x, t, w))(h[i:i + chunk])
                   for i in range(0, h.shape[0], chunk))
    else:
        loss = ce(h, targets, weights)
    return loss, weights.sum()


def batch_arrays(batch: Batch, model_type: str, compiled: bool):
    """(packed, (inputs, idx, targets, weights, segment_ids)) for `summed_loss`. Compiled steps pad
    rows to a multiple of 32 and the supervised positions to a multiple of 64 (fewer shapes)."""
    packed = batch.is_packed
    if packed and model_type not in PACKING_MODEL_TYPES:
        raise ValueError(f"packing: model type {model_type!r} is not supported for packing on mlx "
                         f"(RoPE families only: {', '.join(sorted(PACKING_MODEL_TYPES))}); set packing: false")
    inputs, seg = batch.inputs, batch.segment_ids
    pad = (-inputs.shape[1]) % 32 if compiled else 0
    if pad:  # padding: its own segment 0, after every real token (causal), never supervised: no effect
        inputs, seg = (np.pad(a, ((0, 0), (0, pad))) for a in (inputs, seg))
    width = inputs.shape[1]
    rows, cols = np.nonzero(batch.loss_mask)        # the supervised positions, gathered before the head
    idx = (rows * width + cols).astype(np.int32)
    targets = batch.targets[rows, cols].astype(np.int32)
    weights = batch.loss_mask[rows, cols].astype(np.float32)
    extra = (-len(idx)) % 64 if compiled else 0   # fewer distinct shapes to compile
    if extra or not len(idx):
        extra = extra or 1
        idx, targets, weights = (np.pad(a, (0, extra)) for a in (idx, targets, weights))
    return packed, tuple(mx.array(a) for a in (inputs, idx, targets, weights, seg))


def row_losses(model, inputs, idx, targets, weights, segment_ids=None, mask_dtype=mx.float32, plain=True, chunk=0):
    """The weighted cross-entropy of the supervised positions `idx` summed per batch row ([B]):
    a preference task's per-sequence log-probs, negated. Same head and chunking as `summed_loss`."""
    cache = None
    if segment_ids is not None:
        cache = [PackedAttention(block_causal_mask(segment_ids, mask_dtype))] * len(model.layers)
    b, width = inputs.shape
    onehot = (mx.arange(b)[:, None] == (idx // width)[None, :]).astype(mx.float32)   # [B, N]: each position's row
    if not plain:
        logits = model(inputs, cache=cache)
        logits = logits.reshape(-1, logits.shape[-1])[idx].astype(mx.float32)
        return onehot @ (nn.losses.cross_entropy(logits, targets, reduction="none") * weights)
    h = model.model(inputs, cache=cache)
    h = h.reshape(-1, h.shape[-1])[idx]
    head = model.lm_head if "lm_head" in model else model.model.embed_tokens.as_linear

    def ce(h, t, w):
        return nn.losses.cross_entropy(head(h).astype(mx.float32), t, reduction="none") * w
    if chunk and h.shape[0] > chunk:
        losses = mx.concatenate([mx.checkpoint(lambda x, t=targets[i:i + chunk], w=weights[i:i + chunk]: ce(x, t, w))(
            h[i:i + chunk]) for i in range(0, h.shape[0], chunk)])
    else:
        losses = ce(h, targets, weights)
    return onehot @ losses
