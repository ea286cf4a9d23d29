"""Paths in requests, one rule: `~` expanded; a relative path joined to the request's base dir.

Requests that name files (submit, inspect, evaluate, recommend) carry `base_dir`: the client's
cwd, so `tunerctl train configs/x.yaml` means what it means in the shell. Requests without one
(chat, models, adapters) get absolute paths from the CLI; a relative one there resolves against
the daemon's working directory, its home (tunerd changes to it at start-up).
"""
from __future__ import annotations

import os
from pathlib import Path


def resolve_path(path: str, base_dir: str = "") -> str:
    """An absolute, normalised path for `path` ('' stays '')."""
    if not path:
        return ""
    p = Path(path).expanduser()
    if not p.is_absolute():
        p = Path(base_dir or os.getcwd()).expanduser() / p
    return os.path.normpath(p)


def local_or_id(name: str, base_dir: str = "") -> str:
    """A name that is a local path when one exists there (resolved), else an id as it is (a hub
    model or data set id such as `org/name`)."""
    if not name:
        return ""
    path = resolve_path(name, base_dir)
    return path if os.path.exists(path) else name


def looks_like_hub_id(name: str, base_dir: str = "") -> bool:
    """`org/name` that is not an existing path (under base_dir) and not absolute/relative-looking."""
    return (name.count("/") == 1 and not name.startswith((".", "/", "~"))
            and not os.path.exists(resolve_path(name, base_dir)))


def default_home() -> Path:
    """The daemon's home when no --home is given: $TUNER_HOME, else ~/.tuner."""
    return Path(os.environ.get("TUNER_HOME") or Path.home() / ".tuner").expanduser()
