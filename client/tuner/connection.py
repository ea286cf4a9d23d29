"""Reaching the daemon: its Unix socket (default) or TCP with a bearer token (and TLS), whether it
answers, which process holds a home, and starting one on demand. The one place that knows where a
daemon lives; `tuner.Client.connect` and tunerctl's daemon commands both use it."""
from __future__ import annotations

import fcntl
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import grpc

from .errors import DaemonUnavailable

HEALTH_SERVICE = "tuner.v1.Tuner"


@dataclass
class Target:
    home: Path
    socket: Optional[Path] = None
    listen: str = ""
    token: str = ""
    tls_ca: str = ""

    @property
    def socket_path(self) -> Path:
        return self.socket or self.home / "tunerd.sock"

    @property
    def is_local(self) -> bool:
        return not self.listen

    def address(self) -> str:
        return self.listen if self.listen else f"unix://{self.socket_path}"


def local_ref(ref: str) -> str:
    """A path that exists here, made absolute (the daemon's working directory is not ours);
    job:<id>, hub model and dataset ids, and paths that do not exist, as they are."""
    return str(Path(ref).expanduser().resolve()) if ref and not ref.startswith("job:") and \
        Path(ref).expanduser().exists() else ref


def default_home() -> Path:
    return Path(os.environ.get("TUNER_HOME") or Path.home() / ".tuner").expanduser()


class _Bearer(grpc.AuthMetadataPlugin):
    def __init__(self, token: str):
        self._token = token

    def __call__(self, context, callback):
        callback((("authorization", f"Bearer {self._token}"),), None)


def _token_interceptor(token: str):
    class Add(grpc.UnaryUnaryClientInterceptor, grpc.UnaryStreamClientInterceptor):
        def _md(self, details):
            md = list(details.metadata or []) + [("authorization", f"Bearer {token}")]
            return details._replace(metadata=md)

        def intercept_unary_unary(self, cont, details, request):
            return cont(self._md(details), request)

        def intercept_unary_stream(self, cont, details, request):
            return cont(self._md(details), request)
    return Add()


def open_channel(t: Target) -> grpc.Channel:
    opts = [("grpc.max_receive_message_length", 64 << 20)]
    if t.is_local:
        return grpc.insecure_channel(t.address(), options=opts)
    token = t.token or _read_token(t.home)
    if t.tls_ca:
        creds = grpc.ssl_channel_credentials(Path(t.tls_ca).read_bytes())
        if token:
            creds = grpc.composite_channel_credentials(creds, grpc.metadata_call_credentials(_Bearer(token)))
        return grpc.secure_channel(t.listen, creds, options=opts)
    ch = grpc.insecure_channel(t.listen, options=opts)
    return grpc.intercept_channel(ch, _token_interceptor(token)) if token else ch


def _read_token(home: Path) -> str:
    p = home / "token"
    return p.read_text().strip() if p.exists() else os.environ.get("TUNER_TOKEN", "")


def is_healthy(channel: grpc.Channel, timeout: float = 1.0) -> bool:
    from grpc_health.v1 import health_pb2, health_pb2_grpc
    try:
        r = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service=HEALTH_SERVICE), timeout=timeout)
        return r.status == health_pb2.HealthCheckResponse.SERVING
    except grpc.RpcError as e:
        if e.code() == grpc.StatusCode.UNAUTHENTICATED:
            raise DaemonUnavailable(f"the daemon rejected the token: {e.details()}", e.code()) from None
        return False


def lock_holder(home: Path) -> Optional[dict]:
    """The daemon holding $TUNER_HOME/tunerd.lock ({"pid", "socket"}), or None when no daemon
    runs for this home. The daemon holds an exclusive flock for its life, so a held lock means a
    live daemon and its pid is the one it wrote (never a stale pid file's)."""
    try:
        fd = os.open(home / "tunerd.lock", os.O_RDONLY | os.O_NOFOLLOW)
    except OSError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            for _ in range(40):  # it writes its pid right after taking the lock
                try:
                    data = json.loads(os.pread(fd, 4096, 0) or b"{}")
                except ValueError:
                    data = {}
                if data.get("pid"):
                    return data
                time.sleep(0.05)
            return {"pid": 0, "socket": ""}
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)


def describe_holder(home: Path, holder: dict) -> str:
    return (f"tunerd (pid {holder.get('pid') or '?'}) is running for {home} but does not answer on "
            f"unix://{holder.get('socket') or '?'}; see `tunerctl daemon logs`, or stop it with "
            "`tunerctl daemon stop`")


def start_daemon(t: Target, wait: float = 60.0, extra: tuple = ()) -> int:
    """Start tunerd in the background (detached, logging to $TUNER_HOME/tunerd.log). Never a
    second one: if a daemon already holds the home's lock, wait for it instead."""
    if not t.home.exists():
        t.home.mkdir(mode=0o700, parents=True)  # the daemon checks an existing home's trust
    holder = lock_holder(t.home)
    if holder:  # it may still be starting; one that does not answer soon is reported, not doubled
        return _wait_for_holder(t, holder, min(wait, 10.0))
    cmd = [sys.executable, "-m", "tunerd", "--home", str(t.home)]
    if t.socket:
        cmd += ["--socket", str(t.socket)]
    cmd += list(extra)   # e.g. --http 127.0.0.1:8080
    with open(t.home / "tunerd.out", "ab") as out:
        started_at = out.tell()   # what this daemon writes from here is its reason, if it exits
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)
    ch = open_channel(t)
    deadline = time.time() + wait
    while time.time() < deadline:
        if proc.poll() is not None:
            holder = lock_holder(t.home)
            if holder:  # another client started one at the same moment: use that one
                return _wait_for_holder(t, holder, deadline - time.time())
            raise DaemonUnavailable(f"tunerd exited with code {proc.returncode}: "
                                    f"{_output_since(t.home / 'tunerd.out', started_at)}")
        if t.socket_path.exists() and is_healthy(ch, 0.5):
            ch.close()
            holder = lock_holder(t.home) or {}
            if holder.get("pid") != proc.pid:  # another client's daemon won: ours gives up in ~1 s
                try:
                    proc.wait(10)
                except subprocess.TimeoutExpired:
                    pass
            return int(holder.get("pid") or proc.pid)
        time.sleep(0.2)
    raise DaemonUnavailable(f"tunerd did not answer on {t.address()} within {wait:.0f}s "
                            f"(see {t.home / 'tunerd.log'})")


def _output_since(path: Path, offset: int) -> str:
    """What the daemon we started wrote (the last 2,000 characters): its reason for exiting."""
    with open(path, "rb") as f:
        f.seek(offset)
        text = f.read().decode(errors="replace").strip()
    return text[-2000:] or f"no output (see {path.parent / 'tunerd.log'})"


def _wait_for_holder(t: Target, holder: dict, wait: float) -> int:
    """The live daemon of this home (perhaps still starting) answers on its socket, or we say why not."""
    sock = Path(holder.get("socket") or t.socket_path)
    if sock != t.socket_path:
        raise DaemonUnavailable(f"tunerd (pid {holder.get('pid')}) is already running for {t.home} on "
                                f"unix://{sock}; use --socket {sock} (one daemon per home)")
    ch = open_channel(t)
    deadline = time.time() + max(min(wait, 2.0) if holder.get("ready") else wait, 0.0)
    try:
        while True:
            if sock.exists() and is_healthy(ch, 0.5):
                return int(holder.get("pid") or 0)
            if time.time() >= deadline or not lock_holder(t.home):
                raise DaemonUnavailable(describe_holder(t.home, holder))
            time.sleep(0.2)
    finally:
        ch.close()


def target(home: Optional[Path] = None, address: str = "", token: str = "", socket: Optional[Path] = None,
           tls_ca: str = "") -> Target:
    """Where a daemon is: the Unix socket of `home` (default $TUNER_HOME or ~/.tuner), another
    socket (`socket`, or `address` as unix:///path), or TCP at `address` (HOST:PORT)."""
    if address.startswith("unix://"):
        socket, address = Path(address[len("unix://"):]), ""
    return Target(home=Path(home or default_home()).expanduser(), socket=Path(socket) if socket else None,
                  listen=address, token=token, tls_ca=tls_ca)


def healthy_channel(t: Target, autostart: bool = False) -> grpc.Channel:
    """A channel to a daemon that answers; starts a local one when none does and `autostart`."""
    ch = open_channel(t)
    if not is_healthy(ch):
        ch.close()
        if not (autostart and t.is_local):
            holder = lock_holder(t.home) if t.is_local else None
            raise DaemonUnavailable(describe_holder(t.home, holder) if holder else
                                    f"no daemon answers on {t.address()}"
                                    + ("" if t.is_local else " (check --listen and --token)"))
        start_daemon(t, wait=60.0)
        ch = open_channel(t)
    return ch
