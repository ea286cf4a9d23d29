"""Batched decoding on torch (issue 21): one forward per step for every sequence of a batch over
one batched transformers DynamicCache, left-padded (a 2-D attention mask and explicit position ids,
as transformers' own batched `generate` does it), so each sequence's greedy tokens equal its tokens
generated alone. A sequence joins after its prompt was read on its own (in time-sized chunks, one
a step, generation.PrefillPlan): its cache is padded on the left to the batch's length and
concatenated. Sampling is per sequence (generate.sample_next with the sequence's own generator);
greedy rows share one argmax. Measured against `model.generate` on a padded batch (bench/bench_chat.py),
this loop lets sequences join and leave between steps, which a fixed `generate` batch cannot."""
from __future__ import annotations

import secrets
from collections import deque
from typing import Optional

import torch

from ..generation import BatchDecoder, GenerationChunk, PrefillPlan, PromptCache, Sequence, Sampling
from .generate import _synchronize, cache_of, sample_next, step


class _Row:
    def __init__(self, uid: int, prompt: list[int], seq: Sequence, gen: torch.Generator, device, past, reused):
        self.uid, self.prompt, self.seq, self.gen = uid, prompt, seq, gen
        self.context = torch.tensor(prompt, dtype=torch.long, device=device)
        self.ids = torch.tensor([prompt[reused:]], dtype=torch.long, device=device)
        self.plan = PrefillPlan(self.ids.shape[1])
        self.past, self.logits = past, None


def _batchable(cache) -> bool:
    """Only plain DynamicLayer caches are padded and concatenated (a sliding window is not)."""
    from transformers.cache_utils import DynamicLayer

    return all(type(layer) is DynamicLayer for layer in getattr(cache, "layers", [None]))


class TorchBatch(BatchDecoder):
    def __init__(self, model, tokenizer, eos_ids: set, device: torch.device,
                 caches: Optional[PromptCache] = None, key=None):
        self.model, self.tok, self.eos, self.device = model, tokenizer, eos_ids, device
        self.caches, self.key = caches, key
        self.rows: list[_Row] = []          # decoding, in the order of the cache's batch rows
        self.waiting: deque = deque()       # their prompt still being read, first one first
        self.done: list = []                # finished before a step (max_tokens 0)
        self.cache = self.mask = self.logits = None
        self._uid = 0

    def __len__(self) -> int:
        return len(self.rows) + len(self.waiting) + len(self.done)

    def add(self, prompt_ids: list[int], sampling: Sampling) -> int:
        self._uid += 1
        seq = Sequence(self.tok, sampling, self.eos)
        if sampling.max_tokens <= 0:
            self.done.append((self._uid, GenerationChunk("", -1, "length")))
            return self._uid
        # its own generator, never the global RNG a training job draws its dropout from
        gen = torch.Generator(device=self.device).manual_seed(
            sampling.seed if sampling.seed is not None else secrets.randbits(63))
        past, reused = self.caches.take(self.key, list(prompt_ids)) if self.caches else (None, 0)
        self.waiting.append(_Row(self._uid, list(prompt_ids), seq, gen, self.device, past, reused))
        return self._uid

    def remove(self, uid: int) -> GenerationChunk:
        for r in list(self.waiting):
            if r.uid == uid:
                self.waiting.remove(r)
                return r.seq.cancelled()
        for i, r in enumerate(self.rows):
            if r.uid == uid:
                self._keep(i)
                self._select([j for j in range(len(self.rows)) if j != i])
                return r.seq.cancelled()
        for j, (u, chunk) in enumerate(self.done):
            if u == uid:
                del self.done[j]
                return chunk
        return GenerationChunk("", -1, "cancelled")

    def close(self) -> None:
        self.rows, self.waiting, self.done = [], deque(), []
        self.cache = self.mask = self.logits = None

    @torch.no_grad()
    def step(self) -> list[tuple[int, GenerationChunk]]:
        out, self.done = self.done, []
        if self.waiting and (not self.rows or _batchable(self.cache)):
            self._prefill(self.waiting[0])
        if not self.rows:
            return out
        keep, tokens = [], self._sample()
        for i, (r, tok) in enumerate(zip(self.rows, tokens)):
            chunk = r.seq.token(tok)
            out.append((r.uid, chunk))
            if chunk.finish_reason:
                self._keep(i)
            else:
                keep.append(i)
                r.context = torch.cat([r.context, torch.tensor([tok], device=self.device)])
        if len(keep) < len(self.rows):
            tokens = [tokens[i] for i in keep]
            self._select(keep)
        if self.rows:
            position = self.mask.sum(dim=1, keepdim=True)
            self.mask = torch.cat([self.mask, torch.ones_like(position)], dim=1)
            res = self.model(input_ids=torch.tensor(tokens, device=self.device)[:, None], attention_mask=self.mask,
                             position_ids=position, use_cache=True, **{_arg(self.model): self.cache})
            self.cache, self.logits = cache_of(res), res.logits[:, -1]
        return out

    def _prefill(self, r: _Row) -> None:
        """One chunk of the first waiting prompt, on its own; joins the batch once it is read."""
        n = r.plan.next()
        with r.plan.timed(n):
            res = step(self.model, r.ids[:, r.plan.pos - n:r.plan.pos], r.past)
            _synchronize(self.device)
        r.past = cache_of(res)
        if r.plan.size() == 0:
            r.logits = res.logits[:, -1]
            self.waiting.popleft()
            self._join(r)

    def _join(self, r: _Row) -> None:
        n = r.past.get_seq_length()
        if not self.rows:
            self.rows, self.cache, self.logits = [r], r.past, r.logits
            self.mask = torch.ones(1, n, dtype=torch.long, device=self.device)
            return
        length = self.mask.shape[1]
        width = max(length, n)
        for mine, theirs in zip(self.cache.layers, r.past.layers):
            mine.keys = torch.cat([_pad(mine.keys, width), _pad(theirs.keys, width)])
            mine.values = torch.cat([_pad(mine.values, width), _pad(theirs.values, width)])
        ones = torch.ones(1, n, dtype=torch.long, device=self.device)
        self.mask = torch.cat([_pad_mask(self.mask, width), _pad_mask(ones, width)])
        self.logits = torch.cat([self.logits, r.logits])
        self.rows.append(r)
        r.past = None

    def _select(self, keep: list[int]) -> None:
        self.rows = [self.rows[i] for i in keep]
        if not keep:
            self.cache = self.mask = self.logits = None
            return
        idx = torch.tensor(keep, device=self.device)
        self.mask, self.logits = self.mask[idx], self.logits[idx]
        first = int(self.mask.any(dim=0).nonzero()[0])   # columns that are padding in every row go
        for layer in self.cache.layers:
            layer.keys, layer.values = layer.keys[idx, :, first:], layer.values[idx, :, first:]
        self.mask = self.mask[:, first:]

    def _keep(self, i: int) -> None:
        """A finished row's own cache (its padding cut off) back in the prompt cache for its next turn."""
        if self.caches is None or self.cache is None:
            return
        from transformers import DynamicCache

        first = int(self.mask[i].nonzero()[0])
        own = DynamicCache([(layer.keys[i:i + 1, :, first:], layer.values[i:i + 1, :, first:])
                            for layer in self.cache.layers])
        r = self.rows[i]
        self.caches.put(self.key, r.prompt + r.seq.generated, own)

    def _sample(self) -> list[int]:
        logits = self.logits.float()
        greedy = [i for i, r in enumerate(self.rows)
                  if r.seq.sampling.temperature <= 0 and r.seq.sampling.repetition_penalty == 1.0]
        tokens = [0] * len(self.rows)
        if greedy:
            best = logits[greedy].argmax(dim=-1).tolist()
            for i, tok in zip(greedy, best):
                tokens[i] = tok
        for i, r in enumerate(self.rows):
            if i not in greedy:
                tokens[i] = sample_next(logits[i], r.context, r.seq.sampling, r.gen)
        return tokens


def _arg(model) -> str:
    from .generate import _cache_arg

    return _cache_arg(model)


def _pad(t: torch.Tensor, width: int) -> torch.Tensor:
    """[B, H, L, D] padded on the left (the sequence axis) to `width`."""
    missing = width - t.shape[2]
    if missing <= 0:
        return t
    return torch.cat([t.new_zeros(t.shape[0], t.shape[1], missing, t.shape[3]), t], dim=2)


def _pad_mask(m: torch.Tensor, width: int) -> torch.Tensor:
    missing = width - m.shape[1]
    return m if missing <= 0 else torch.cat([m.new_zeros(m.shape[0], missing), m], dim=1)
