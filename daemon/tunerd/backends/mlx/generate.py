"""Streamed generation with mlx-lm: a long prompt read in chunks by time, a previous turn's KV
cache reused, mlx-lm's sampler chain drawing from its own key, and the reply's text held back at
a possible stop string (generation.ReplyText)."""
from __future__ import annotations

from typing import Callable, Iterator

import mlx.core as mx

from ..generation import GenerationChunk, PrefillPlan, PromptCache, ReplyText, Sampling


def prompt_cache() -> PromptCache:
    """The KV caches of recent replies, per adapter (generation.PromptCache over mlx-lm's caches)."""
    return PromptCache(lambda c: c[0].offset if c else 0, _trim)


def stream(model, wrapper, prompt_ids: list[int], sampling: Sampling, should_stop: Callable[[], bool],
           caches: PromptCache, key) -> Iterator[GenerationChunk]:
    """One chunk per new token (the last with its finish_reason); the KV cache is kept in `caches`
    under `key` for the next turn."""
    from mlx_lm.generate import stream_generate
    from mlx_lm.models.cache import make_prompt_cache
    from mlx_lm.sample_utils import make_logits_processors

    model.eval()
    sampler = _own_key_sampler(sampling)
    processors = make_logits_processors(
        repetition_penalty=sampling.repetition_penalty if sampling.repetition_penalty != 1.0 else None)
    reply, text = ReplyText(sampling.stop), ""
    tokens = list(prompt_ids)
    # a previous turn's cache: read only the rest (not with a repetition penalty, whose
    # context mlx-lm takes from the tokens it is given)
    cache, reused = caches.take(key, tokens) if processors == [] else (None, 0)
    cache = cache if cache is not None else make_prompt_cache(model)
    try:
        prompt = tokens[reused:]
        plan = PrefillPlan(len(prompt))   # a long prompt in chunks of about PREFILL_SECONDS each
        while plan.total - plan.pos > plan.size():   # the last chunk: stream_generate reads it
            n = plan.next()
            with plan.timed(n):
                model(mx.array(prompt[plan.pos - n:plan.pos])[None], cache=cache)
                mx.eval([c.state for c in cache])
            yield GenerationChunk("", -1)
            if should_stop():
                yield GenerationChunk("", -1, "cancelled")
                return
        prompt = prompt[plan.pos:]
        for resp in stream_generate(model, wrapper, prompt, max_tokens=sampling.max_tokens,
                                    sampler=sampler, logits_processors=processors, prompt_cache=cache):
            tokens.append(int(resp.token))
            if should_stop():
                yield GenerationChunk(reply.rest(), int(resp.token), "cancelled")
                return
            text += resp.text
            delta, stopped = reply.update(text)
            if stopped or resp.finish_reason:
                yield GenerationChunk(delta + ("" if stopped else reply.rest()), int(resp.token),
                                      "stop" if stopped else resp.finish_reason)
                return
            yield GenerationChunk(delta, int(resp.token))  # one chunk per token (usage counts them)
    finally:
        caches.put(key, tokens, cache)
        mx.clear_cache()   # freed buffers go back (device.set_memory_limits); the kept KV cache stays


def greedy(logprobs):
    return mx.argmax(logprobs, axis=-1)


def _own_key_sampler(s: Sampling):
    """mlx_lm's sampler chain (top-p, min-p, top-k, then temperature), drawing from its own key
    instead of the global mx.random state that a training job's dropout uses."""
    import secrets

    from mlx_lm.sample_utils import apply_min_p, apply_top_k, apply_top_p

    if s.temperature <= 0:
        return greedy   # one object: a batch of greedy rows is sampled in one call
    key = [mx.random.key(s.seed if s.seed is not None else secrets.randbits(62))]

    def sampler(logprobs):
        if 0 < s.top_p < 1.0:
            logprobs = apply_top_p(logprobs, s.top_p)
        if s.min_p:
            logprobs = apply_min_p(logprobs, s.min_p, 1)
        if s.top_k > 0:
            logprobs = apply_top_k(logprobs, s.top_k)
        key[0], sub = mx.random.split(key[0])
        return mx.random.categorical(logprobs * (1.0 / s.temperature), key=sub)
    return sampler


def _trim(cache, n: int):
    """Drop the last n tokens of an mlx-lm prompt cache; None when it cannot (rotating caches)."""
    from mlx_lm.models.cache import can_trim_prompt_cache, trim_prompt_cache

    if not can_trim_prompt_cache(cache):
        return None
    if n:
        trim_prompt_cache(cache, n)
    return cache
