"""Cross-entropy over the supervised positions without holding their full float32 logits.

`BatchLoss._loss(batch)` (mixed into TorchBackend): a batch as the model's inputs (packed rows: position-id
resets or a 4D block mask, decided on the first packed batch) and its summed loss, the head on the
supervised positions only for the `PLAIN_HEAD` families.

`head_cross_entropy(hidden, head, targets, weights)` = sum_i w_i * CE(head(hidden_i), target_i) for the
gathered supervised hidden states [N, d]. The float32 logits of N positions are N x vocab x 4 bytes
(4,000 answer tokens x 128k vocabulary = 2 GiB, plus the same again for their gradient). Above
`TORCH_CE_CHUNK_BYTES` (64 MiB) the positions are split into chunks whose logits are recomputed in the backward pass
(non-reentrant activation checkpointing, so gradients still reach a trainable head): peak logits
memory is one chunk, at the cost of one more head matmul per chunk. One chunk (small vocabularies,
short answers) runs plainly, with no recomputation.
"""
from __future__ import annotations

import logging
from functools import partial

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from ...data.batch import Batch
from ..base import TORCH_CE_CHUNK_BYTES, ce_chunk_rows

log = logging.getLogger("tunerd.torch")

# model types whose logits are exactly lm_head(final hidden state): no softcap or logit scaling
PLAIN_HEAD = {"llama", "mistral", "qwen2", "qwen3", "qwen2_moe", "qwen3_moe", "phi3", "gemma", "gpt2",
              "smollm3", "olmo", "olmo2", "phi", "starcoder2", "stablelm"}


def _chunk_loss(hidden: torch.Tensor, head, targets: torch.Tensor, weights: torch.Tensor,
                per_position: bool = False) -> torch.Tensor:
    logits = head(hidden).float()
    losses = F.cross_entropy(logits, targets, reduction="none") * weights
    return losses if per_position else losses.sum()


def head_cross_entropy(hidden: torch.Tensor, head, targets: torch.Tensor, weights: torch.Tensor,
                       vocab: int, chunk_bytes: int = TORCH_CE_CHUNK_BYTES, per_position: bool = False) -> torch.Tensor:
    """The summed weighted cross-entropy (`per_position`: the [N] weighted losses instead)."""
    rows = ce_chunk_rows(vocab, chunk_bytes)
    if hidden.shape[0] <= rows:
        return _chunk_loss(hidden, head, targets, weights, per_position)
    # with gradients each chunk's logits are recomputed in backward; without (eval) none are kept anyway
    part = partial(checkpoint, _chunk_loss, use_reentrant=False) if torch.is_grad_enabled() else _chunk_loss
    parts = [part(hidden[i:i + rows], head, targets[i:i + rows], weights[i:i + rows], per_position)
             for i in range(0, hidden.shape[0], rows)]
    return torch.cat(parts) if per_position else sum(parts)


class BatchLoss:
    """Mixed into TorchBackend (backend.py), whose state it uses: model, base, device, dtype,
    packing_mode, packing_check_diff."""

    def _model_inputs(self, batch: Batch) -> dict:
        seg, pos = batch.segment_ids, batch.position_ids.astype(np.int64)
        real = seg > 0
        n = real.sum(axis=1)
        t = np.arange(seg.shape[1])[None, :]
        last = pos[np.arange(len(n)), np.maximum(n - 1, 0)]
        pos = np.where(real, pos, last[:, None] + 1 + t - n[:, None])  # padding continues the last row
        kw = dict(input_ids=torch.from_numpy(batch.inputs.astype(np.int64)).to(self.device),
                  position_ids=torch.from_numpy(pos).to(self.device), use_cache=False)
        if batch.is_packed:
            if self.packing_mode is None:
                self._check_packing()
            if self.packing_mode == "mask":
                kw["attention_mask"] = self._block_mask(seg)
        return kw

    def _block_mask(self, seg: np.ndarray) -> torch.Tensor:
        """[B, 1, T, T] block-diagonal causal mask: bool for sdpa, additive float for eager.
        Trailing padding joins the last row (it is never a key for a real token, and every query
        keeps at least itself: no all-masked softmax rows)."""
        seg = np.where(seg > 0, seg, seg.max(axis=1, keepdims=True))
        s = torch.from_numpy(seg).to(self.device)
        allowed = (s[:, :, None] == s[:, None, :]) & torch.ones(
            seg.shape[1], seg.shape[1], dtype=torch.bool, device=self.device).tril()
        if self.base.config._attn_implementation == "sdpa":
            return allowed[:, None]
        dtype = self.base.get_input_embeddings().weight.dtype
        mask = torch.zeros(allowed.shape, dtype=dtype, device=self.device)
        return mask.masked_fill(~allowed, torch.finfo(dtype).min)[:, None]

    @torch.no_grad()
    def _check_packing(self) -> None:
        """Two copies of a short sequence packed in one row must give the same logits twice."""
        was_training = self.model.training
        self.model.eval()
        ids = torch.tensor([[1, 2, 3, 4, 1, 2, 3, 4]], device=self.device) % self.base.config.vocab_size
        pos = torch.tensor([[0, 1, 2, 3, 0, 1, 2, 3]], device=self.device)
        logits = self.model(input_ids=ids, position_ids=pos, use_cache=False).logits.float()[0]
        diff = float((logits[:4] - logits[4:]).abs().max())
        tol = (1e-4 if self.dtype == torch.float32 else 2e-2) * max(1.0, float(logits.abs().max()))
        self.packing_check_diff = diff
        self.packing_mode = "position_ids" if diff <= tol else "mask"
        if self.packing_mode == "mask":
            log.info("packing: position-id resets do not isolate rows on %s (diff %.3g); using a 4D block mask",
                     self.base.config.model_type, diff)
        self.model.train(was_training)

    def _loss(self, batch: Batch, per_row: bool = False) -> tuple[torch.Tensor, int]:
        """(the summed loss over the supervised targets, their count); `per_row`: the [rows] sums
        (a preference task's per-sequence log-probs, negated) instead of their total."""
        kw = self._model_inputs(batch)
        mask = torch.from_numpy(batch.loss_mask).to(self.device)
        sel = mask > 0
        targets = torch.from_numpy(batch.targets.astype(np.int64)).to(self.device)[sel]
        m = self._underlying()
        decoder = getattr(m, getattr(m, "base_model_prefix", ""), None)
        head = m.get_output_embeddings()
        if m.config.model_type in PLAIN_HEAD and decoder is not None and head is not None:
            hidden = decoder(**kw).last_hidden_state[sel]
            loss = head_cross_entropy(hidden, head, targets, mask[sel], vocab=head.weight.shape[0],
                                      per_position=per_row)
        else:
            logits = self.model(**kw).logits[sel].float()
            loss = F.cross_entropy(logits, targets, reduction="none") * mask[sel]
            loss = loss if per_row else loss.sum()
        if per_row:   # the positions' losses summed per batch row
            rows = torch.nonzero(sel, as_tuple=True)[0]
            loss = torch.zeros(sel.shape[0], dtype=loss.dtype, device=loss.device).index_add(0, rows, loss)
        return loss, int(batch.loss_mask.sum())
