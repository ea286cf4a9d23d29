"""Token-by-token generation with a KV cache, HF-style sampling, and streamed text deltas."""
from __future__ import annotations

import inspect
import secrets
from typing import Callable, Iterator, Optional

import torch

from ..generation import Detokenizer, GenerationChunk, PrefillPlan, PromptCache, ReplyText, Sampling


def sample_next(logits: torch.Tensor, context: torch.Tensor, s: Sampling,
                gen: Optional[torch.Generator]) -> int:
    """One token from float32 logits [V]; HF order: repetition penalty, temperature, top-k, top-p, min-p."""
    logits = logits.float().clone()
    if s.repetition_penalty and s.repetition_penalty != 1.0 and context.numel():
        seen = logits[context]
        logits[context] = torch.where(seen > 0, seen / s.repetition_penalty, seen * s.repetition_penalty)
    if s.temperature <= 0:
        return int(logits.argmax())
    logits = logits / s.temperature
    if s.top_k and 0 < s.top_k < logits.numel():
        kth = torch.topk(logits, s.top_k).values[-1]
        logits[logits < kth] = float("-inf")
    probs = torch.softmax(logits, dim=-1)
    if 0 < s.top_p < 1.0:
        sp, idx = torch.sort(probs, descending=True)
        drop = sp.cumsum(0) - sp > s.top_p  # keep the smallest prefix whose mass reaches top_p
        probs[idx[drop]] = 0.0
    if s.min_p and s.min_p > 0:
        probs[probs < s.min_p * probs.max()] = 0.0
    return int(torch.multinomial(probs / probs.sum(), 1, generator=gen))


def _cache_arg(model) -> str:
    """The forward's name for the KV cache: `cache` since transformers 5.2x (`past_key_values`, its old
    name, goes in 5.40), `past_key_values` before."""
    base_model = model.get_base_model() if hasattr(model, "get_base_model") else model   # PeftModel: the HF model
    cls = type(base_model)
    if cls not in _CACHE_ARG:
        _CACHE_ARG[cls] = "cache" if "cache" in inspect.signature(cls.forward).parameters else "past_key_values"
    return _CACHE_ARG[cls]


_CACHE_ARG: dict = {}


def step(model, input_ids: torch.Tensor, cache):
    """One forward over `input_ids` after what `cache` holds (None: nothing yet), keeping the cache."""
    return model(input_ids=input_ids, use_cache=True, **{_cache_arg(model): cache})


def cache_of(out):
    """The KV cache a forward returned, under either name."""
    cache = getattr(out, "cache", None)
    return cache if cache is not None else out.past_key_values


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


@torch.no_grad()
def stream(model, tokenizer, prompt_ids: list[int], s: Sampling, eos_ids: set, device: torch.device,
           should_stop: Callable[[], bool], past=None, reused: int = 0,
           keep: Callable = lambda tokens, past: None) -> Iterator[GenerationChunk]:
    """Yield one chunk per new token (text may be empty while a character or a possible stop
    string is incomplete); the last chunk carries finish_reason stop | length | cancelled.
    `past` may already hold the first `reused` prompt tokens (a previous turn's cache); at the
    end `keep(tokens, past)` gets the cache back with the tokens it was built from."""
    state = {"past": past, "generated": []}
    try:
        yield from _stream(model, tokenizer, prompt_ids, s, eos_ids, device, should_stop, reused, state)
    finally:
        if state["past"] is not None:
            keep(list(prompt_ids) + state["generated"], state["past"])


def _stream(model, tokenizer, prompt_ids, s, eos_ids, device, should_stop, reused, state):
    # its own generator, never the global RNG a training job draws its dropout from
    # sampling stays on the device: only the chosen token id crosses to the CPU (not [V] logits)
    gen = torch.Generator(device=device).manual_seed(s.seed if s.seed is not None else secrets.randbits(63))
    reply, text = ReplyText(s.stop), Detokenizer(tokenizer)
    context = torch.tensor(prompt_ids, dtype=torch.long, device=device)
    ids = torch.tensor([prompt_ids[reused:]], dtype=torch.long, device=device)
    plan = PrefillPlan(ids.shape[1])   # a long prompt in chunks of about PREFILL_SECONDS each
    while n := plan.next():
        start = plan.pos - n
        if start:
            yield GenerationChunk("", -1)
            if should_stop():
                yield GenerationChunk("", -1, "cancelled")
                return
        with plan.timed(n):
            out = step(model, ids[:, start:plan.pos], state["past"])
            _synchronize(device)   # the chunk's real time (CUDA and MPS return before the work is done)
        state["past"] = cache_of(out)
    logits = out.logits[0, -1]
    generated = state["generated"]
    for i in range(max(s.max_tokens, 0)):
        if should_stop():
            yield GenerationChunk(reply.rest(), -1, "cancelled")
            return
        tok = sample_next(logits, context, s, gen)
        if tok in eos_ids:
            yield GenerationChunk(reply.rest(), tok, "stop")
            return
        generated.append(tok)
        context = torch.cat([context, torch.tensor([tok], device=device)])
        delta, stopped = reply.update(text.add(tok))
        if stopped or i == s.max_tokens - 1:
            yield GenerationChunk(delta + ("" if stopped else reply.rest()), tok, "stop" if stopped else "length")
            return
        yield GenerationChunk(delta, tok)
        out = step(model, torch.tensor([[tok]], device=device), state["past"])
        state["past"], logits = cache_of(out), out.logits[0, -1]
    yield GenerationChunk("", -1, "length")  # max_tokens == 0


def prompt_cache() -> PromptCache:
    """The KV caches of recent replies, per adapter (generation.PromptCache over transformers' caches)."""
    return PromptCache(lambda c: c.get_seq_length(), _crop)


def _crop(cache, n: int):
    """Drop the last n tokens of a transformers cache; None when it cannot (sliding windows)."""
    try:
        if n:
            cache.crop(cache.get_seq_length() - n)
        return cache
    except Exception:  # noqa: BLE001 - a cache type without crop: read the prompt again
        return None
