"""tunerd's gRPC server and its lifecycle: Unix socket (0600 in a 0700 $TUNER_HOME), optional TCP
with a bearer token, optional OpenAI-compatible HTTP, health checking and reflection, graceful
shutdown on SIGTERM/SIGINT. What it trusts (the home, the lock, the token, HTTP addresses) is
trust.py; the interceptors are api/interceptors.py.
"""
from __future__ import annotations

import logging
import os
import signal
import socket
import stat
import threading
from concurrent import futures
from pathlib import Path
from typing import Optional

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from tuner.v1 import tuner_pb2, tuner_pb2_grpc

from .api.interceptors import StreamLimit, TokenAuth
from .api.servicer import TunerServicer
from .core import Core
from .jobs.store import StoreDamaged
from .trust import LOOPBACK, HomeError, HomeLock, http_address, load_or_create_token, prepare_home

log = logging.getLogger("tunerd")
SERVICE = tuner_pb2.DESCRIPTOR.services_by_name["Tuner"].full_name


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
                 insecure_tcp: bool = False, tls_cert: str = "", tls_key: str = "", workers: int = 16,
                 max_streams: int = 256, http: str = "", http_host: str = "",
                 http_no_auth: bool = False, http_max_body: int = 4 << 20):
        self.home = prepare_home(home)
        self.socket_path = Path(socket_path or self.home / "tunerd.sock")
        self.lock = HomeLock(self.home)
        self.listen, self.insecure_tcp, self.tls = listen, insecure_tcp, (tls_cert, tls_key)
        self.workers, self.max_streams = workers, max_streams  # threads for unary calls, and for streams
        self.core: Optional[Core] = None
        self.servers: list[grpc.Server] = []
        self.http_address = http_address(http, http_host, http_no_auth) if http else None   # checked first
        self.http_max_body = http_max_body
        self.http = None
        self._stopped = threading.Event()

    def _make_server(self, interceptors=()) -> grpc.Server:
        server = grpc.server(futures.ThreadPoolExecutor(max_workers=self.workers + self.max_streams),
                             interceptors=[*interceptors, StreamLimit(self.max_streams)])
        tuner_pb2_grpc.add_TunerServicer_to_server(TunerServicer(self.core), server)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, server)
        reflection.enable_server_reflection(
            (SERVICE, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME),
            server)
        return server

    def start(self) -> None:
        self.lock.acquire(self.socket_path)  # before anything touches the home's jobs
        try:
            self._claim_socket()
            self.core = Core(self.home)
        except StoreDamaged as e:
            self.lock.release()
            raise HomeError(str(e)) from None
        except BaseException:
            self.lock.release()
            raise
        for what in self.core.rebuilt_on_start:
            log.warning("jobs.db was missing or empty: %s", what)
        for job_id in self.core.interrupted_on_start:
            log.warning("job %s was running when the daemon stopped: marked interrupted", job_id)
        for what in self.core.cleaned_on_start:
            log.info("left by a process killed mid-write: %s", what)
        self.health = health.HealthServicer()
        for name in ("", SERVICE):  # SERVING once every listener (TCP, HTTP) is up
            self.health.set(name, health_pb2.HealthCheckResponse.NOT_SERVING)
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
        if self.http_address:
            self._start_http()
        for name in ("", SERVICE):
            self.health.set(name, health_pb2.HealthCheckResponse.SERVING)
        self.core.start()
        self.lock.mark_ready()

    def _claim_socket(self) -> None:
        """A leftover socket of ours (a daemon of this home that died) is removed; anything else
        at that path (a file, someone else's socket, a live listener) is an error."""
        path = self.socket_path
        try:
            st = path.lstat()
        except FileNotFoundError:
            return
        if not stat.S_ISSOCK(st.st_mode) or st.st_uid != os.getuid():
            what = "a socket" if stat.S_ISSOCK(st.st_mode) else "not a socket"
            raise HomeError(f"{path} exists and is not ours ({what}, owned by uid {st.st_uid}); "
                            "remove it if you know what it is, or pass another --socket")
        if socket_in_use(path):
            raise HomeError(f"another process is listening on {path}; pass another --socket")
        log.info("removed the stale socket %s (left by a daemon that did not stop cleanly)", path)
        path.unlink()

    def _start_tcp(self) -> grpc.Server:
        host = self.listen.rsplit(":", 1)[0].strip("[]")
        loopback = host in LOOPBACK
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

    def _start_http(self) -> None:
        from .api.http import HttpServer

        host, port, needs_token = self.http_address
        self.http = HttpServer(self.core, host, port, load_or_create_token(self.home) if needs_token else None,
                               max_body=self.http_max_body)
        self.http.start()
        log.info("OpenAI-compatible HTTP on http://%s:%d/v1 (%s)", host, self.http.port,
                 "bearer token required" if needs_token else "no token")
        if not needs_token:
            log.warning("--http-no-auth: any local user and any web page can use http://%s:%d/v1",
                        host, self.http.port)

    def stop(self, grace: float = 5.0) -> None:
        if self._stopped.is_set():
            return
        log.info("shutting down: no new work; checkpointing the running job")
        for name in ("", SERVICE):
            self.health.set(name, health_pb2.HealthCheckResponse.NOT_SERVING)
        if self.http:
            self.http.stop()
        if self.core:
            self.core.shutdown()
        for s in self.servers:
            s.stop(grace).wait()
        try:
            self.socket_path.unlink()
        except FileNotFoundError:
            pass
        log.info("stopped")
        self.lock.release()
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
