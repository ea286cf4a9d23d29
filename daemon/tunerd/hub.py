"""One offline rule for every hub look-up (issue 23, item 8): a model or data set id that is not
in the cache fails fast with UNAVAILABLE (a ConnectionError) when the hub cannot be asked.

    offline(datasets)    HF_HUB_OFFLINE (for data sets, HF_DATASETS_OFFLINE too) is set: the hub
                         is never asked
    reachable(fresh)     one TCP connection to the hub's host (HF_ENDPOINT), CONNECT_TIMEOUT
                         seconds at most; the answer is kept for REMEMBER_SECONDS
    require(what, ...)   nothing when the hub can be asked; else ConnectionError naming `what`,
                         why (offline, or the host out of reach) and what to do

Without this, huggingface_hub and datasets retry an unreachable hub five times (about 25 s) and
then answer NOT_FOUND or a parser error; chat, recommend, submit and data inspect now all answer
UNAVAILABLE within CONNECT_TIMEOUT.
"""
from __future__ import annotations

import os
import socket
import threading
import time
from urllib.parse import urlsplit

CONNECT_TIMEOUT = 2.0
REMEMBER_SECONDS = 30.0
_TRUE = ("1", "on", "yes", "true")

_lock = threading.Lock()
_last: dict = {}   # endpoint -> (monotonic time, reachable, why)


def endpoint() -> str:
    return os.environ.get("HF_ENDPOINT", "https://huggingface.co").rstrip("/")


def offline(datasets: bool = False) -> bool:
    names = ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE") if datasets else ("HF_HUB_OFFLINE",)
    return any(os.environ.get(k, "").strip().lower() in _TRUE for k in names)


def _probe(url: str) -> str:
    """'' when a TCP connection to the endpoint's host opens, else why not."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    port = parts.port or (80 if parts.scheme == "http" else 443)
    try:
        with socket.create_connection((host, port), timeout=CONNECT_TIMEOUT):
            return ""
    except OSError as e:
        return f"{host}:{port} is out of reach ({type(e).__name__}: {e.strerror or e})"


def reachable(datasets: bool = False, fresh: bool = False) -> tuple[bool, str]:
    """(the hub can be asked, why not): offline mode, or the connect check (cached unless `fresh`:
    a push asks anew, as it is rare and a stale "yes" would cost the retries)."""
    if offline(datasets):
        return False, "the daemon is offline (HF_HUB_OFFLINE=1), so the hub was not asked"
    url = endpoint()
    with _lock:
        t, ok, why = _last.get(url, (0.0, False, ""))
        if not fresh and time.monotonic() - t < REMEMBER_SECONDS:
            return ok, why
    why = _probe(url)
    with _lock:
        _last[url] = (time.monotonic(), not why, why and f"the hub ({url}): {why}")
        return not why, _last[url][2]


def require(what: str, fix: str = "use a local path, or start tunerd where the hub can be reached",
            detail: str = "is not in the local cache", datasets: bool = False) -> None:
    """ConnectionError (UNAVAILABLE) unless the hub can be asked about `what` (e.g. "model 'org/x'")."""
    ok, why = reachable(datasets)
    if not ok:
        raise ConnectionError(f"{what} {detail}, and {why}. {fix[0].upper() + fix[1:]}")
