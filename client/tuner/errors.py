"""The one exception the client raises: the daemon's status code and its message."""
from __future__ import annotations

import grpc


class TunerError(Exception):
    """A call that failed: `code` is the grpc.StatusCode (NOT_FOUND, INVALID_ARGUMENT, ...) and
    `details` the daemon's message, written for a person to act on."""

    def __init__(self, code: grpc.StatusCode, details: str):
        super().__init__(details)
        self.code = code
        self.details = details

    @classmethod
    def from_rpc(cls, e: grpc.RpcError) -> "TunerError":
        code = e.code() if callable(getattr(e, "code", None)) else None
        details = e.details() if callable(getattr(e, "details", None)) else None
        return cls(code or grpc.StatusCode.UNKNOWN, details or str(e))


class DaemonUnavailable(TunerError):
    """No daemon answers at the address (UNAVAILABLE), or it refused the token (UNAUTHENTICATED)."""

    def __init__(self, details: str, code: grpc.StatusCode = grpc.StatusCode.UNAVAILABLE):
        super().__init__(code, details)
