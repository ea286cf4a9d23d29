"""What every HTTP request passes before any work: the Host header (DNS-rebinding defence), the
bearer token, `Content-Type: application/json` on POST (a web page's cross-origin "simple" POST is
text/plain or a form), and a body of at most `max_body` bytes read within `body_timeout` seconds.
No CORS headers are ever sent, so a browser does not let a page read a reply.

And the connection's own limits (`Protocol`): the request line and headers must arrive within
`HEADER_TIMEOUT` seconds of the connection opening (or of the previous response), so an idle or
slowly-dripping connection does not stay open forever; uvicorn's keep-alive timeout alone is
re-armed by every byte and does not run before the first request.
"""
from __future__ import annotations

import asyncio
import hmac
import json
from typing import Optional

from uvicorn.protocols.http.h11_impl import H11Protocol

HEADER_TIMEOUT = 10.0   # seconds for a request's line and headers
BODY_TIMEOUT = 30.0     # seconds for its whole body
LOOPBACK_NAMES = ("127.0.0.1", "localhost", "[::1]")
WILDCARD = ("0.0.0.0", "::", "")


def allowed_hosts(host: str, port: int) -> Optional[set]:
    """The `Host` values a request may carry: the bound address and, on loopback, its names. A
    wildcard bind (0.0.0.0) is reached by names we cannot know: None (any; the token is required)."""
    if host in WILDCARD:
        return None
    bound = f"[{host}]" if ":" in host else host
    names = {bound, *LOOPBACK_NAMES} if bound in (*LOOPBACK_NAMES, "localhost") else {bound}
    return {f"{n}:{port}" for n in names}


def error_body(message: str, kind: str, code: str) -> bytes:
    return json.dumps({"error": {"message": message, "type": kind, "param": None, "code": code}}).encode()


class TooLarge(Exception):
    pass


class Guard:
    """Pure ASGI middleware (it must see the body before FastAPI reads it)."""

    def __init__(self, app, token: Optional[str], hosts: Optional[set], max_body: int,
                 body_timeout: float = BODY_TIMEOUT):
        self.app, self.hosts, self.max_body, self.body_timeout = app, hosts, max_body, body_timeout
        self.expected = f"Bearer {token}".encode() if token else None

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = {k.decode("latin-1").lower(): v for k, v in scope["headers"]}
        refused = self.refusal(scope["method"], headers)
        if refused:
            return await respond(send, *refused)
        try:
            body = await asyncio.wait_for(self.read_body(receive), self.body_timeout)
        except TooLarge:
            return await respond(send, 413, f"the request body is over the limit of {self.max_body} bytes "
                                            "(tunerd --http-max-body-bytes)", "invalid_request_error", "too_large")
        except asyncio.TimeoutError:
            return await respond(send, 408, f"the request body did not arrive within {self.body_timeout:g} s",
                                 "invalid_request_error", "timeout")
        if body is None:   # the client went away
            return None
        return await self.app(scope, replay(body, receive), send)

    def refusal(self, method: str, headers: dict) -> Optional[tuple]:
        host = headers.get("host", b"").decode("latin-1").lower()
        if self.hosts is not None and host not in self.hosts:
            return (421, f"Host {host!r} is not this server (expected one of {', '.join(sorted(self.hosts))}); "
                         "requests through another name are refused (DNS-rebinding defence)",
                    "invalid_request_error", "misdirected_request")
        if self.expected is not None and not hmac.compare_digest(headers.get("authorization", b""), self.expected):
            return (401, "missing or wrong bearer token: send 'Authorization: Bearer <the contents of "
                         "$TUNER_HOME/token>' (the openai client's api_key)", "authentication_error", "unauthenticated")
        if method == "POST":
            ctype = headers.get("content-type", b"").decode("latin-1").split(";")[0].strip().lower()
            if ctype != "application/json":
                return (415, f"Content-Type must be application/json, got {ctype or 'none'!r}",
                        "invalid_request_error", "unsupported_media_type")
        length = headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > self.max_body:
            return (413, f"the request body ({int(length)} bytes) is over the limit of {self.max_body} bytes "
                         "(tunerd --http-max-body-bytes)", "invalid_request_error", "too_large")
        return None

    async def read_body(self, receive) -> Optional[bytes]:
        chunks, size = [], 0
        while True:
            msg = await receive()
            if msg["type"] == "http.disconnect":
                return None
            chunk = msg.get("body", b"")
            size += len(chunk)
            if size > self.max_body:
                raise TooLarge
            chunks.append(chunk)
            if not msg.get("more_body"):
                return b"".join(chunks)


def replay(body: bytes, receive):
    """The body as one message, then the connection's own messages (the disconnect)."""
    sent = False

    async def again():
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()
    return again


async def respond(send, status: int, message: str, kind: str, code: str) -> None:
    body = error_body(message, kind, code)
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                            (b"connection", b"close")]})
    await send({"type": "http.response.body", "body": body})


class Protocol(H11Protocol):
    """uvicorn's h11 protocol, with a deadline for each request's line and headers."""

    header_timeout = HEADER_TIMEOUT

    def connection_made(self, transport) -> None:
        super().connection_made(transport)
        self._arm()

    def on_response_complete(self) -> None:
        self._arm()   # before super(), which may start a pipelined request's cycle
        super().on_response_complete()

    def handle_events(self) -> None:
        super().handle_events()
        if self.cycle is not self._waiting_since:   # a request's headers arrived
            self._disarm()

    def connection_lost(self, exc) -> None:
        self._disarm()
        super().connection_lost(exc)

    def _arm(self) -> None:
        self._disarm()
        self._waiting_since = self.cycle
        self._deadline = self.loop.call_later(self.header_timeout, self._too_slow)

    def _disarm(self) -> None:
        timer = getattr(self, "_deadline", None)
        if timer is not None:
            timer.cancel()
            self._deadline = None

    def _too_slow(self) -> None:
        if not self.transport.is_closing():
            self.transport.close()
