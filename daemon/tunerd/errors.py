"""One place maps exceptions to gRPC status codes (the servicer's decorator uses it) and, for the
OpenAI-compatible HTTP layer, those codes to HTTP statuses and OpenAI error types.

A person's mistake is a ValueError (INVALID_ARGUMENT) or a missing thing (NOT_FOUND); anything
else, a TypeError or AttributeError included, is a bug in the daemon and stays INTERNAL (logged
with its traceback) rather than being disguised as a bad request."""
from __future__ import annotations

import grpc

from .backends.base import BackendUnavailable
from .disk import NoSpace
from .jobs.manager import JobStateError
from .jobs.store import JobNotFound
from .training.memory import DoesNotFit


def status_for(e: BaseException) -> tuple[grpc.StatusCode, str]:
    if isinstance(e, JobNotFound):
        return grpc.StatusCode.NOT_FOUND, str(e)
    if isinstance(e, FileNotFoundError):
        return grpc.StatusCode.NOT_FOUND, str(e)
    if isinstance(e, JobStateError):
        return grpc.StatusCode.FAILED_PRECONDITION, str(e)
    if isinstance(e, BackendUnavailable):
        return grpc.StatusCode.FAILED_PRECONDITION, str(e)
    if isinstance(e, DoesNotFit):
        return grpc.StatusCode.RESOURCE_EXHAUSTED, str(e)
    if isinstance(e, NoSpace):
        return grpc.StatusCode.RESOURCE_EXHAUSTED, f"{e}; free space there and try again"
    if isinstance(e, MemoryError):
        return grpc.StatusCode.RESOURCE_EXHAUSTED, (
            f"out of memory: {e}. Unload models (`tunerctl models unload`), use quantization: 4bit, "
            "or a smaller batch size / max_seq_length")
    if isinstance(e, ValueError):  # validation: ConfigError, AmbiguousJobRef, a bad field
        return grpc.StatusCode.INVALID_ARGUMENT, str(e)
    if isinstance(e, ConnectionError):   # e.g. the hub out of reach for a model not in the cache
        return grpc.StatusCode.UNAVAILABLE, str(e)
    if isinstance(e, PermissionError):
        return grpc.StatusCode.PERMISSION_DENIED, str(e)
    if isinstance(e, NotImplementedError):
        return grpc.StatusCode.UNIMPLEMENTED, str(e) or "not implemented yet"
    return grpc.StatusCode.INTERNAL, f"{type(e).__name__}: {e}"


# gRPC status -> (HTTP status, OpenAI error type)
_HTTP = {
    grpc.StatusCode.INVALID_ARGUMENT: (400, "invalid_request_error"),
    grpc.StatusCode.NOT_FOUND: (404, "not_found_error"),
    grpc.StatusCode.FAILED_PRECONDITION: (409, "invalid_request_error"),
    grpc.StatusCode.RESOURCE_EXHAUSTED: (507, "server_error"),
    grpc.StatusCode.PERMISSION_DENIED: (403, "permission_error"),
    grpc.StatusCode.UNAUTHENTICATED: (401, "authentication_error"),
    grpc.StatusCode.UNIMPLEMENTED: (501, "invalid_request_error"),
    grpc.StatusCode.UNAVAILABLE: (503, "server_error"),
}


def http_error_for(e: BaseException) -> tuple[int, dict]:
    """(HTTP status, OpenAI error body) for an exception."""
    code, msg = status_for(e)
    status, kind = _HTTP.get(code, (500, "server_error"))
    return status, {"error": {"message": msg, "type": kind, "param": None, "code": code.name.lower()}}
