"""The one batch format every backend consumes: plain numpy, already shifted.

Row i of a batch holds one or more (packed) training rows:
- `inputs[i, t]` is the token fed at position t, `targets[i, t]` the token to predict there;
- `loss_mask[i, t]` is 1.0 where that target is supervised (response tokens, incl. end-of-turn);
- `position_ids[i, t]` restarts at 0 for each packed row, so attention never crosses rows
  when the backend uses them with a segment-aware (block-diagonal causal) mask;
- `segment_ids[i, t]` numbers the packed rows 1..k; 0 marks padding.
Padding uses token id `pad_id` (`pad_id_of`), mask 0, segment 0.

`Shard(rank, world_size)` says which micro-batches of each optimizer step one process runs.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np


def pad_id_of(tokenizer, eos_token_ids: Sequence[int] = ()) -> int:
    """The token that fills padding: the tokenizer's pad token, else its end-of-sequence token,
    else the model's first one (`eos_token_ids`), else 0. Padding is never attended to by a real
    token nor supervised, so the choice changes no loss, only what sits in the unused cells."""
    for t in (tokenizer.pad_token_id, tokenizer.eos_token_id, *list(eos_token_ids)[:1]):
        if t is not None:
            return int(t)
    return 0


@dataclass(frozen=True)
class Shard:
    """Rank `rank` of `world_size` processes training together (the door to multi-machine runs).

    Every rank builds the same batches (they are a pure function of the data seed and the epoch);
    of each optimizer step's micro-batches rank r runs those at positions r, r + W, r + 2W, ...,
    so the W ranks together run exactly the micro-batches one rank alone would (the gradients,
    summed across ranks, are the same sum). Rank 0 writes the files the ranks share."""
    rank: int = 0
    world_size: int = 1

    def __post_init__(self):
        if self.world_size < 1 or not 0 <= self.rank < self.world_size:
            raise ValueError(f"rank {self.rank} of world_size {self.world_size}: need 0 <= rank < world_size")

    def take(self, group: Sequence) -> list:
        """This rank's part of one step's micro-batches."""
        return list(group[self.rank::self.world_size])

    @property
    def writes_shared_files(self) -> bool:
        return self.rank == 0


@dataclass
class Batch:
    inputs: np.ndarray        # int32 [B, T]
    targets: np.ndarray       # int32 [B, T]
    loss_mask: np.ndarray     # float32 [B, T]
    position_ids: np.ndarray  # int32 [B, T]
    segment_ids: np.ndarray   # int32 [B, T]

    @property
    def n_tokens(self) -> int:
        """Real (non-padding) input tokens: what tokens/s counts."""
        return int((self.segment_ids > 0).sum())

    @property
    def n_targets(self) -> int:
        """Supervised target tokens: what the loss is normalised by."""
        return int(self.loss_mask.sum())

    @property
    def mean_context(self) -> float:
        """Token-weighted mean length of the (packed) row each real token sits in, sum L^2 / sum L:
        the sequence length in attention's FLOPs (training/flops.py)."""
        seg = self.segment_ids.astype(np.int64)
        keys = (np.arange(seg.shape[0])[:, None] * (int(seg.max()) + 1) + seg)[seg > 0]
        lens = np.bincount(keys).astype(np.float64)
        return float((lens ** 2).sum() / max(lens.sum(), 1.0))

    @property
    def is_packed(self) -> bool:
        return bool((self.segment_ids.max(axis=1) > 1).any())

    def block_causal_mask(self) -> np.ndarray:
        """bool [B, T, T]: query t may attend key s iff s <= t and both are in the same row."""
        seg = self.segment_ids
        same = seg[:, :, None] == seg[:, None, :]
        causal = np.tril(np.ones((seg.shape[1], seg.shape[1]), dtype=bool))
        return same & causal[None] & (seg[:, :, None] > 0)


def collate(rows: list[tuple[list[int], list[float]]], pad_id: int, pack_into: int = 0) -> Batch:
    """Build a Batch from (token_ids, token_loss_mask) rows.

    `token_loss_mask[j]` says whether token j is supervised (as a target). With `pack_into` > 0
    rows are concatenated greedily (in the order given) into sequences of at most that many
    input tokens; otherwise each row is one sequence padded to the longest in the batch.
    """
    seqs: list[list[tuple[list[int], list[float]]]] = []
    if pack_into > 0:
        cur, cur_len = [], 0
        for ids, mask in rows:
            n = len(ids) - 1
            if cur and cur_len + n > pack_into:
                seqs.append(cur)
                cur, cur_len = [], 0
            cur.append((ids, mask))
            cur_len += n
        if cur:
            seqs.append(cur)
    else:
        seqs = [[r] for r in rows]
    return collate_sequences(seqs, pad_id)


def collate_sequences(seqs: list[list[tuple[list[int], list[float]]]], pad_id: int) -> Batch:
    """Build a Batch whose row i packs the rows `seqs[i]` (one or more), padded to the longest."""
    width = max(1, max(sum(len(ids) - 1 for ids, _ in seq) for seq in seqs))
    b = len(seqs)
    inputs = np.full((b, width), pad_id, dtype=np.int32)
    targets = np.full((b, width), pad_id, dtype=np.int32)
    loss_mask = np.zeros((b, width), dtype=np.float32)
    position_ids = np.zeros((b, width), dtype=np.int32)
    segment_ids = np.zeros((b, width), dtype=np.int32)
    for i, seq in enumerate(seqs):
        t = 0
        for k, (ids, mask) in enumerate(seq, start=1):
            n = len(ids) - 1
            if n <= 0:
                continue
            inputs[i, t:t + n] = ids[:-1]
            targets[i, t:t + n] = ids[1:]
            loss_mask[i, t:t + n] = mask[1:]
            position_ids[i, t:t + n] = np.arange(n)
            segment_ids[i, t:t + n] = k
            t += n
    return Batch(inputs, targets, loss_mask, position_ids, segment_ids)
