"""gRPC server interceptors: the bearer token on TCP (TokenAuth) and the cap on open streams (StreamLimit)."""
from __future__ import annotations

import hmac
import threading

import grpc


class TokenAuth(grpc.ServerInterceptor):
    """Rejects calls without `authorization: Bearer <token>` with UNAUTHENTICATED."""

    def __init__(self, token: str):
        if not token.strip():
            raise ValueError("an empty bearer token would let anyone in")
        self._expected = f"Bearer {token}".encode()

        def deny(request, context):
            context.abort(grpc.StatusCode.UNAUTHENTICATED,
                          "missing or wrong bearer token (see $TUNER_HOME/token; tunerctl --token)")
        self._deny_unary = grpc.unary_unary_rpc_method_handler(deny)
        self._deny_stream = grpc.unary_stream_rpc_method_handler(deny)

    def intercept_service(self, continuation, details):
        for key, value in details.invocation_metadata or ():
            if key == "authorization" and value.strip() != "Bearer" \
                    and hmac.compare_digest(value.encode(), self._expected):
                return continuation(details)
        handler = continuation(details)
        if handler is not None and handler.response_streaming:
            return self._deny_stream
        return self._deny_unary


class StreamLimit(grpc.ServerInterceptor):
    """Streams (WatchJob, Chat, health Watch) hold a server thread for as long as they are open.
    They may use at most `limit` threads; the server's pool has `limit + unary` threads, so
    health, ListJobs, GetJob and the other unary calls always find a free one. A stream past the
    limit is refused at once with RESOURCE_EXHAUSTED instead of queueing behind the others."""

    def __init__(self, limit: int):
        self.limit = limit
        self._slots = threading.BoundedSemaphore(limit)

    def intercept_service(self, continuation, details):
        handler = continuation(details)
        if handler is None or not handler.response_streaming or handler.request_streaming:
            return handler
        inner, slots, limit = handler.unary_stream, self._slots, self.limit

        def limited(request, context):
            if not slots.acquire(blocking=False):
                context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED,
                              f"too many open streams (limit {limit}): close some watchers or chats")
            try:
                yield from inner(request, context)
            finally:
                slots.release()
        return grpc.unary_stream_rpc_method_handler(limited, request_deserializer=handler.request_deserializer,
                                                    response_serializer=handler.response_serializer)
