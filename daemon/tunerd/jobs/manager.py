"""Training jobs: submit, queue, run on the device worker, cancel, resume, watch.

Knows nothing of gRPC; takes full job ids (Core resolves prefixes and `latest`: jobs/refs.py).
The device worker is Core's (jobs/worker.py); the manager feeds it jobs. The thing that actually
trains is a collaborator, `run_training(cfg, emit, should_stop, base_dir, job_id=,
serve_interactive=)`, by default `tunerd.jobs.runner.run_training`. Its contract: emit events
(training/events.py); between steps call `serve_interactive()` (the worker's interactive-work
point: chat, evaluate and loads run there while the job trains) and `should_stop()` (only the
stop check: cancelled, or the daemon shutting down); return an object with `adapter_path`; raise
`TrainingCancelled(step, checkpoint)` once `should_stop()` said yes (any other exception fails the job).
"""
from __future__ import annotations

import dataclasses
import json
import logging
import threading
import time
from collections import deque
from pathlib import Path
from typing import Callable, Iterator, Optional

from ..config.loader import from_record, to_dict
from ..config.schema import TrainConfig
from ..disk import NoSpace
from ..files import OutputRefused, claim_dir
from ..training import events as ev
from ..training.loop import TrainingCancelled
from ..training.memory import DoesNotFit
from ..training.outputs import JOB_FOLDER
from .store import (CANCELLED, FAILED, FINAL_STATES, INTERRUPTED, QUEUED, RESUMABLE_STATES, RUNNING,
                    SUCCEEDED, JobRecord, JobStore, StoredEvent)
from .worker import DeviceWorker

log = logging.getLogger(__name__)
# a person's mistake or the machine's limits (bad data or config, a missing file, the hub out of
# reach, memory, disk): logged as one line; anything else is a bug, logged with its traceback
USER_ERRORS = (ValueError, FileNotFoundError, PermissionError, ConnectionError, MemoryError, NoSpace)


class JobStateError(ValueError):
    """An operation that the job's current state does not allow (e.g. resume a running job)."""


class JobManager:
    def __init__(self, store: JobStore, runs_dir: Path, worker: DeviceWorker,
                 run_training: Optional[Callable] = None):
        if run_training is None:
            from .runner import run_training
        self.store = store
        self.runs_dir = Path(runs_dir)
        self._run_training = run_training
        self._queue: deque[str] = deque()
        self._lock = threading.Lock()
        self._cancel: dict[str, threading.Event] = {}
        self._interrupting = threading.Event()
        self.worker = worker
        worker.take_jobs_from(self._next_job)
        for rec in sorted(store.list(states=[QUEUED]), key=lambda r: r.created_at):
            self._queue.append(rec.id)

    # -- API ----------------------------------------------------------------------------------
    def submit(self, cfg: TrainConfig, name: str = "", base_dir: str = "") -> JobRecord:
        """Queue a job; its output folder (cfg.output_dir, else runs/<id>) is made and marked as
        the job's (files.claim_dir). The caller checked that no other job owns it (jobs/folders.py)."""
        rec = self.store.create(to_dict(cfg), name=name, base_dir=base_dir)
        out = cfg.output_dir or str(self.runs_dir / rec.id)
        cfg = dataclasses.replace(cfg, output_dir=str(Path(out).expanduser()))
        rec = self.store.update(rec.id, config_json=json.dumps(to_dict(cfg)), output_dir=cfg.output_dir)
        try:
            claim_dir(cfg.output_dir, JOB_FOLDER, rec.id)
        except (OutputRefused, OSError) as e:   # changed since the caller's check: the job never runs
            self.store.transition(rec.id, (QUEUED,), FAILED, f"output_dir: {e}", finished_at=time.time(),
                                  error=f"output_dir: {e}")
            raise OutputRefused(f"output_dir: {e}") from None
        self.store.append(rec.id, "StateChanged", {"state": QUEUED, "reason": "submitted"})
        self._enqueue(rec.id)
        return self.store.get(rec.id)

    def cancel(self, job_id: str) -> JobRecord:
        """A queued job becomes cancelled at once; a running one is told to stop (it checkpoints
        and becomes cancelled); a finished one is left as it is. The state changes only by
        compare-and-set, so a worker that dequeues the job at the same moment cannot also run it."""
        with self._lock:
            if job_id in self._queue:
                self._queue.remove(job_id)
            # set before the compare-and-set: a worker that wins the race and starts the job
            # sees the request at its first stop-check
            flag = self._cancel.setdefault(job_id, threading.Event())
            flag.set()
        if self.store.transition(job_id, (QUEUED,), CANCELLED, "cancelled while queued",
                                 finished_at=time.time(), error="cancelled while queued"):
            with self._lock:
                self._cancel.pop(job_id, None)
        elif self.store.get(job_id).state in FINAL_STATES:
            with self._lock:  # already final: nothing to stop
                if self._cancel.get(job_id) is flag:
                    self._cancel.pop(job_id, None)
        return self.store.get(job_id)

    def resume(self, job_id: str) -> JobRecord:
        rec = self.store.get(job_id)
        if rec.state not in RESUMABLE_STATES:
            raise JobStateError(f"job {job_id} is {rec.state}; only {', '.join(RESUMABLE_STATES)} jobs resume")
        cfg = rec.config
        if rec.output_dir and Path(rec.output_dir).is_dir():   # a folder from before markers: the store says whose
            claim_dir(rec.output_dir, JOB_FOLDER, job_id, adopt=True)
        has_ckpt = any(Path(rec.output_dir).glob("checkpoint-*")) if rec.output_dir else False
        cfg["resume_from_checkpoint"] = "latest" if has_ckpt else None
        reason = ("resumed from the latest checkpoint" if has_ckpt
                  else "restarted from the beginning (no checkpoint was saved)")
        with self._lock:
            self._cancel.pop(job_id, None)
        if not self.store.transition(job_id, RESUMABLE_STATES, QUEUED, reason, error="", finished_at=0.0,
                                     config_json=json.dumps(cfg)):
            raise JobStateError(f"job {job_id} is {self.store.get(job_id).state}; "
                                f"only {', '.join(RESUMABLE_STATES)} jobs resume")
        self._enqueue(job_id)
        return self.store.get(job_id)

    def queue_position(self, job_id: str) -> int:
        with self._lock:
            return self._queue.index(job_id) + 1 if job_id in self._queue else 0

    def watch(self, job_id: str, from_sequence: int = 0, follow: bool = True,
              is_active: Callable[[], bool] = lambda: True) -> Iterator[StoredEvent]:
        """Stored events from `from_sequence`, then live ones until the job reaches a final state."""
        self.store.get(job_id)  # raises JobNotFound
        seq = max(from_sequence, 1)
        while is_active():
            batch = self.store.events(job_id, seq)
            for e in batch:
                yield e
                seq = e.seq + 1
            if batch:
                continue
            if not follow or self.store.get(job_id).state in FINAL_STATES:
                # final state reached and every event up to it was delivered
                if not self.store.events(job_id, seq, limit=1):
                    return
                continue
            self.store.wait_for_change(0.5)

    def shutdown(self) -> None:
        """Stop taking work; the running job checkpoints at its next step and becomes interrupted
        (the worker's owner then stops the worker, which waits for that)."""
        self._interrupting.set()
        with self._lock:
            self._queue.clear()
        self.worker.wake()

    # -- worker side -----------------------------------------------------------------------------
    def _enqueue(self, job_id: str) -> None:
        with self._lock:
            self._queue.append(job_id)
        self.worker.wake()

    def _next_job(self) -> Optional[Callable[[], None]]:
        with self._lock:
            if self._interrupting.is_set() or not self._queue:
                return None
            job_id = self._queue.popleft()
        return lambda: self._run(job_id)

    def _should_stop(self, job_id: str) -> Callable[[], bool]:
        """The job's stop check (the loop's `should_stop`): cancelled, or the daemon is shutting
        down. Nothing else: the interactive work between steps is the runner's own call."""
        cancelled = self._cancel_flag(job_id)
        return lambda: self._interrupting.is_set() or cancelled.is_set()

    def _cancel_flag(self, job_id: str) -> threading.Event:
        with self._lock:
            return self._cancel.setdefault(job_id, threading.Event())

    def _record(self, job_id: str, event) -> None:
        kind, payload = ev.to_record(event)
        self.store.append(job_id, kind, payload)
        if isinstance(event, ev.Started):
            self.store.update(job_id, backend=event.backend, total_steps=event.total_steps)
        elif isinstance(event, ev.Step):
            self.store.update(job_id, step=event.step, last_loss=event.loss)
        elif isinstance(event, ev.Eval):
            best = self.store.get(job_id).best_eval_loss
            if best == 0 or event.eval_loss < best:
                self.store.update(job_id, best_eval_loss=event.eval_loss)
        elif isinstance(event, ev.Finished):
            self.store.update(job_id, step=event.steps)

    def _run(self, job_id: str) -> None:
        try:
            if not self.store.transition(job_id, (QUEUED,), RUNNING, "started", started_at=time.time()):
                return  # cancelled (or otherwise finished) before it could start
        except NoSpace as e:   # the home's disk is full: the job fails instead of staying queued
            self._failed(job_id, e, expected=(QUEUED,))
            return
        rec = self.store.get(job_id)
        try:
            cfg = from_record(rec.config)   # validated once, at submit
            result = self._run_training(cfg, lambda e: self._record(job_id, e), self._should_stop(job_id),
                                        rec.base_dir or None, job_id=job_id,
                                        serve_interactive=self.worker.serve_interactive)
            # the loop emitted Finished
            self._finish(job_id, SUCCEEDED, reason="finished", adapter_path=result.adapter_path)
        except TrainingCancelled as e:
            cancelled = ev.Cancelled(step=e.step, checkpoint=str(e.checkpoint or ""))
            # steps are logged every logging_steps; the checkpoint written on cancel is the step to show
            step = {"step": e.step} if e.step else {}
            if self._interrupting.is_set():
                self._finish(job_id, INTERRUPTED, reason="the daemon is shutting down; "
                             "resume with `tunerctl jobs resume`", event=cancelled, **step)
            else:
                self._finish(job_id, CANCELLED, reason="cancelled by request", event=cancelled, **step)
        except Exception as e:  # noqa: BLE001 - every failure becomes a recorded state
            if isinstance(e, USER_ERRORS):   # the job's reason says it all: no traceback in the log
                log.warning("job %s failed: %s", job_id, _describe(e))
            else:
                log.exception("job %s failed", job_id)
            self._failed(job_id, e)
        finally:
            with self._lock:
                self._cancel.pop(job_id, None)

    def _failed(self, job_id: str, e: BaseException, expected: tuple = (RUNNING,)) -> None:
        reason = _describe(e)
        if isinstance(e, NoSpace):
            reason += f"; free space there, then resume the job with `tunerctl jobs resume {job_id}`"
        self._finish(job_id, FAILED, reason=reason, error=reason, expected=expected,
                     event=ev.Failed(reason=reason, step=self.store.get(job_id).step))

    def _finish(self, job_id: str, state: str, reason: str, error: str = "", event=None,
                expected: tuple = (RUNNING,), **fields) -> None:
        """running -> a final state, once: its event (Failed, Cancelled) and StateChanged commit
        with the state (or, the disk full, are kept until they can be: JobStore.transition)."""
        fields["finished_at"] = time.time()
        if error or state != SUCCEEDED:
            fields["error"] = error or reason
        events = [ev.to_record(event)] if event is not None else []
        if not self.store.transition(job_id, expected, state, reason, events=events, **fields):
            log.error("job %s: %s -> %s refused (state changed underneath)", job_id,
                      self.store.get(job_id).state, state)


def _describe(e: BaseException) -> str:
    msg = str(e) or type(e).__name__
    if isinstance(e, (DoesNotFit, NoSpace)):   # already say what fits / what is full (memory.py, disk.py)
        return msg
    if isinstance(e, MemoryError):
        return f"out of memory: {msg}. Try a smaller per_device_train_batch_size or max_seq_length, " \
               "gradient_checkpointing: true, or quantization: 4bit"
    if isinstance(e, (KeyError,)) and e.args:
        return f"{type(e).__name__}: {e.args[0]}"
    return msg if isinstance(e, (ValueError, FileNotFoundError, RuntimeError)) else f"{type(e).__name__}: {msg}"
