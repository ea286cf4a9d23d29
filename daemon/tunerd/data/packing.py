"""Batch order, length grouping and packing — all deterministic in (seed, epoch).

- Length grouping (no packing): rows are shuffled, cut into mega-batches of 64 batches, each
  sorted by length, then cut into batches padded only to their own longest row; the batch
  holding the longest row goes first, so an out-of-memory shows at step 1, not at hour 3.
- Packing: rows go, longest first (ties in shuffled order), into the fullest sequence of
  `max_seq_length` input tokens they still fit (best fit decreasing); sequences are shuffled
  and grouped `batch_size` to a batch. Position ids restart per row (see batch.py).
"""
from __future__ import annotations

import bisect
import random

from .batch import Batch

MEGA = 64


def epoch_rng(seed: int, epoch: int) -> random.Random:
    return random.Random(seed * 1_000_003 + epoch)


def batch_order(lengths: list[int], batch_size: int, *, shuffle: bool, group_by_length: bool,
                seed: int, epoch: int) -> list[list[int]]:
    """Row indices of each batch of one epoch."""
    order = list(range(len(lengths)))
    rng = epoch_rng(seed, epoch)
    if shuffle:
        rng.shuffle(order)
    if not group_by_length:
        return [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
    if not shuffle:
        order.sort(key=lambda i: -lengths[i])
        return [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
    batches = []
    mega = batch_size * MEGA
    for m in range(0, len(order), mega):
        chunk = sorted(order[m:m + mega], key=lambda i: -lengths[i])
        batches += [chunk[i:i + batch_size] for i in range(0, len(chunk), batch_size)]
    rng.shuffle(batches)
    longest = max(range(len(batches)), key=lambda b: max(lengths[i] for i in batches[b]), default=0)
    if batches:
        batches.insert(0, batches.pop(longest))
    return batches


def pack(lengths: list[int], capacity: int, order: list[int]) -> list[list[int]]:
    """Bins of row indices whose lengths sum to at most `capacity` (best fit decreasing).
    `order` breaks ties between equal lengths (pass a shuffled order for variety per epoch)."""
    items = sorted(order, key=lambda i: -lengths[i])  # stable: ties keep `order`
    bins: list[list[int]] = []
    free: list[tuple[int, int]] = []  # (free space, bin index), sorted
    for i in items:
        n = lengths[i]
        k = bisect.bisect_left(free, (n, -1))
        if k < len(free):
            space, b = free.pop(k)
            bins[b].append(i)
            bisect.insort(free, (space - n, b))
        else:
            bins.append([i])
            bisect.insort(free, (capacity - n, len(bins) - 1))
    return bins


def padding_waste(batches: list[Batch]) -> float:
    """Share of batch positions that are padding (0.0 .. 1.0)."""
    total = sum(b.inputs.size for b in batches)
    real = sum(b.n_tokens for b in batches)
    return 0.0 if total == 0 else 1.0 - real / total
