"""Job records and their event logs in SQLite (WAL) under $TUNER_HOME.

Every event is appended with a per-job sequence number (1, 2, ...), so a watcher can replay
from any sequence and then tail live events (`wait_for_events`). A daemon restart keeps
everything; jobs that were running when the process died are marked interrupted on open.

Damage and a full disk:
- Opening runs `PRAGMA quick_check` (jobs/database.py); a database that fails it (or cannot be
  read at all) raises `StoreDamaged`, whose message says what to do, after a copy was saved beside it
  (jobs.db.damaged-<time>). A missing or 0-byte database opens empty with `was_missing` set, so
  the caller can rebuild the records from the job folders (jobs/recovery.py).
- Every write is one transaction; a failed one is rolled back (a connection that cannot roll back
  is reopened), and a write that fails for lack of space raises `disk.NoSpace`. A change to a
  final state (failed, cancelled, ...) that cannot be written is kept in memory instead: reads
  show it at once, and it is written, in order, before the next write and every second until
  the disk has room again (no restart needed).
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import sqlite3
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from ..disk import NoSpace, free_bytes
from .database import StoreDamaged, connect, open_checked, set_aside_journals  # noqa: F401 (StoreDamaged: raised here)

log = logging.getLogger(__name__)

QUEUED, RUNNING, SUCCEEDED, FAILED, CANCELLED, INTERRUPTED = (
    "queued", "running", "succeeded", "failed", "cancelled", "interrupted")
FINAL_STATES = (SUCCEEDED, FAILED, CANCELLED, INTERRUPTED)
RESUMABLE_STATES = (FAILED, CANCELLED, INTERRUPTED)

DB_HEADROOM = 1 << 20   # what a write to the database needs free, about (WAL frames)
RETRY_SECONDS = 1.0     # how often state changes that could not be written are tried again


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
    exports: tuple = ()       # not stored here: the exports table (jobs/exports.py), filled in by Core

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


@dataclass
class _Change:
    """A state change and its events, written in one transaction (or kept until it can be)."""
    job_id: str
    expected: tuple
    state: str
    reason: str
    fields: dict
    events: list          # [(kind, payload)] written before the StateChanged event
    time: float = field(default_factory=time.time)

    @property
    def records(self) -> list:
        return [*self.events, ("StateChanged", {"state": self.state, "reason": self.reason})]


class JobStore:
    def __init__(self, path: Path):
        self.path = Path(path)
        self.was_missing = not self.path.exists() or self.path.stat().st_size == 0
        if self.was_missing:
            set_aside_journals(self.path)
        self._lock = threading.RLock()
        self._changed = threading.Condition(self._lock)
        self._pending: list[_Change] = []   # final state changes not written yet (disk full)
        self._retrying = False
        self._closed = False
        self._db = open_checked(self.path)

    def close(self) -> None:
        with self._lock:
            try:
                self._flush()
            except sqlite3.Error as e:
                log.error("could not write %d state change(s) to %s (%s); jobs left running there are "
                          "marked interrupted at the next start", len(self._pending), self.path, e)
            self._closed = True
            self._db.close()

    # -- writing ----------------------------------------------------------------------------
    @contextlib.contextmanager
    def _transaction(self):
        """BEGIN IMMEDIATE ... COMMIT, the lock held. On any failure the transaction is rolled
        back (SQLite has often done so itself: a full disk does), and a connection that cannot
        roll back is replaced by a new one."""
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield
            self._db.execute("COMMIT")
        except BaseException:
            self._rollback()
            raise

    def _rollback(self) -> None:
        if not self._db.in_transaction:
            return
        try:
            self._db.execute("ROLLBACK")
        except sqlite3.Error as e:
            log.warning("rollback on %s failed (%s): reopened the database", self.path, e)
            with contextlib.suppress(sqlite3.Error):
                self._db.close()
            self._db = connect(self.path)

    def _write(self, fn):
        """fn() in one transaction, after the state changes still waiting to be written; a full
        disk raises NoSpace."""
        with self._lock:
            try:
                self._flush()
                with self._transaction():
                    result = fn()
            except sqlite3.OperationalError as e:
                if self._is_full(e):
                    raise NoSpace(self.path, DB_HEADROOM) from None
                raise
            self._changed.notify_all()
            return result

    def _is_full(self, e: sqlite3.Error) -> bool:
        code = getattr(e, "sqlite_errorcode", 0) & 0xFF
        return code == sqlite3.SQLITE_FULL or (code == sqlite3.SQLITE_IOERR and free_bytes(self.path) < DB_HEADROOM)

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
                self._write(lambda: self._insert_job(rec))
                return rec
            except sqlite3.IntegrityError:
                attempts -= 1
                if not attempts:
                    raise

    def restore(self, rec: JobRecord, events: list[tuple[str, dict, float]]) -> None:
        """Insert a job rebuilt from its folder (jobs/recovery.py) with its events, in one transaction."""
        def insert() -> None:
            self._insert_job(rec)
            for seq, (kind, payload, at) in enumerate(events, 1):
                self._db.execute("INSERT INTO events (job_id, seq, time, kind, payload) VALUES (?, ?, ?, ?, ?)",
                                 (rec.id, seq, at, kind, json.dumps(payload)))
            self._db.execute("UPDATE jobs SET last_sequence = ? WHERE id = ?", (len(events), rec.id))
        self._write(insert)

    def _insert_job(self, rec: JobRecord) -> None:
        cols = [f.name for f in dataclasses.fields(JobRecord) if f.name not in ("queue_position", "last_sequence", "exports")]
        self._db.execute(f"INSERT INTO jobs ({', '.join(cols)}) VALUES ({', '.join('?' * len(cols))})",
                         [getattr(rec, c) for c in cols])

    def get(self, job_id: str) -> JobRecord:
        with self._lock:
            row = self._db.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
            if row is None:
                raise JobNotFound(job_id)
            return self._overlaid(JobRecord(**dict(row)))

    def ids_starting_with(self, prefix: str) -> list[str]:
        """Ids that begin with `prefix`, oldest first (jobs/refs.py resolves prefixes with this)."""
        with self._lock:
            rows = self._db.execute("SELECT id FROM jobs WHERE substr(id, 1, ?) = ? ORDER BY created_at",
                                    (len(prefix), prefix)).fetchall()
        return [r[0] for r in rows]

    def list(self, limit: int = 0, states: Optional[list[str]] = None) -> list[JobRecord]:
        with self._lock:
            if self._pending:   # states that are not written yet: filter after overlaying them
                recs = [self._overlaid(JobRecord(**dict(r)))
                        for r in self._db.execute("SELECT * FROM jobs ORDER BY created_at DESC").fetchall()]
                recs = [r for r in recs if not states or r.state in states]
                return recs[:limit] if limit else recs
            sql, args = "SELECT * FROM jobs", []
            if states:
                sql += f" WHERE state IN ({','.join('?' * len(states))})"
                args += list(states)
            sql += " ORDER BY created_at DESC"
            if limit:
                sql += f" LIMIT {int(limit)}"
            return [JobRecord(**dict(r)) for r in self._db.execute(sql, args).fetchall()]

    def update(self, job_id: str, **fields) -> JobRecord:
        """Fields other than the state (that changes only through `transition`)."""
        assert "state" not in fields, "state changes go through JobStore.transition"
        if fields:
            cols = ", ".join(f"{k} = ?" for k in fields)

            def update() -> None:
                if self._db.execute(f"UPDATE jobs SET {cols} WHERE id = ?", (*fields.values(), job_id)).rowcount == 0:
                    raise JobNotFound(job_id)
            self._write(update)
        return self.get(job_id)

    def transition(self, job_id: str, expected: tuple[str, ...], state: str, reason: str,
                   events: tuple = (), **fields) -> bool:
        """Compare-and-set the job's state: `expected` -> `state`, with `events` ([(kind, payload)])
        and its StateChanged event, in one transaction. False (and nothing written) when the job
        is no longer in an expected state: another thread got there first. A change to a final
        state that cannot be written for lack of space is kept and written later (see the module
        docstring); any other change raises NoSpace."""
        with self._lock:
            if self.get(job_id).state not in expected:   # raises JobNotFound
                return False
            change = _Change(job_id, tuple(expected), state, reason, fields, list(events))
            try:
                written = self._write(lambda: self._apply(change))
            except NoSpace as e:
                if state not in FINAL_STATES:
                    raise
                self._defer(change, e)
                return True
        return written

    def _apply(self, c: _Change) -> bool:
        """Inside a transaction: the compare-and-set and the change's events."""
        cols = ", ".join(f"{k} = ?" for k in ("state", *c.fields))
        marks = ",".join("?" * len(c.expected))
        cur = self._db.execute(f"UPDATE jobs SET {cols} WHERE id = ? AND state IN ({marks})",
                               (c.state, *c.fields.values(), c.job_id, *c.expected))
        if cur.rowcount == 0:
            return False
        for kind, payload in c.records:
            self._insert_event(c.job_id, kind, payload, c.time)
        return True

    def _defer(self, c: _Change, e: NoSpace) -> None:
        log.warning("job %s: %s; its change to %s is kept in memory and written once there is room",
                    c.job_id, e, c.state)
        c.expected = (self.get(c.job_id).state,)
        self._pending.append(c)
        self._changed.notify_all()
        if not self._retrying:
            self._retrying = True
            threading.Thread(target=self._retry, name="jobs-db-retry", daemon=True).start()

    def _flush(self) -> None:
        """Write the kept state changes, oldest first (the lock held); raises while the disk is full."""
        while self._pending:
            c = self._pending[0]
            with self._transaction():
                if not self._apply(c):
                    log.error("job %s: a kept change to %s no longer applies; dropped", c.job_id, c.state)
            self._pending.pop(0)
            log.info("job %s: wrote the change to %s kept while %s had no room", c.job_id, c.state, self.path)

    def _retry(self) -> None:
        while True:
            time.sleep(RETRY_SECONDS)
            with self._lock:
                if self._closed or not self._pending:
                    self._retrying = False
                    return
                try:
                    self._flush()
                except sqlite3.Error:
                    continue
                self._changed.notify_all()

    def _overlaid(self, rec: JobRecord) -> JobRecord:
        """`rec` as the state changes kept in memory leave it (the lock held)."""
        for c in self._pending:
            if c.job_id == rec.id:
                rec = dataclasses.replace(rec, state=c.state, **c.fields,
                                          last_sequence=rec.last_sequence + len(c.records))
        return rec

    def mark_orphans_interrupted(self) -> list[str]:
        """Jobs left 'running' by a process that died: they become interrupted (resumable)."""
        with self._lock:
            ids = [r["id"] for r in self._db.execute("SELECT id FROM jobs WHERE state = ?", (RUNNING,))]
        return [job_id for job_id in ids if self.transition(
            job_id, (RUNNING,), INTERRUPTED, "daemon restarted", finished_at=time.time(),
            error="the daemon stopped while this job ran; resume it with `tunerctl jobs resume`")]

    # -- events -----------------------------------------------------------------------------
    def append(self, job_id: str, kind: str, payload: dict) -> int:
        return self._write(lambda: self._insert_event(job_id, kind, payload))

    def _insert_event(self, job_id: str, kind: str, payload: dict, at: Optional[float] = None) -> int:
        """Inside a transaction, with the lock held."""
        seq = self._db.execute("SELECT last_sequence FROM jobs WHERE id = ?", (job_id,)).fetchone()
        if seq is None:
            raise JobNotFound(job_id)
        seq = seq[0] + 1
        self._db.execute("INSERT INTO events (job_id, seq, time, kind, payload) VALUES (?, ?, ?, ?, ?)",
                         (job_id, seq, at or time.time(), kind, json.dumps(payload)))
        self._db.execute("UPDATE jobs SET last_sequence = ? WHERE id = ?", (seq, job_id))
        return seq

    def events(self, job_id: str, from_sequence: int = 0, limit: int = 1000) -> list[StoredEvent]:
        with self._lock:
            rows = self._db.execute(
                "SELECT * FROM events WHERE job_id = ? AND seq >= ? ORDER BY seq LIMIT ?",
                (job_id, from_sequence, limit)).fetchall()
            found = [StoredEvent(r["job_id"], r["seq"], r["time"], r["kind"], json.loads(r["payload"])) for r in rows]
            return (found + self._kept_events(job_id, from_sequence))[:limit]

    def _kept_events(self, job_id: str, from_sequence: int) -> list[StoredEvent]:
        """The events of state changes kept in memory, numbered as they will be written."""
        if not any(c.job_id == job_id for c in self._pending):
            return []
        seq = self._db.execute("SELECT last_sequence FROM jobs WHERE id = ?", (job_id,)).fetchone()[0]
        kept = []
        for c in (c for c in self._pending if c.job_id == job_id):
            for kind, payload in c.records:
                seq += 1
                if seq >= from_sequence:
                    kept.append(StoredEvent(job_id, seq, c.time, kind, payload))
        return kept

    # -- exports (jobs/exports.py): what was written from a job's adapter, oldest first ----------
    def add_export(self, job_id: str, record: dict) -> None:
        self._write(lambda: self._db.execute("INSERT INTO exports (job_id, time, record) VALUES (?, ?, ?)",
                                             (job_id, record.get("time") or time.time(), json.dumps(record))))

    def exports(self, job_id: str) -> list[dict]:
        with self._lock:
            rows = self._db.execute("SELECT record FROM exports WHERE job_id = ? ORDER BY time, rowid",
                                    (job_id,)).fetchall()
        return [json.loads(r[0]) for r in rows]

    def wait_for_change(self, timeout: float) -> None:
        """Block until any job or event changes (or timeout)."""
        with self._changed:
            self._changed.wait(timeout)
