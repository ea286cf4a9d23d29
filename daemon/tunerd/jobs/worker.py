"""The device worker: one thread that owns every model and backend (DESIGN.md §6).

MLX streams are thread-local, so loading, training and generation all happen on this thread.
gRPC handlers only put work on its queues and read results. Two kinds of work:
- jobs (training): one at a time, in order, taken from the job manager (`take_jobs_from`);
- interactive tasks (chat, evaluate, model load/unload, fuse): run as soon as possible, also
  *between training steps*: the job runner's step hook calls `serve_interactive` explicitly
  (jobs/runner.py), apart from the job's stop check, so chat stays responsive while a job trains.

`Core` makes the one worker and hands it to the job manager, chat and the model registry.
"""
from __future__ import annotations

import logging
import queue
import threading
import time
from concurrent.futures import Future
from typing import Callable, Optional

log = logging.getLogger(__name__)


class DeviceWorker:
    def __init__(self, on_idle: Callable[[], None] = lambda: None):
        """`on_idle()` runs when there is nothing to do (e.g. evict models past their keep-alive)."""
        self._next_job: Callable[[], Optional[Callable[[], None]]] = lambda: None
        self.on_idle = on_idle
        self._interactive: "queue.Queue[tuple[Callable, Future]]" = queue.Queue()
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="device-worker", daemon=True)

    def take_jobs_from(self, next_job: Callable[[], Optional[Callable[[], None]]]) -> None:
        """`next_job()` returns the next training job to run (a callable) or None (the job manager's)."""
        self._next_job = next_job

    def start(self) -> None:
        self._thread.start()

    def wake(self) -> None:
        self._wake.set()

    def stop(self, timeout: float = 30.0) -> None:
        self._stopping.set()
        self._wake.set()
        if self._thread.ident is not None:  # started
            self._thread.join(timeout)

    @property
    def on_worker_thread(self) -> bool:
        return threading.current_thread() is self._thread

    def call(self, fn: Callable):
        """Run `fn` on the worker thread and return a Future of its result."""
        fut: Future = Future()
        if self.on_worker_thread:
            self._run_task(fn, fut)
        else:
            self._interactive.put((fn, fut))
            self._wake.set()
        return fut

    def later(self, fn: Callable) -> Future:
        """Queue `fn` for the worker's next round even when called on the worker thread: a
        long task (a chat) runs in slices that re-queue themselves, so training steps and
        other tasks get their turn in between."""
        fut: Future = Future()
        self._interactive.put((fn, fut))
        self._wake.set()
        return fut

    def serve_interactive(self) -> None:
        """The interactive-work point: run the interactive tasks queued so far. Called between
        jobs (here) and between a job's training steps (the job runner's step hook, jobs/runner.py),
        on this thread only; tasks they queue wait for the next round."""
        if not self.on_worker_thread:
            raise RuntimeError("serve_interactive runs on the device worker thread only")
        for _ in range(self._interactive.qsize()):
            try:
                fn, fut = self._interactive.get_nowait()
            except queue.Empty:
                return
            self._run_task(fn, fut)

    @staticmethod
    def _run_task(fn: Callable, fut: Future) -> None:
        if not fut.set_running_or_notify_cancel():
            return
        try:
            fut.set_result(fn())
        except BaseException as e:  # delivered to the caller
            fut.set_exception(e)

    def _loop(self) -> None:
        while not self._stopping.is_set():
            self.serve_interactive()
            job = None if self._stopping.is_set() else self._next_job()
            if job is not None:
                try:
                    job()
                except Exception:  # the job runner records its own failures
                    log.exception("job runner crashed")
                continue
            try:
                self.on_idle()
            except Exception:  # noqa: BLE001 - housekeeping must not kill the worker
                log.exception("idle hook failed")
            self._wake.wait(0.5)
            self._wake.clear()
        deadline = time.monotonic() + 5.0  # tasks still queued finish (chats end at once on shutdown)
        while not self._interactive.empty() and time.monotonic() < deadline:
            self.serve_interactive()

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()
