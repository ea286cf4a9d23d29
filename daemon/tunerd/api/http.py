"""OpenAI-compatible HTTP: GET /v1/models, POST /v1/chat/completions and /v1/completions.

A translator over the same `Core` as the gRPC servicer (request JSON -> ChatParams -> core.chat
-> JSON or server-sent events), so editors, Open WebUI and agent frameworks can use a base model,
an adapter or a running job (`job:<id>`) as a model id. Off by default (`tunerd --http PORT`),
on loopback unless `--http-host` is given, always with the same bearer token as TCP gRPC (unless
`--http-no-auth`, loopback only); `guard` checks Host, token, content type and body size first.
Errors leave through `errors.http_error_for` (one mapping for both APIs).
"""
from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import queue
import threading
import time
import uuid
from typing import Iterator, Optional

from fastapi import FastAPI, Request   # the `daemon` extra; this module is imported only with --http
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.concurrency import iterate_in_threadpool, run_in_threadpool

from ..backends.generation import Sampling
from ..chat import ChatParams, Usage
from ..errors import http_error_for
from .guard import Guard, Protocol, allowed_hosts

log = logging.getLogger(__name__)

# OpenAI field -> ours; `max_completion_tokens` is the newer name of `max_tokens`
_SAMPLING = {"temperature": "temperature", "top_p": "top_p", "top_k": "top_k", "min_p": "min_p",
             "repetition_penalty": "repetition_penalty", "seed": "seed", "max_tokens": "max_tokens",
             "max_completion_tokens": "max_tokens"}
_UNSUPPORTED = {"presence_penalty": 0, "frequency_penalty": 0, "logprobs": False, "best_of": 1,
                "echo": False, "suffix": None, "tools": None, "logit_bias": None}


def sampling(body: dict) -> Sampling:
    """The sampling fields, type-checked here; their ranges are `Sampling.check` (shared with gRPC)."""
    for k, neutral in _UNSUPPORTED.items():
        v = body.get(k)
        if v is not None and v != neutral and v != []:
            raise ValueError(f"{k}: only {neutral!r} is supported, got {v!r}")
    s = Sampling()
    for k, ours in _SAMPLING.items():
        v = body.get(k)
        if v is None:
            continue
        whole = ours in ("top_k", "seed", "max_tokens")
        if isinstance(v, bool) or not isinstance(v, int if whole else (int, float)):
            raise ValueError(f"{k}: must be {'an integer' if whole else 'a number'}, got {v!r}")
        setattr(s, ours, v)
    stop = body.get("stop")
    if stop is not None and not isinstance(stop, (str, list)):
        raise ValueError(f"stop: must be a string or a list of strings, got {stop!r}")
    s.stop = [stop] if isinstance(stop, str) else list(stop or [])
    return s.check()


MAX_CHOICES = 16   # `n`: replies to one request, decoded in the same batch as any other


def choices(body: dict) -> int:
    """`n`: how many replies (choices) to generate; each is one sequence of the model's batch."""
    n = body.get("n")
    if n is None:
        return 1
    if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= MAX_CHOICES:
        raise ValueError(f"n: must be an integer in 1..{MAX_CHOICES}, got {n!r}")
    return n


def choice_sampling(s: Sampling, i: int) -> Sampling:
    """Choice i's sampling: its own seed (seed + i, within 64 bits), so seeded choices differ."""
    if i == 0 or s.seed is None:
        return s
    seed = s.seed + i
    return dataclasses.replace(s, seed=seed - 2 ** 64 if seed >= 2 ** 63 else seed)


def _text(i: int, content) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        for j, part in enumerate(content):
            if not isinstance(part, dict) or part.get("type") != "text" or not isinstance(part.get("text"), str):
                raise ValueError(f"messages[{i}].content[{j}]: must be a text part "
                                 f'{{"type": "text", "text": "..."}}, got {part!r}')
        return "".join(p["text"] for p in content)
    raise ValueError(f"messages[{i}].content: must be a string or a list of text parts, got {content!r}")


def messages(body: dict) -> list[dict]:
    """OpenAI messages (content a string or a list of text parts) -> ours."""
    ms = body.get("messages")
    if not isinstance(ms, list):
        raise ValueError(f"messages: must be a list of {{\"role\": ..., \"content\": ...}} objects, got {ms!r}")
    out = []
    for i, m in enumerate(ms):
        if not isinstance(m, dict):
            raise ValueError(f"messages[{i}]: must be an object with role and content, got {m!r}")
        role = m.get("role")
        if not isinstance(role, str):
            raise ValueError(f"messages[{i}].role: must be a string, got {role!r}")
        out.append({"role": "system" if role == "developer" else role, "content": _text(i, m.get("content"))})
    return out


def prompt(body: dict) -> str:
    p = body.get("prompt")
    if isinstance(p, list) and len(p) == 1 and isinstance(p[0], str):
        p = p[0]
    if not isinstance(p, str):
        raise ValueError("prompt: must be one string (lists of prompts and token ids are not supported)")
    return p


def model_id(body: dict) -> str:
    m = body.get("model")
    if not isinstance(m, str) or not m:
        raise ValueError(f"model: must be a non-empty string (a hub id, a local path or job:<id>), got {m!r}")
    return m


def stream_flags(body: dict) -> tuple[bool, bool]:
    """(stream, include usage in the stream)"""
    stream, opts = body.get("stream"), body.get("stream_options")
    if stream is not None and not isinstance(stream, bool):
        raise ValueError(f"stream: must be true or false, got {stream!r}")
    if opts is not None and not isinstance(opts, dict):
        raise ValueError(f"stream_options: must be an object, got {opts!r}")
    usage = (opts or {}).get("include_usage")
    if usage is not None and not isinstance(usage, bool):
        raise ValueError(f"stream_options.include_usage: must be true or false, got {usage!r}")
    return bool(stream), bool(usage)


def make_app(core, token: Optional[str] = None, hosts: Optional[set] = None, max_body: int = 4 << 20):
    app = FastAPI(title="tunerd (OpenAI-compatible)", docs_url=None, redoc_url=None, openapi_url=None)
    app.add_middleware(Guard, token=token, hosts=hosts, max_body=max_body)

    def error(e: BaseException) -> JSONResponse:
        status, body = http_error_for(e)
        if status == 500:
            log.exception("HTTP request failed", exc_info=e)
        return JSONResponse(body, status_code=status)

    @app.get("/v1/models")
    async def models():
        return {"object": "list", "data": [{"id": m.id, "object": "model", "created": m.created,
                                            "owned_by": "tunerd", "kind": m.kind, **({"base": m.base} if m.base else {})}
                                           for m in core.model_ids()]}

    async def complete(request: Request, chat: bool):
        cancelled = threading.Event()
        watcher = None
        try:
            body = await request.json()
            if not isinstance(body, dict):
                raise ValueError("the request body must be a JSON object")
            name = model_id(body)
            streamed, usage = stream_flags(body)
            n, sampled = choices(body), sampling(body)
            model, adapter, backend = core.resolve_model_id(name)
            content = {"messages": messages(body)} if chat else {"prompt": prompt(body)}
            watcher = asyncio.ensure_future(_cancel_on_disconnect(request.receive, cancelled))
            # n choices: n sequences, all joining the model's one batch (serving.Scheduler)
            streams = [core.chat(ChatParams(model=model, adapter=adapter, backend=backend,
                                            sampling=choice_sampling(sampled, i), **content), cancelled)
                       for i in range(n)]
            # errors before the first byte: a status
            firsts = await asyncio.gather(*(run_in_threadpool(next, st, None) for st in streams))
        except Exception as e:  # noqa: BLE001
            cancelled.set()
            _stop(watcher)
            return error(e)
        rid = ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex[:24]
        created = int(time.time())
        deltas = _merge([_chain(f, st) for f, st in zip(firsts, streams)])
        if streamed:   # Starlette watches for the disconnect of a stream (and cancels _sse)
            _stop(watcher)
            return StreamingResponse(_sse(iterate_in_threadpool(deltas), cancelled, rid, created, name, chat,
                                          usage, n), media_type="text/event-stream")
        try:
            replies, use = await run_in_threadpool(_collect, deltas, n)
        except Exception as e:  # noqa: BLE001
            return error(e)
        finally:
            cancelled.set()
            _stop(watcher)
        out = [{"index": i, "message": {"role": "assistant", "content": text}} if chat else
               {"index": i, "text": text, "logprobs": None} for i, (text, _) in enumerate(replies)]
        return {"id": rid, "object": "chat.completion" if chat else "text_completion", "created": created,
                "model": name, "choices": [{**c, "finish_reason": f} for c, (_, f) in zip(out, replies)],
                "usage": use}

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        return await complete(request, chat=True)

    @app.post("/v1/completions")
    async def completions(request: Request):
        return await complete(request, chat=False)

    return app


async def _cancel_on_disconnect(receive, cancelled: threading.Event) -> None:
    """A client that goes away while its reply is generated (not streamed) cancels it."""
    while not cancelled.is_set():
        if (await receive())["type"] == "http.disconnect":
            cancelled.set()


def _stop(task) -> None:
    if task is not None:
        task.cancel()


def _chain(first, rest: Iterator) -> Iterator:
    if first is not None:
        yield first
        yield from rest


def _finish(reason: str) -> str:
    return "length" if reason == "length" else "stop"


def _usage(us: list) -> dict:
    """The usage of a request's choices together: the prompt once, their completions summed."""
    us = [u for u in us if u is not None]
    if not us:
        return {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0,
                "time_to_first_token_seconds": 0.0, "tokens_per_second": 0.0}
    prompt_tokens, completion = us[0].prompt_tokens, sum(u.completion_tokens for u in us)
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion,
            "total_tokens": prompt_tokens + completion,
            "time_to_first_token_seconds": min(u.time_to_first_token_seconds for u in us),
            "tokens_per_second": sum(u.tokens_per_second for u in us)}


_END = object()


def _merge(streams: list) -> Iterator[tuple[int, object]]:
    """(choice index, delta) from each of the choices' streams as they come (one thread each when
    there are several: each stream waits on its own reply)."""
    if len(streams) == 1:
        for d in streams[0]:
            yield 0, d
        return
    q: "queue.Queue" = queue.Queue()

    def pump(i: int, stream: Iterator) -> None:
        try:
            for d in stream:
                q.put((i, d))
        except BaseException as e:  # noqa: BLE001 - raised in the reader's thread
            q.put((i, e))
        finally:
            q.put((i, _END))

    for i, st in enumerate(streams):
        threading.Thread(target=pump, args=(i, st), name=f"http-choice-{i}", daemon=True).start()
    left = len(streams)
    while left:
        i, d = q.get()
        if d is _END:
            left -= 1
        elif isinstance(d, BaseException):
            raise d
        else:
            yield i, d


def _collect(deltas: Iterator, n: int) -> tuple[list[tuple[str, str]], dict]:
    """([(text, finish reason)] per choice, the usage of all)."""
    texts, finish, usages = [[] for _ in range(n)], ["stop"] * n, [None] * n
    for i, d in deltas:
        texts[i].append(d.text)
        if d.finish_reason:
            finish[i], usages[i] = _finish(d.finish_reason), d.usage
    return [("".join(t), f) for t, f in zip(texts, finish)], _usage(usages)


async def _sse(deltas, cancelled: threading.Event, rid: str, created: int, model: str, chat: bool,
               include_usage: bool, n: int = 1):
    """Server-sent events in OpenAI's chunk format (each choice by its index), then `data: [DONE]`.
    A client that goes away cancels the generation (the finally runs when Starlette cancels this
    generator)."""
    kind = "chat.completion.chunk" if chat else "text_completion"

    def event(choices: list, usage: Optional[dict] = None) -> str:
        out = {"id": rid, "object": kind, "created": created, "model": model, "choices": choices}
        if usage is not None:
            out["usage"] = usage
        return f"data: {json.dumps(out, ensure_ascii=False)}\n\n"

    def choice(i: int, text: str, finish: Optional[str] = None) -> dict:
        if chat:
            return {"index": i, "delta": {"content": text} if text else {}, "finish_reason": finish}
        return {"index": i, "text": text, "logprobs": None, "finish_reason": finish}

    try:
        if chat:
            yield event([{"index": i, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}
                         for i in range(n)])
        usages = [None] * n
        try:
            async for i, d in deltas:
                if d.text:
                    yield event([choice(i, d.text)])
                if d.finish_reason:
                    usages[i] = d.usage
                    yield event([choice(i, "", _finish(d.finish_reason))])
        except Exception as e:  # noqa: BLE001 - after the first byte, the error goes in the stream
            yield f"data: {json.dumps(http_error_for(e)[1])}\n\n"
        if include_usage and any(u is not None for u in usages):
            yield event([], _usage(usages))
        yield "data: [DONE]\n\n"
    finally:
        cancelled.set()


class HttpServer:
    """uvicorn on its own thread (its event loop there); `stop()` ends it."""

    def __init__(self, core, host: str, port: int, token: Optional[str] = None, max_body: int = 4 << 20):
        import uvicorn

        self.core, self.token, self.max_body = core, token, max_body
        config = uvicorn.Config(self._app, host=host, port=port, log_level="warning", access_log=False,
                                lifespan="off", http=Protocol, interface="asgi3", proxy_headers=False,
                                timeout_keep_alive=5)
        self.server = uvicorn.Server(config)
        self.app = None   # made once the port is known (the Host check needs it)
        self.thread = threading.Thread(target=self.server.run, name="http", daemon=True)
        self.host, self.port = host, port

    def start(self, timeout: float = 10.0) -> None:
        self.thread.start()
        deadline = time.time() + timeout
        while not self.server.started:
            if not self.thread.is_alive() or time.time() > deadline:
                raise SystemExit(f"cannot serve HTTP on {self.host}:{self.port}")
            time.sleep(0.05)
        self.port = self.server.servers[0].sockets[0].getsockname()[1]

    async def _app(self, scope, receive, send):
        if self.app is None:
            self.app = make_app(self.core, self.token, allowed_hosts(self.host, self.port), self.max_body)
        await self.app(scope, receive, send)

    def stop(self, timeout: float = 5.0) -> None:
        self.server.should_exit = True
        self.thread.join(timeout)
