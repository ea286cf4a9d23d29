"""Folders the daemon owns, which no job and no export may write into.

    claimed_by(store, home, path, job="")             why `path` is not free, or None
    refuse_claimed(store, home, path, what, job="")   OutputRefused naming the home or the job

The home (`jobs.db`, the socket, the lock, `runs/`) and its parents; `home/runs`, the folder of
every job's default output; and each job's output folder, anything inside one, or a folder holding
one (a job owns its whole folder: its checkpoints, adapter and metrics). `job` is the job asking,
whose own folder is allowed.
"""
from __future__ import annotations

import os
from typing import Optional

from ..files import OutputRefused
from .store import JobStore

RUNS = "runs"


def _inside(path: str, folder: str) -> bool:
    return path.startswith(folder.rstrip(os.sep) + os.sep)


def claimed_by(store: JobStore, home, path, job: str = "") -> Optional[str]:
    """Why `path` is not free for a new output ("is the daemon's home", "is job X's output
    folder", ...), or None."""
    p, h = os.path.realpath(path), os.path.realpath(home)
    runs = os.path.join(h, RUNS)
    if p == h:
        return f"is the daemon's home ({h}: jobs.db, runs/, the socket)"
    if _inside(h, p):
        return f"holds the daemon's home {h} (jobs.db, runs/, the socket)"
    if p == runs:
        return f"is the daemon's folder of all jobs' outputs ({runs})"
    if _inside(p, h) and not _inside(p, runs):
        return f"is inside the daemon's home {h}"
    for rec in store.list():
        if rec.id == job or not rec.output_dir:
            continue
        o = os.path.realpath(rec.output_dir)
        if p == o:
            return f"is job {rec.id}'s output folder"
        if _inside(p, o):
            return f"is inside job {rec.id}'s output folder {o}"
        if _inside(o, p):
            return f"holds job {rec.id}'s output folder {o}"
    return None


def refuse_claimed(store: JobStore, home, path, what: str, job: str = "", fix: str = "choose a new folder") -> None:
    """OutputRefused("`what` PATH is job X's output folder; ...; `fix`") when `path` is claimed."""
    reason = claimed_by(store, home, path, job)
    if reason:
        raise OutputRefused(f"{what} {path} {reason}; MacTuner writes nothing else there: {fix}")
