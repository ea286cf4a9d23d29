"""Chat: stream a reply from a resident model (optionally with an adapter).

Generation runs on the device worker (it owns the models); this module hands the work over and
streams the chunks back through a queue to whichever thread asked (a gRPC handler).
"""
from __future__ import annotations

import queue
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Optional

from .backends.base import Sampling
from .jobs.store import JobStore
from .jobs.worker import DeviceWorker
from .models.registry import ModelRegistry
from .training.checkpoints import list_checkpoints


@dataclass
class ChatDelta:
    text: str = ""
    finish_reason: str = ""
    usage: Optional[dict] = None


@dataclass
class ChatParams:
    messages: list
    model: str = ""
    adapter: str = ""
    backend: str = "auto"
    sampling: Sampling = field(default_factory=Sampling)


_DONE = object()


def resolve_job_ref(store: JobStore, ref: str, want: str) -> str:
    """`job:<id>` -> that job's base model (want='model') or adapter / latest checkpoint."""
    rec = store.get(ref.split(":", 1)[1])
    if want == "model":
        return rec.model
    if rec.adapter_path and Path(rec.adapter_path).exists():
        return rec.adapter_path
    ckpts = list_checkpoints(Path(rec.output_dir)) if rec.output_dir else []
    if not ckpts:
        raise FileNotFoundError(f"job {rec.id} has no adapter or checkpoint yet (state {rec.state})")
    return str(ckpts[-1])


class ChatService:
    def __init__(self, worker: DeviceWorker, registry: ModelRegistry, store: JobStore):
        self.worker, self.registry, self.store = worker, registry, store

    def stream(self, p: ChatParams, cancelled: threading.Event) -> Iterator[ChatDelta]:
        if not p.messages:
            raise ValueError("messages: at least one message is required")
        for m in p.messages:
            if m.get("role") not in ("system", "user", "assistant"):
                raise ValueError(f"messages: role {m.get('role')!r} is not system, user or assistant")
        model, adapter, backend = p.model, p.adapter, p.backend
        if adapter.startswith("job:") and backend in ("", "auto"):
            backend = self.store.get(adapter.split(":", 1)[1]).backend or backend  # the job's own backend
        if adapter.startswith("job:") and not model:
            model = resolve_job_ref(self.store, adapter, "model")
        if model.startswith("job:"):
            model = resolve_job_ref(self.store, model, "model")
        if adapter.startswith("job:"):
            adapter = resolve_job_ref(self.store, adapter, "adapter")
        if not model:
            raise ValueError("model: required (a hub id, a local path, or job:<id>)")
        out: "queue.Queue" = queue.Queue()

        def task():
            try:
                res = self.registry.get(model, backend, adapter=adapter)
                tok = res.backend.tokenizer
                ids = tok.apply_chat_template(p.messages, tokenize=True, add_generation_prompt=True)
                ids = list(ids["input_ids"] if hasattr(ids, "keys") else ids)
                t0 = time.perf_counter()
                first = None
                n = 0
                finish = "stop"
                for chunk in res.backend.generate(ids, p.sampling, cancelled.is_set):
                    n += 1
                    if first is None:
                        first = time.perf_counter() - t0
                    if chunk.text:
                        out.put(ChatDelta(text=chunk.text))
                    if chunk.finish_reason:
                        finish = chunk.finish_reason
                if cancelled.is_set():
                    finish = "cancelled"
                dt = time.perf_counter() - t0
                out.put(ChatDelta(finish_reason=finish, usage={
                    "prompt_tokens": len(ids), "completion_tokens": n,
                    "time_to_first_token_seconds": first or 0.0,
                    "tokens_per_second": n / dt if dt > 0 else 0.0}))
            except BaseException as e:  # handed to the caller's thread
                out.put(e)
            finally:
                out.put(_DONE)

        self.worker.call(task)
        while True:
            item = out.get()
            if item is _DONE:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
