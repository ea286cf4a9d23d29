"""Who and what tunerd trusts, checked before it serves: its home ($TUNER_HOME: ours, 0700, as ssh
trusts ~/.ssh), one daemon per home (an exclusive lock file), the bearer token TCP and HTTP
clients must send ($TUNER_HOME/token: ours, 0600, >= 128 bits), and which HTTP addresses may be
served with or without it. server.py runs the servers on top of these.
"""
from __future__ import annotations

import fcntl
import json
import logging
import os
import secrets
import stat
import time
from pathlib import Path
from typing import Optional

from .files import atomic_write_text

log = logging.getLogger("tunerd")




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
    holder has long written them. (The client's `tuner.connection.lock_holder` is the reader
    that also waits out a holder that has only just taken the lock; the two packages share no code.)"""
    try:
        data = json.loads(os.pread(fd, 4096, 0) or b"{}")
    except ValueError:
        return {}
    return data if isinstance(data, dict) else {}


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
