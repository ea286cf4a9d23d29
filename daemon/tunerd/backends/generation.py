"""What streamed generation shares on both backends: the sampling parameters (`Sampling`), the
chunks a reply streams in (`GenerationChunk`), the reply's text held back at a possible stop string
(`ReplyText`), a long prompt read in chunks sized by time (`PrefillPlan`) and the KV caches of
recent replies reused by the next turn (`PromptCache`)."""
from __future__ import annotations

import math
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Callable, Iterator, Optional


@dataclass
class Sampling:
    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 0
    min_p: float = 0.0
    repetition_penalty: float = 1.0
    seed: Optional[int] = None
    max_tokens: int = 256
    stop: list = field(default_factory=list)

    def check(self) -> "Sampling":
        """The allowed ranges, one place for gRPC and HTTP: a ValueError naming the field."""
        def bad(name: str, allowed: str) -> ValueError:
            return ValueError(f"{name}: must be {allowed}, got {getattr(self, name)!r}")

        if not math.isfinite(self.temperature) or self.temperature < 0:
            raise bad("temperature", "a finite number >= 0")
        if not 0 < self.top_p <= 1:
            raise bad("top_p", "in (0, 1]")
        if self.top_k < 0:
            raise bad("top_k", "an integer >= 0")
        if not 0 <= self.min_p <= 1:
            raise bad("min_p", "in [0, 1]")
        if not math.isfinite(self.repetition_penalty) or self.repetition_penalty <= 0:
            raise bad("repetition_penalty", "a finite number > 0")
        if self.seed is not None and not -2 ** 63 <= self.seed < 2 ** 63:
            raise bad("seed", "a signed 64-bit integer")
        if self.max_tokens < 0:
            raise bad("max_tokens", "an integer >= 0")
        if not all(isinstance(x, str) for x in self.stop):
            raise ValueError(f"stop: must be a string or a list of strings, got {self.stop!r}")
        return self


@dataclass
class GenerationChunk:
    """One new token's text (maybe empty while held back), or with token_id -1 and no
    finish_reason: a chunk of a long prompt was read (the caller may let others use the device)."""
    text: str
    token_id: int
    finish_reason: Optional[str] = None  # "stop" | "length" | "cancelled" on the last chunk


PREFILL_SECONDS = 0.1   # each chunk of a long prompt takes about this long (half a chat slice of 0.2 s)
PREFILL_FIRST = 32      # tokens in the first chunk, before any time per token is known
PREFILL_MIN, PREFILL_MAX = 16, 4096   # bounds on a chunk, however fast or slow the model is


class PrefillPlan:
    """A long prompt read in chunks sized by time, not a fixed count (issue 16, finding 5): the
    first is small; each next one is sized from the time per token the last one took so it takes
    about PREFILL_SECONDS (within PREFILL_MIN..PREFILL_MAX), so a long-context model does not hold
    the device for seconds per chunk and a small one is not read in needlessly many. The device can
    be yielded between chunks; the tokens produced are those of an unchunked read.

        plan = PrefillPlan(len(ids))
        while (n := plan.next()):
            with plan.timed(n):
                model(ids[plan.pos - n: plan.pos])   # read (and wait for) the chunk
    """

    def __init__(self, total: int, seconds: Optional[float] = None):
        self.total, self.pos = total, 0
        self.seconds = PREFILL_SECONDS if seconds is None else seconds
        self.per_token: Optional[float] = None
        self.sizes: list[int] = []

    def size(self) -> int:
        """Tokens in the next chunk (0: the prompt is read)."""
        left = self.total - self.pos
        if left <= 0:
            return 0
        if self.per_token is None:
            want = PREFILL_FIRST
        else:
            want = int(self.seconds / max(self.per_token, 1e-9))
        return min(left, max(PREFILL_MIN, min(PREFILL_MAX, want)))

    def next(self) -> int:
        """The next chunk's size, the position moved past it."""
        n = self.size()
        self.pos += n
        if n:
            self.sizes.append(n)
        return n

    def took(self, n: int, seconds: float) -> None:
        """The last chunk of n tokens took this long (attention grows with the position: the
        latest chunk is the best guess for the next)."""
        if n > 0:
            self.per_token = max(seconds, 0.0) / n

    @contextmanager
    def timed(self, n: int):
        t0 = time.perf_counter()
        yield
        self.took(n, time.perf_counter() - t0)


class ReplyText:
    """The text of one streamed reply, written once for both backends: `update(text so far)` gives
    the part that is safe to send (a possible start of a stop string and an incomplete UTF-8
    character, U+FFFD until its next bytes come, are held back) and whether a stop string ended the
    reply (the text before the first one found is sent); `rest()` is what is left when the reply
    ends otherwise (eos, max_tokens, cancel), without a character cut off at its end."""

    def __init__(self, stops: list[str]):
        self.stops = [x for x in stops if x]
        self.text, self.sent = "", 0

    def update(self, text: str) -> tuple[str, bool]:
        self.text = text
        hits = [j for j in (text.find(x, max(0, self.sent - len(x))) for x in self.stops) if j >= 0]
        if hits:
            return self._upto(min(hits)), True
        safe = len(text) - partial_stop_len(text, self.stops)
        while safe > self.sent and text[safe - 1] == "\ufffd":
            safe -= 1
        return self._upto(safe), False

    def rest(self) -> str:
        return self._upto(len(self.text) - self.text.endswith("\ufffd"))

    def _upto(self, end: int) -> str:
        out = self.text[self.sent:end]
        self.sent = max(self.sent, end)
        return out


def partial_stop_len(text: str, stops: list[str]) -> int:
    """Length of the longest suffix of `text` that is a proper prefix of a stop string: the
    part of a streamed reply both backends hold back until it is known not to start a stop."""
    best = 0
    for stop in stops:
        for n in range(min(len(stop) - 1, len(text)), best, -1):
            if text.endswith(stop[:n]):
                best = n
                break
    return best


class Detokenizer:
    """The reply's text so far, decoded incrementally: a new token decodes a short window (the
    tokens since the last complete character, after the few before them for context) instead of
    the whole reply again (the offsets approach of TGI's and vLLM's incremental detokenization).
    `add` returns the whole text so far; an incomplete character at its end reads as U+FFFD, as a
    full decode would show it."""

    def __init__(self, tokenizer):
        self.tok, self.ids, self.done = tokenizer, [], ""
        self.prefix = self.read = 0   # ids[prefix:read]: context already in `done`; ids[read:]: pending

    def add(self, token_id: int) -> str:
        self.ids.append(token_id)
        before = self._decode(self.prefix, self.read)
        now = self._decode(self.prefix, len(self.ids))
        if len(now) > len(before) and not now.endswith("\ufffd"):
            self.done += now[len(before):]
            self.prefix, self.read = self.read, len(self.ids)
            return self.done
        return self.done + now[len(before):]

    def _decode(self, start: int, end: int) -> str:
        return self.tok.decode(self.ids[start:end], skip_special_tokens=True) if end > start else ""


class PromptCache:
    """The KV caches of recent replies, one per adapter, reused by the next request whose prompt
    starts with the same tokens (the next turn of a conversation re-sends the whole history): only
    the new tokens are read. A cache is taken out while a reply uses it and put back after, so two
    chats never share one. The backend gives `length(cache)` and `trim(cache, n)` (drop the last n
    tokens; None when the cache cannot be trimmed, e.g. a sliding window)."""

    def __init__(self, length: Callable, trim: Callable, slots: int = 4):
        self._length, self._trim, self._slots = length, trim, slots
        self._kept: dict = {}   # adapter name -> (tokens in the cache, cache)

    def take(self, key, prompt: list[int]):
        """(a cache holding prompt[:n], n) with n < len(prompt), or (None, 0)."""
        kept = self._kept.pop(key, None)
        if kept is None:
            return None, 0
        tokens, cache = kept
        n = 0
        for a, b in zip(tokens, prompt):
            if a != b:
                break
            n += 1
        n = min(n, len(prompt) - 1)   # at least one token to read: it gives the first logits
        if n <= 0 or self._trim(cache, len(tokens) - n) is None:
            return None, 0
        return cache, n

    def put(self, key, tokens: list[int], cache) -> None:
        """Keep `cache`, which holds the first `length(cache)` of `tokens`."""
        n = self._length(cache)
        if n <= 0 or n > len(tokens):
            return
        self._kept.pop(key, None)
        self._kept[key] = (list(tokens[:n]), cache)
        while len(self._kept) > self._slots:
            self._kept.pop(next(iter(self._kept)))

    def clear(self) -> None:
        self._kept.clear()


class Sequence:
    """One reply of a batch, written once for both backends: the chunk each new token makes (eos,
    a stop string, max_tokens end it), the text so far (Detokenizer, ReplyText) and its tokens."""

    def __init__(self, tokenizer, sampling: Sampling, eos_ids):
        self.sampling, self.eos = sampling, set(eos_ids)
        self.reply, self.text = ReplyText(sampling.stop), Detokenizer(tokenizer)
        self.generated: list[int] = []

    def token(self, tok: int) -> GenerationChunk:
        if tok in self.eos:
            return GenerationChunk(self.reply.rest(), tok, "stop")
        self.generated.append(tok)
        delta, stopped = self.reply.update(self.text.add(tok))
        if stopped or len(self.generated) >= self.sampling.max_tokens:
            return GenerationChunk(delta + ("" if stopped else self.reply.rest()), tok,
                                   "stop" if stopped else "length")
        return GenerationChunk(delta, tok)

    def cancelled(self) -> GenerationChunk:
        return GenerationChunk(self.reply.rest(), -1, "cancelled")


class BatchDecoder:
    """Several replies decoded together, one forward per step for all of them (issue 21): a
    backend's `_decoder(key)` makes one for the adapter `key` (ServingBackend.decoder selects it
    around each call). Sequences join (`add`) and leave (`remove`, or when they finish) between
    steps; each keeps its own sampling parameters and RNG, and a greedy reply equals the reply
    generated alone, token for token. A long prompt is read in chunks of about PREFILL_SECONDS,
    one chunk per step, while the others keep decoding.

        uid = dec.add(prompt_ids, sampling)
        while len(dec):
            for uid, chunk in dec.step(): ...   # at most one chunk per sequence a step
    """

    def add(self, prompt_ids: list[int], sampling: Sampling) -> int:
        raise NotImplementedError

    def remove(self, uid: int) -> GenerationChunk:
        """Drop a sequence (cancelled, past its deadline, its client gone): its last chunk."""
        raise NotImplementedError

    def step(self) -> list[tuple[int, GenerationChunk]]:
        raise NotImplementedError

    def __len__(self) -> int:
        raise NotImplementedError

    def close(self) -> None:
        """Every sequence dropped, the memory it held freed."""


def decode_each(decoder: BatchDecoder, prompts: list[list[int]], sampling: Sampling,
                should_stop: Callable[[], bool] = lambda: False, batch_size: int = 8,
                run: Callable[[Callable], object] = lambda f: f()) -> Iterator[tuple[int, str]]:
    """(index, whole reply) for each of `prompts` as it finishes, at most `batch_size` decoded
    together (a finished one's place is taken by the next prompt at once): evaluation's batched
    generation. Each step goes through `run` (the device thread: a training job takes its turns
    between steps); `should_stop` ends it early, the unfinished replies not yielded."""
    texts: dict = {}
    uids: dict = {}
    todo = list(enumerate(prompts))[::-1]
    try:
        while todo or len(decoder):
            while todo and len(decoder) < max(batch_size, 1):
                i, ids = todo.pop()
                uids[run(lambda ids=ids: decoder.add(ids, sampling))] = i
            if should_stop():
                return
            for uid, chunk in run(decoder.step):
                i = uids[uid]
                texts[i] = texts.get(i, "") + chunk.text
                if chunk.finish_reason:
                    yield i, texts.pop(i)
    finally:
        run(decoder.close)


def decode_all(decoder: BatchDecoder, prompts: list[list[int]], sampling: Sampling,
               should_stop: Callable[[], bool] = lambda: False, batch_size: int = 8) -> list[str]:
    """The replies to `prompts` in order (decode_each's, all of them)."""
    texts = dict(decode_each(decoder, prompts, sampling, should_stop, batch_size))
    return [texts.get(i, "") for i in range(len(prompts))]
