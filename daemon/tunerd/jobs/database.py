"""The job database's file: open it checked, or say what to do when it is damaged.

    connect(path)               a WAL connection (rows by name; autocommit: JobStore runs its
                                own transactions)
    open_checked(path)          connect, `PRAGMA quick_check`, create the tables; a database that
                                fails raises StoreDamaged, after a copy was saved beside it
    set_aside_journals(path)    the WAL / shared-memory files of a database that is gone, moved
                                aside before a new one is made

JobStore (store.py) reads and writes through what these return.
"""
from __future__ import annotations

import shutil
import sqlite3
import time
from pathlib import Path

_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL DEFAULT '',
    state TEXT NOT NULL,
    created_at REAL NOT NULL,
    started_at REAL NOT NULL DEFAULT 0,
    finished_at REAL NOT NULL DEFAULT 0,
    config_json TEXT NOT NULL,
    base_dir TEXT NOT NULL DEFAULT '',
    model TEXT NOT NULL DEFAULT '',
    backend TEXT NOT NULL DEFAULT '',
    output_dir TEXT NOT NULL DEFAULT '',
    adapter_path TEXT NOT NULL DEFAULT '',
    error TEXT NOT NULL DEFAULT '',
    step INTEGER NOT NULL DEFAULT 0,
    total_steps INTEGER NOT NULL DEFAULT 0,
    last_loss REAL NOT NULL DEFAULT 0,
    best_eval_loss REAL NOT NULL DEFAULT 0,
    last_sequence INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS events (
    job_id TEXT NOT NULL REFERENCES jobs(id),
    seq INTEGER NOT NULL,
    time REAL NOT NULL,
    kind TEXT NOT NULL,
    payload TEXT NOT NULL,
    PRIMARY KEY (job_id, seq)
);
CREATE TABLE IF NOT EXISTS exports (
    job_id TEXT NOT NULL REFERENCES jobs(id),
    time REAL NOT NULL,
    record TEXT NOT NULL
);
"""


class StoreDamaged(RuntimeError):
    """jobs.db cannot be used; the message says what was kept and what to do."""


def connect(path: Path) -> sqlite3.Connection:
    db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
    db.row_factory = sqlite3.Row
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=NORMAL")
    return db

def open_checked(path: Path) -> sqlite3.Connection:
    db = None
    try:
        db = connect(path)
        problems = [r[0] for r in db.execute("PRAGMA quick_check(5)").fetchall()]
        if problems != ["ok"]:
            found = " ".join(" ".join(problems).replace("*** in database main ***", "").split())
            raise sqlite3.DatabaseError(f"PRAGMA quick_check: {found[:200]}")
        db.executescript(_SCHEMA)
        return db
    except sqlite3.DatabaseError as e:
        if db is not None:
            db.close()
        raise StoreDamaged(_damaged(path, str(e))) from None

def _damaged(path: Path, problem: str) -> str:
    """Save a copy of the damaged database (once per version of it); say what to do."""
    stamp = time.strftime("%Y%m%d-%H%M%S", time.localtime(path.stat().st_mtime))
    copy = path.with_name(f"{path.name}.damaged-{stamp}")
    try:
        for suffix in ("", "-wal"):
            src, dst = Path(f"{path}{suffix}"), Path(f"{copy}{suffix}")
            if src.exists() and src.stat().st_size and not dst.exists():
                shutil.copy2(src, dst)
        kept = f"a copy is saved as {copy}"
    except OSError as e:
        kept = f"no copy could be saved ({e})"
    runs = path.parent / "runs"
    n = sum(1 for p in runs.iterdir() if p.is_dir()) if runs.is_dir() else 0
    return (f"the job database {path} is damaged ({problem}); tunerd will not start on it. "
            f"The file is kept as it is and {kept}. To start again, put back a good copy of it (from a "
            f"backup), or move it aside (`mv {path} {path}.broken`): the next start rebuilds the "
            f"job records from the {n} job folder(s) in {runs}")

def set_aside_journals(path: Path) -> None:
    """A WAL or shared-memory file left beside a missing or empty database belongs to the
    database that is gone: moved aside, never replayed into the new one."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    for suffix in ("-wal", "-shm"):
        p = Path(f"{path}{suffix}")
        if p.exists():
            p.rename(p.with_name(f"{p.name}.orphan-{stamp}"))
