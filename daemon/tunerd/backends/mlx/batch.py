"""Batched decoding on MLX (issue 21): mlx-lm's own continuous batching (`BatchGenerator`, as
`mlx_lm.server` uses it) behind generation.BatchDecoder. Each sequence has its own sampler
(mlx-lm's chain with its own key, generate._own_key_sampler), its repetition penalty, max_tokens
and the model's eos tokens; stop strings and the streamed text are generation.Sequence's. A long
prompt is read `prefill_step_size` tokens a step while the others decode; that size follows the
time per prompt token measured so far (generation.PrefillPlan's rule). A previous turn's KV cache
(generate.prompt_cache) is handed in with the sequence and the finished one's is kept."""
from __future__ import annotations

from typing import Optional

import mlx.core as mx

from ..generation import (PREFILL_FIRST, BatchDecoder, GenerationChunk, PrefillPlan, PromptCache, Sampling,
                          Sequence)
from .generate import _own_key_sampler


class MlxBatch(BatchDecoder):
    def __init__(self, model, wrapper, caches: Optional[PromptCache] = None, key=None, size: int = 64):
        from mlx_lm.generate import BatchGenerator

        model.eval()
        self.eos = set(wrapper.eos_token_ids)
        self.tok, self.caches, self.key = wrapper._tokenizer, caches, key
        self.gen = BatchGenerator(model, stop_tokens=[[e] for e in sorted(self.eos)], completion_batch_size=size,
                                  prefill_batch_size=size, prefill_step_size=PREFILL_FIRST)
        self.seqs: dict = {}   # uid -> (Sequence, the prompt's tokens)
        self.done: list = []
        self.plan = PrefillPlan(1 << 62)   # only its rule (never read to the end): tokens a step from the time per token

    def __len__(self) -> int:
        return len(self.seqs) + len(self.done)

    def add(self, prompt_ids: list[int], sampling: Sampling) -> int:
        from mlx_lm.sample_utils import make_logits_processors

        tokens = list(prompt_ids)
        seq = Sequence(self.tok, sampling, self.eos)
        processors = make_logits_processors(
            repetition_penalty=sampling.repetition_penalty if sampling.repetition_penalty != 1.0 else None)
        # a previous turn's cache: read only the rest (not with a repetition penalty, whose
        # context mlx-lm takes from the tokens it is given)
        cache, reused = self.caches.take(self.key, tokens) if self.caches and not processors else (None, 0)
        [uid] = self.gen.insert([tokens[reused:]], max_tokens=[max(sampling.max_tokens, 1)],
                                caches=[cache], all_tokens=[tokens[:reused]] if cache is not None else None,
                                samplers=[_own_key_sampler(sampling)], logits_processors=[processors])
        if sampling.max_tokens <= 0:
            self.gen.remove([uid])
            self.done.append((uid, GenerationChunk("", -1, "length")))
        else:
            self.seqs[uid] = seq
        return uid

    def remove(self, uid: int) -> GenerationChunk:
        for j, (u, chunk) in enumerate(self.done):
            if u == uid:
                del self.done[j]
                return chunk
        seq = self.seqs.pop(uid, None)
        if seq is None:
            return GenerationChunk("", -1, "cancelled")
        kept = self.gen.remove([uid], return_prompt_caches=self.caches is not None)
        if uid in kept and kept[uid][0] is not None:
            self._keep(*kept[uid])
        return seq.cancelled()

    def close(self) -> None:
        if self.seqs:
            self.gen.remove(list(self.seqs))
        self.seqs, self.done = {}, []
        self.gen.close()
        mx.clear_cache()   # freed buffers go back (device.set_memory_limits); the kept KV caches stay

    def step(self) -> list[tuple[int, GenerationChunk]]:
        out, self.done = self.done, []
        if not self.seqs:
            return out
        self.gen.prefill_step_size = self.plan.size()   # PREFILL_FIRST until a chunk was timed
        with self.gen.stats() as st:
            _, responses = self.gen.next()
        if st.prompt_tokens:
            self.plan.took(st.prompt_tokens, st.prompt_time)
        for r in responses:
            seq = self.seqs.get(r.uid)
            if seq is None:
                continue
            chunk = seq.token(int(r.token))
            if r.finish_reason and not chunk.finish_reason:   # (they agree; the generator's word is final)
                chunk = GenerationChunk(chunk.text + seq.reply.rest(), chunk.token_id, r.finish_reason)
            out.append((r.uid, chunk))
            if chunk.finish_reason:
                del self.seqs[r.uid]
                if r.finish_reason is None:   # a stop string: the generator still has it
                    kept = self.gen.remove([r.uid], return_prompt_caches=self.caches is not None)
                    if r.uid in kept:
                        self._keep(*kept[r.uid])
                elif r.prompt_cache is not None:
                    self._keep(r.prompt_cache, r.all_tokens)
        return out

    def _keep(self, cache, tokens) -> None:
        if self.caches is not None and cache is not None and tokens:
            self.caches.put(self.key, list(tokens), cache)
