"""Chat and plain completion: stream a reply from a resident model (optionally with an adapter).

Generation runs on the device worker (it owns the models): this module checks a request, has the
model made resident, tokenises the prompt and hands the sequence to serving.Scheduler, which
decodes it in one batch with the other requests on that model and adapter; the chunks come back
through a queue to whichever thread asked (a gRPC or HTTP handler).
"""
from __future__ import annotations

import logging
import queue
import threading
import time
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field
from typing import Iterator, Optional

from .backends.generation import Sampling
from .jobs import refs
from .jobs.store import JobStore
from .jobs.worker import DeviceWorker
from .model_config import context_positions
from .models.check import check_adapter, check_model
from .models.registry import ModelRegistry
from .serving import Reply, Scheduler, rng_untouched


@dataclass(frozen=True)
class Usage:
    prompt_tokens: int
    completion_tokens: int
    time_to_first_token_seconds: float   # from the request's arrival (the wait for the device included)
    queue_wait_seconds: float            # arrival until the device started on it
    tokens_per_second: float


@dataclass
class ChatDelta:
    """One message of a chat's stream: a download's progress, a piece of the reply, or (the last
    one, and only it) the `finish_reason` with the `usage`."""
    text: str = ""
    finish_reason: str = ""
    usage: Optional[Usage] = None
    download: Optional[object] = None   # models.download.Download: the model is being fetched first


@dataclass
class ChatParams:
    messages: list = field(default_factory=list)
    model: str = ""
    adapter: str = ""
    backend: str = "auto"
    sampling: Sampling = field(default_factory=Sampling)
    prompt: Optional[str] = None   # plain completion: this text as it is, no chat template


_DONE = object()
log = logging.getLogger(__name__)




def context_length(model: str) -> Optional[int]:
    """Positions the model was trained for (config.json of a local dir or the hub cache), or None."""
    ctx = context_positions(model)
    return ctx[0] if ctx else None


def check_length(prompt_tokens: int, max_tokens: int, context: Optional[int]) -> None:
    """INVALID_ARGUMENT (ValueError) when the prompt or the reply cannot fit the model's context."""
    if max_tokens < 0:
        raise ValueError(f"max_tokens: must be >= 0, got {max_tokens}")
    if context is None:
        return
    if prompt_tokens >= context:
        raise ValueError(f"messages: the prompt is {prompt_tokens} tokens; the model's context is {context} "
                         "positions; shorten the conversation")
    if prompt_tokens + max_tokens > context:
        raise ValueError(f"max_tokens: {max_tokens} after a {prompt_tokens}-token prompt exceeds the model's "
                         f"context of {context} positions; use max_tokens <= {context - prompt_tokens}")


MAX_PROMPT_CHARS = 1_000_000   # a request's text (all messages, or the plain prompt), checked before tokenising


def check_request(p: ChatParams) -> None:
    """INVALID_ARGUMENT (ValueError) for an empty request, an unknown role or a prompt over
    MAX_PROMPT_CHARS: before any tokenising, so a huge body costs no device time."""
    if p.prompt is None and not p.messages:
        raise ValueError("messages: at least one message is required")
    if p.prompt is not None and not p.prompt:
        raise ValueError("prompt: must not be empty")
    for m in p.messages:
        if m.get("role") not in ("system", "user", "assistant"):
            raise ValueError(f"messages: role {m.get('role')!r} is not system, user or assistant")
    field_, size = ("prompt", len(p.prompt)) if p.prompt is not None else \
        ("messages", sum(len(str(m.get("content") or "")) for m in p.messages))
    if size > MAX_PROMPT_CHARS:
        raise ValueError(f"{field_}: the prompt is {size:,} characters; the limit is {MAX_PROMPT_CHARS:,} "
                         "characters; shorten it")


def prompt_ids(tok, p: ChatParams) -> list:
    """The prompt's token ids, exactly as the backend would make them (chat template applied for
    messages; the resident's tokenizer, so an adapter's added tokens count)."""
    for attempt in range(5):
        try:
            if p.prompt is not None:
                ids = tok(p.prompt)["input_ids"]
            else:
                ids = tok.apply_chat_template(p.messages, tokenize=True, add_generation_prompt=True)
                ids = ids["input_ids"] if hasattr(ids, "keys") else ids
            return list(ids)
        except RuntimeError as e:   # a fast tokenizer in use by another thread ("Already borrowed")
            if "borrow" not in str(e).lower() or attempt == 4:
                raise
            time.sleep(0.01)
    raise AssertionError("unreachable")


class ChatReply(Reply):
    """One chat's sequence: its chunks go to the request's thread through `out` as ChatDeltas,
    then the finish (reason and usage), logged; timed from the request's arrival."""

    def __init__(self, ids, sampling, resolve, stop, arrived: float, started: float, out: "queue.Queue",
                 label: str):
        super().__init__(ids, sampling, resolve, stop)
        self.arrived, self.started, self.out, self.label = arrived, started, out, label
        self.t0, self.first, self.n, self.finish = arrived, None, 0, "cancelled"

    def joined(self) -> None:
        self.t0 = time.perf_counter()

    def chunk(self, c) -> None:
        if c.token_id >= 0:   # (-1: a chunk of the prompt was read, or the sequence was removed)
            self.n += 1
            if self.first is None:
                self.first = time.perf_counter()
        if c.text:
            self.out.put(ChatDelta(text=c.text))
        if c.finish_reason:
            self.finish = c.finish_reason

    def end(self) -> None:
        dt = time.perf_counter() - self.t0
        reason = "cancelled" if self.stop() else self.finish
        usage = Usage(prompt_tokens=len(self.ids), completion_tokens=self.n,
                      time_to_first_token_seconds=self.first - self.arrived if self.first else 0.0,
                      queue_wait_seconds=self.started - self.arrived,
                      tokens_per_second=self.n / dt if dt > 0 else 0.0)
        log.info("chat with %s: %s after %d tokens (queue wait %.3fs, first token %.3fs)", self.label, reason,
                 self.n, usage.queue_wait_seconds, usage.time_to_first_token_seconds)
        self.out.put(ChatDelta(finish_reason=reason, usage=usage))
        self.out.put(_DONE)

    def fail(self, error: BaseException) -> None:
        self.out.put(error)
        self.out.put(_DONE)


class ChatService:
    def __init__(self, worker: DeviceWorker, registry: ModelRegistry, store: JobStore):
        self.worker, self.registry, self.store = worker, registry, store
        self._closing = threading.Event()
        self.scheduler = Scheduler(worker, lambda counts: registry.set_active(counts))

    def close(self) -> None:
        """Shutting down: every chat ends now (finish_reason cancelled)."""
        self._closing.set()

    def _on_worker(self, fn):
        """fn's result from the device worker (a short task); None when the daemon stops meanwhile."""
        fut = self.worker.call(fn)
        while True:
            try:
                return fut.result(timeout=1.0)
            except FutureTimeout:
                if not self.worker.alive and self._closing.is_set():
                    return None

    def stream(self, p: ChatParams, cancelled: threading.Event) -> Iterator[ChatDelta]:
        """Chunks of the reply, then one with finish_reason and usage. Times are from the
        request's arrival (here), so time to first token includes the wait for the device.

        Everything but the model's work happens here, in the request's thread (issue 16, finding
        5): the request's size and names are checked, one short worker call loads (or finds) the
        resident model, the prompt is tokenised with its tokenizer and checked against its context;
        only then does the sequence join its model's batch on the device worker (serving.py)."""
        arrived = time.perf_counter()
        p.sampling.check()
        check_request(p)
        t = refs.target(self.store, p.model, p.adapter, p.backend)
        model, adapter, adapter_name, backend = t.model, t.adapter, t.adapter_name, t.backend
        if not model:
            raise ValueError("model: required (a hub id, a local path, or job:<id>)")
        check_model(model)
        if adapter:
            check_adapter(adapter)
        out: "queue.Queue" = queue.Queue()
        run: dict = {}

        def stop() -> bool:
            return cancelled.is_set() or self._closing.is_set()

        def resident():
            run["started"] = time.perf_counter()
            if stop():   # cancelled, past its deadline or shutting down while queued
                return None
            with rng_untouched():
                return self.registry.get(model, backend, adapter=adapter, name=adapter_name)

        res = self._on_worker(resident)
        label = model + (f" + {adapter}" if adapter else "")
        if res is None:   # cancelled or shutting down while it waited
            ChatReply([], p.sampling, None, stop, arrived, run.get("started", arrived), out, label).end()
        else:
            ids = prompt_ids(res.backend.tokenizer, p)
            check_length(len(ids), p.sampling.max_tokens, context_length(res.model))

            def resolve():
                res = self.registry.get(model, backend, adapter=adapter, name=adapter_name)   # resident: at once
                return res.key, res.serve(adapter_name or adapter)

            # decoded with the other requests on this model and adapter (serving.Scheduler)
            self.scheduler.submit(ChatReply(ids, p.sampling, resolve, stop, arrived, run["started"], out, label))
        while True:
            try:
                item = out.get(timeout=1.0)
            except queue.Empty:
                if not self.worker.alive and self._closing.is_set():
                    return  # the daemon stopped under us
                continue
            if item is _DONE:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
