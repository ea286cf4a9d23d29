"""tunerd's gRPC server: Unix socket (0600 in a 0700 $TUNER_HOME), optional TCP with a bearer
token, health checking and reflection, graceful shutdown on SIGTERM/SIGINT."""
from __future__ import annotations

import fcntl
import hmac
import json
import logging
import os
import secrets
import signal
import socket
import stat
import threading
import time
from concurrent import futures
from pathlib import Path
from typing import Optional

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from tuner.v1 import tuner_pb2, tuner_pb2_grpc

from .api.servicer import TunerServicer
from .core import Core
from .files import atomic_write_text
from .jobs.store import StoreDamaged

log = logging.getLogger("tunerd")
SERVICE = tuner_pb2.DESCRIPTOR.services_by_name["Tuner"].full_name


def default_home() -> Path:
    return Path(os.environ.get("TUNER_HOME") or Path.home() / ".tuner").expanduser()


class HomeError(SystemExit):
    """The daemon refuses to start (an untrusted home, a second daemon, a foreign socket)."""


def prepare_home(home: Path) -> Path:
    """$TUNER_HOME is trusted the way ssh trusts ~/.ssh: created 0700 if missing; otherwise it
    must be a directory owned by us and not group/world-writable, or the daemon refuses."""
    home = Path(home)
    if not os.path.lexists(home):
        home.mkdir(mode=0o700, parents=True)
    st = home.stat()
    if not stat.S_ISDIR(st.st_mode):
        raise HomeError(f"{home} is not a directory; pass another --home")
    if st.st_uid != os.getuid():
        raise HomeError(f"refusing to use {home}: it is owned by uid {st.st_uid}, not by you "
                        f"(uid {os.getuid()}); pass another --home (or TUNER_HOME) that you own")
    if st.st_mode & 0o022:
        raise HomeError(f"refusing to use {home}: it is group/world-writable "
                        f"(mode {stat.S_IMODE(st.st_mode):o}); fix it with `chmod 700 {home}` "
                        "or pass another --home")
    if stat.S_IMODE(st.st_mode) != 0o700:
        os.chmod(home, 0o700)
    return home


TOKEN_MIN_BITS = 128


def token_problem(path: Path) -> str:
    """Why the token file cannot be trusted ('' when it can)."""
    try:
        st = path.lstat()
    except FileNotFoundError:
        return "missing"
    if not stat.S_ISREG(st.st_mode):
        return "not a regular file"
    if st.st_uid != os.getuid():
        return f"owned by uid {st.st_uid}, not by you"
    if st.st_mode & 0o077:
        return f"mode {stat.S_IMODE(st.st_mode):o}, not 600"
    token = path.read_text(errors="replace").strip()
    if not token:
        return "empty"
    bits = token_bits(token)
    if bits < TOKEN_MIN_BITS:
        return f"too short (about {bits:.0f} bits, need {TOKEN_MIN_BITS})"
    return ""


def token_bits(token: str) -> float:
    """An upper bound on a token's entropy: length x log2(the smallest usual alphabet holding it)."""
    import math
    import string
    for alphabet in (string.hexdigits.lower(), string.ascii_letters + string.digits + "-_",
                     string.printable.strip()):
        if set(token) <= set(alphabet):
            return len(token) * math.log2(len(alphabet))
    return len(token) * 8.0


def load_or_create_token(home: Path) -> str:
    """The bearer token for TCP clients in $TUNER_HOME/token: ours, 0600, non-empty and >= 128
    bits, else a new one is generated in its place (and the log says why)."""
    path = home / "token"
    problem = token_problem(path)
    if not problem:
        return path.read_text().strip()
    if problem != "missing":
        log.warning("token file %s is %s: generated a new token (TCP clients need the new one)", path, problem)
    token = secrets.token_urlsafe(32)
    atomic_write_text(path, token + "\n", mode=0o600)
    return token


class HomeLock:
    """One daemon per home: an exclusive `flock` on $TUNER_HOME/tunerd.lock held for the
    daemon's life (whatever --socket says). The file holds the holder's pid and socket, which
    `tunerctl daemon stop|status` read (only while the lock is held do they mean anything)."""

    def __init__(self, home: Path):
        self.path = home / "tunerd.lock"
        self.fd: Optional[int] = None

    def acquire(self, socket_path: Path, wait: float = 1.0) -> None:
        fd = self._open()
        deadline = time.time() + wait  # a client peeking at the lock holds it for microseconds
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.time() >= deadline:
                    holder = _read_holder(fd)
                    os.close(fd)
                    raise HomeError(
                        f"tunerd is already running for {self.path.parent} (pid {holder.get('pid', '?')}, "
                        f"socket {holder.get('socket', '?')}); one daemon per home: stop it with "
                        "`tunerctl daemon stop`, or use another --home") from None
                time.sleep(0.05)
        self.fd, self.socket_path = fd, socket_path
        self._write(ready=False)

    def _open(self) -> int:
        """The lock file, never through a symlink (someone else's file would be truncated and
        written): a symlink or anything but a regular file at that path is refused."""
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK, 0o600)
        except OSError as e:
            what = "a symlink" if os.path.islink(self.path) else f"not usable ({e.strerror})"
            raise HomeError(f"refusing to use the lock file {self.path}: it is {what}; tunerd creates its "
                            f"own lock file there: remove it (`rm {self.path}`) if you know what it is, "
                            "or pass another --home") from None
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            raise HomeError(f"refusing to use the lock file {self.path}: it is not a regular file; "
                            f"remove it (`rm -r {self.path}`) if you know what it is, or pass another --home")
        return fd

    def mark_ready(self) -> None:
        """Serving: a client that cannot reach it now need not wait for it to finish starting."""
        self._write(ready=True)

    def _write(self, ready: bool) -> None:
        data = json.dumps({"pid": os.getpid(), "socket": str(self.socket_path), "ready": ready}).encode()
        os.ftruncate(self.fd, 0)
        os.pwrite(self.fd, data, 0)

    def release(self) -> None:
        if self.fd is not None:
            os.ftruncate(self.fd, 0)
            os.close(self.fd)  # closing the last descriptor releases the flock
            self.fd = None


def _read_holder(fd: int) -> dict:
    """The holder's {"pid", "socket", "ready"}, read once: `acquire` has waited for the lock, so a
    holder has long written them. (The client's `tunerctl.connection.lock_holder` is the reader
    that also waits out a holder that has only just taken the lock; the two packages share no code.)"""
    try:
        data = json.loads(os.pread(fd, 4096, 0) or b"{}")
    except ValueError:
        return {}
    return data if isinstance(data, dict) else {}


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


def socket_in_use(path: Path) -> bool:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        s.connect(str(path))
        return True
    except OSError:
        return False
    finally:
        s.close()


LOOPBACK = ("127.0.0.1", "localhost", "::1")


def http_address(http: str, http_host: str = "", no_auth: bool = False) -> tuple[str, int, bool]:
    """`--http [HOST:]PORT` (loopback only) and `--http-host HOST` (any address) -> (host, port,
    token required). The bearer token is required on loopback too (another local user, or a web
    page the user opens, can reach a loopback port) unless `--http-no-auth` (loopback only)."""
    host, _, port = http.rpartition(":")
    host = host.strip("[]") or "127.0.0.1"
    if not port.isdigit():
        raise SystemExit(f"--http: expected [HOST:]PORT, got {http!r}")
    if host not in LOOPBACK:
        raise SystemExit(f"--http: {host} is not a loopback address; to serve HTTP beyond this machine pass "
                         "--http-host HOST (clients then need the bearer token in $TUNER_HOME/token)")
    host = http_host or host
    if no_auth and host not in LOOPBACK:
        raise SystemExit(f"--http-no-auth is only allowed on a loopback address, not {host}")
    return host, int(port), not no_auth


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
