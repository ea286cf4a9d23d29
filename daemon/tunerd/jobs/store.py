"""Job records and their event logs in SQLite (WAL) under $TUNER_HOME.

Every event is appended with a per-job sequence number (1, 2, ...), so a watcher can replay
from any sequence and then tail live events (`wait_for_events`). A daemon restart keeps
everything; jobs that were running when the process died are marked interrupted on open.
"""
from __future__ import annotations

import json
import sqlite3
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

QUEUED, RUNNING, SUCCEEDED, FAILED, CANCELLED, INTERRUPTED = (
    "queued", "running", "succeeded", "failed", "cancelled", "interrupted")
FINAL_STATES = (SUCCEEDED, FAILED, CANCELLED, INTERRUPTED)
RESUMABLE_STATES = (FAILED, CANCELLED, INTERRUPTED)

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
"""


class JobNotFound(KeyError):
    def __str__(self):
        return f"no job with id {self.args[0]!r} (see `tunerctl jobs list`)"


@dataclass
class JobRecord:
    id: str
    state: str
    created_at: float
    config_json: str
    name: str = ""
    started_at: float = 0.0
    finished_at: float = 0.0
    base_dir: str = ""
    model: str = ""
    backend: str = ""
    output_dir: str = ""
    adapter_path: str = ""
    error: str = ""
    step: int = 0
    total_steps: int = 0
    last_loss: float = 0.0
    best_eval_loss: float = 0.0
    last_sequence: int = 0
    queue_position: int = 0   # not stored: the manager's queue, filled in by Core (1 = next to run)

    @property
    def config(self) -> dict:
        return json.loads(self.config_json)


@dataclass
class StoredEvent:
    job_id: str
    seq: int
    time: float
    kind: str
    payload: dict = field(default_factory=dict)


class JobStore:
    def __init__(self, path: Path):
        self.path = Path(path)
        self._db = sqlite3.connect(str(self.path), check_same_thread=False, isolation_level=None)
        self._db.row_factory = sqlite3.Row
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(_SCHEMA)
        self._lock = threading.RLock()
        self._changed = threading.Condition(self._lock)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    # -- jobs -------------------------------------------------------------------------------
    def create(self, config: dict, name: str = "", base_dir: str = "", output_dir: str = "") -> JobRecord:
        """A new queued job. Its id is the time plus 6 random hex digits; the rare clash (a burst
        of submits in one second) draws again."""
        attempts = 8
        while True:
            job_id = time.strftime("%Y%m%d-%H%M%S-") + uuid.uuid4().hex[:6]
            rec = JobRecord(id=job_id, name=name, state=QUEUED, created_at=time.time(),
                            config_json=json.dumps(config), base_dir=base_dir,
                            model=str(config.get("model", "")), output_dir=output_dir)
            try:
                with self._lock:
                    self._db.execute(
                        "INSERT INTO jobs (id, name, state, created_at, config_json, base_dir, model, output_dir)"
                        " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                        (rec.id, rec.name, rec.state, rec.created_at, rec.config_json, rec.base_dir,
                         rec.model, rec.output_dir))
                return rec
            except sqlite3.IntegrityError:
                attempts -= 1
                if not attempts:
                    raise

    def get(self, job_id: str) -> JobRecord:
        with self._lock:
            row = self._db.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
        if row is None:
            raise JobNotFound(job_id)
        return JobRecord(**dict(row))

    def ids_starting_with(self, prefix: str) -> list[str]:
        """Ids that begin with `prefix`, oldest first (jobs/refs.py resolves prefixes with this)."""
        with self._lock:
            rows = self._db.execute("SELECT id FROM jobs WHERE substr(id, 1, ?) = ? ORDER BY created_at",
                                    (len(prefix), prefix)).fetchall()
        return [r[0] for r in rows]

    def list(self, limit: int = 0, states: Optional[list[str]] = None) -> list[JobRecord]:
        sql, args = "SELECT * FROM jobs", []
        if states:
            sql += f" WHERE state IN ({','.join('?' * len(states))})"
            args += list(states)
        sql += " ORDER BY created_at DESC"
        if limit:
            sql += f" LIMIT {int(limit)}"
        with self._lock:
            return [JobRecord(**dict(r)) for r in self._db.execute(sql, args).fetchall()]

    def update(self, job_id: str, **fields) -> JobRecord:
        """Fields other than the state (that changes only through `transition`)."""
        assert "state" not in fields, "state changes go through JobStore.transition"
        if fields:
            cols = ", ".join(f"{k} = ?" for k in fields)
            with self._lock:
                cur = self._db.execute(f"UPDATE jobs SET {cols} WHERE id = ?", (*fields.values(), job_id))
                if cur.rowcount == 0:
                    raise JobNotFound(job_id)
                self._changed.notify_all()
        return self.get(job_id)

    def transition(self, job_id: str, expected: tuple[str, ...], state: str, reason: str,
                   **fields) -> bool:
        """Compare-and-set the job's state: `expected` -> `state`, with its StateChanged event,
        in one transaction. False (and nothing written) when the job is no longer in an
        expected state: another thread got there first."""
        cols = ", ".join(f"{k} = ?" for k in ("state", *fields))
        marks = ",".join("?" * len(expected))
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                cur = self._db.execute(f"UPDATE jobs SET {cols} WHERE id = ? AND state IN ({marks})",
                                       (state, *fields.values(), job_id, *expected))
                if cur.rowcount == 0:
                    self._db.execute("ROLLBACK")
                    if self._db.execute("SELECT 1 FROM jobs WHERE id = ?", (job_id,)).fetchone() is None:
                        raise JobNotFound(job_id)
                    return False
                self._insert_event(job_id, "StateChanged", {"state": state, "reason": reason})
                self._db.execute("COMMIT")
            except BaseException:
                if self._db.in_transaction:
                    self._db.execute("ROLLBACK")
                raise
            self._changed.notify_all()
        return True

    def mark_orphans_interrupted(self) -> list[str]:
        """Jobs left 'running' by a process that died: they become interrupted (resumable)."""
        with self._lock:
            ids = [r["id"] for r in self._db.execute("SELECT id FROM jobs WHERE state = ?", (RUNNING,))]
        return [job_id for job_id in ids if self.transition(
            job_id, (RUNNING,), INTERRUPTED, "daemon restarted", finished_at=time.time(),
            error="the daemon stopped while this job ran; resume it with `tunerctl jobs resume`")]

    # -- events -----------------------------------------------------------------------------
    def append(self, job_id: str, kind: str, payload: dict) -> int:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                seq = self._insert_event(job_id, kind, payload)
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._changed.notify_all()
        return seq

    def _insert_event(self, job_id: str, kind: str, payload: dict) -> int:
        """Inside a transaction, with the lock held."""
        seq = self._db.execute("SELECT last_sequence FROM jobs WHERE id = ?", (job_id,)).fetchone()
        if seq is None:
            raise JobNotFound(job_id)
        seq = seq[0] + 1
        self._db.execute("INSERT INTO events (job_id, seq, time, kind, payload) VALUES (?, ?, ?, ?, ?)",
                         (job_id, seq, time.time(), kind, json.dumps(payload)))
        self._db.execute("UPDATE jobs SET last_sequence = ? WHERE id = ?", (seq, job_id))
        return seq

    def events(self, job_id: str, from_sequence: int = 0, limit: int = 1000) -> list[StoredEvent]:
        with self._lock:
            rows = self._db.execute(
                "SELECT * FROM events WHERE job_id = ? AND seq >= ? ORDER BY seq LIMIT ?",
                (job_id, from_sequence, limit)).fetchall()
        return [StoredEvent(r["job_id"], r["seq"], r["time"], r["kind"], json.loads(r["payload"])) for r in rows]

    def wait_for_change(self, timeout: float) -> None:
        """Block until any job or event changes (or timeout)."""
        with self._changed:
            self._changed.wait(timeout)
