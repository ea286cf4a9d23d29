"""Cross-entropy over the supervised positions without holding their full float32 logits.

`head_cross_entropy(hidden, head, targets, weights)` = sum_i w_i * CE(head(hidden_i), target_i) for the
gathered supervised hidden states [N, d]. The float32 logits of N positions are N x vocab x 4 bytes
(4,000 answer tokens x 128k vocabulary = 2 GiB, plus the same again for their gradient). Above
`CE_CHUNK_BYTES` the positions are split into chunks whose logits are recomputed in the backward pass
(non-reentrant activation checkpointing, so gradients still reach a trainable head): peak logits
memory is one chunk, at the cost of one more head matmul per chunk. One chunk (small vocabularies,
short answers) runs plainly, with no recomputation.
"""
from __future__ import annotations

from functools import partial

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from ..base import CE_CHUNK_BYTES, ce_chunk_rows


def _chunk_loss(hidden: torch.Tensor, head, targets: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    logits = head(hidden).float()
    return (F.cross_entropy(logits, targets, reduction="none") * weights).sum()


def head_cross_entropy(hidden: torch.Tensor, head, targets: torch.Tensor, weights: torch.Tensor,
                       vocab: int, chunk_bytes: int = CE_CHUNK_BYTES) -> torch.Tensor:
    rows = ce_chunk_rows(vocab, chunk_bytes)
    if hidden.shape[0] <= rows:
        return _chunk_loss(hidden, head, targets, weights)
    # with gradients each chunk's logits are recomputed in backward; without (eval) none are kept anyway
    part = partial(checkpoint, _chunk_loss, use_reentrant=False) if torch.is_grad_enabled() else _chunk_loss
    return sum(part(hidden[i:i + rows], head, targets[i:i + rows], weights[i:i + rows])
               for i in range(0, hidden.shape[0], rows))
