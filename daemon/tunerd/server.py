"""tunerd's gRPC server: Unix socket (0600 in a 0700 $TUNER_HOME), optional TCP with a bearer
token, health checking and reflection, graceful shutdown on SIGTERM/SIGINT."""
from __future__ import annotations

import hmac
import logging
import os
import secrets
import signal
import socket
import threading
from concurrent import futures
from pathlib import Path
from typing import Optional

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from tuner.v1 import tuner_pb2, tuner_pb2_grpc

from .api.servicer import TunerServicer
from .core import Core

log = logging.getLogger("tunerd")
SERVICE = tuner_pb2.DESCRIPTOR.services_by_name["Tuner"].full_name


def default_home() -> Path:
    return Path(os.environ.get("TUNER_HOME") or Path.home() / ".tuner").expanduser()


def prepare_home(home: Path) -> Path:
    home.mkdir(parents=True, exist_ok=True)
    os.chmod(home, 0o700)
    return home


def load_or_create_token(home: Path) -> str:
    """The bearer token for TCP clients, generated once into $TUNER_HOME/token (mode 0600)."""
    path = home / "token"
    if path.exists():
        return path.read_text().strip()
    token = secrets.token_urlsafe(32)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(token + "\n")
    return token


class TokenAuth(grpc.ServerInterceptor):
    """Rejects calls without `authorization: Bearer <token>` with UNAUTHENTICATED."""

    def __init__(self, token: str):
        self._expected = f"Bearer {token}".encode()

        def deny(request, context):
            context.abort(grpc.StatusCode.UNAUTHENTICATED,
                          "missing or wrong bearer token (see $TUNER_HOME/token; tunerctl --token)")
        self._deny_unary = grpc.unary_unary_rpc_method_handler(deny)
        self._deny_stream = grpc.unary_stream_rpc_method_handler(deny)

    def intercept_service(self, continuation, details):
        for key, value in details.invocation_metadata or ():
            if key == "authorization" and hmac.compare_digest(value.encode(), self._expected):
                return continuation(details)
        handler = continuation(details)
        if handler is not None and handler.response_streaming:
            return self._deny_stream
        return self._deny_unary


def socket_in_use(path: Path) -> bool:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        s.connect(str(path))
        return True
    except OSError:
        return False
    finally:
        s.close()


class Daemon:
    def __init__(self, home: Path, socket_path: Optional[Path] = None, listen: str = "",
                 insecure_tcp: bool = False, tls_cert: str = "", tls_key: str = "", workers: int = 16):
        self.home = prepare_home(home)
        self.socket_path = Path(socket_path or self.home / "tunerd.sock")
        self.listen, self.insecure_tcp, self.tls = listen, insecure_tcp, (tls_cert, tls_key)
        self.workers = workers
        self.core: Optional[Core] = None
        self.servers: list[grpc.Server] = []
        self._stopped = threading.Event()

    def _make_server(self, interceptors=()) -> grpc.Server:
        server = grpc.server(futures.ThreadPoolExecutor(max_workers=self.workers),
                             interceptors=list(interceptors))
        tuner_pb2_grpc.add_TunerServicer_to_server(TunerServicer(self.core), server)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, server)
        reflection.enable_server_reflection(
            (SERVICE, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME),
            server)
        return server

    def start(self) -> None:
        if self.socket_path.exists():
            if socket_in_use(self.socket_path):
                raise SystemExit(f"tunerd is already running on {self.socket_path}")
            self.socket_path.unlink()
        self.core = Core(self.home)
        for job_id in self.core.interrupted_on_start:
            log.warning("job %s was running when the daemon stopped: marked interrupted", job_id)
        self.health = health.HealthServicer()
        unix = self._make_server()
        old = os.umask(0o177)
        try:
            unix.add_insecure_port(f"unix://{self.socket_path}")
            unix.start()
        finally:
            os.umask(old)
        os.chmod(self.socket_path, 0o600)
        self.servers.append(unix)
        log.info("listening on unix://%s", self.socket_path)
        if self.listen:
            self.servers.append(self._start_tcp())
        for name in ("", SERVICE):
            self.health.set(name, health_pb2.HealthCheckResponse.SERVING)
        self.core.start()
        (self.home / "tunerd.pid").write_text(str(os.getpid()))

    def _start_tcp(self) -> grpc.Server:
        host = self.listen.rsplit(":", 1)[0].strip("[]")
        loopback = host in ("127.0.0.1", "localhost", "::1")
        if self.insecure_tcp and not loopback:
            raise SystemExit("--insecure-tcp is only allowed on a loopback address")
        interceptors = () if self.insecure_tcp else (TokenAuth(load_or_create_token(self.home)),)
        server = self._make_server(interceptors)
        cert, key = self.tls
        if cert and key:
            creds = grpc.ssl_server_credentials([(Path(key).read_bytes(), Path(cert).read_bytes())])
            port = server.add_secure_port(self.listen, creds)
        else:
            port = server.add_insecure_port(self.listen)
        if not port:
            raise SystemExit(f"cannot listen on {self.listen}")
        server.start()
        log.info("listening on tcp %s (port %d, %s)", self.listen, port,
                 "no token: loopback only" if self.insecure_tcp else "bearer token required")
        self.tcp_port = port
        return server

    def stop(self, grace: float = 5.0) -> None:
        if self._stopped.is_set():
            return
        log.info("shutting down: no new work; checkpointing the running job")
        for name in ("", SERVICE):
            self.health.set(name, health_pb2.HealthCheckResponse.NOT_SERVING)
        if self.core:
            self.core.shutdown()
        for s in self.servers:
            s.stop(grace).wait()
        for p in (self.socket_path, self.home / "tunerd.pid"):
            try:
                p.unlink()
            except FileNotFoundError:
                pass
        log.info("stopped")
        self._stopped.set()

    def serve_forever(self) -> None:
        done = threading.Event()

        def on_signal(signum, frame):
            log.info("received %s", signal.Signals(signum).name)
            done.set()

        signal.signal(signal.SIGTERM, on_signal)
        signal.signal(signal.SIGINT, on_signal)
        while not done.wait(1.0):
            pass
        self.stop()
