"""Concurrent chat and completion requests decoded together (issue 21): one shared batch decoder
per (resident model, adapter), stepped on the device worker in turns.

Each request is a `Reply` handed to `Scheduler.submit` from its own thread (a gRPC or HTTP
handler). On the device worker a turn runs for up to SLICE_SECONDS: the replies that arrived
since join their batch (the backend's `decoder(adapter)`: backends own the decoding, this module
only the scheduling), the ones whose request was cancelled, ran past its deadline or lost its
client leave it (`remove(uid)`: that sequence only), and every batch takes one step (one forward
for all its sequences; a long prompt is read a time-sized chunk a step, as before). Then the turn
queues itself again behind the worker's other work, so a running training job keeps getting its
step between two turns, as it did between two chats' slices. A batch whose last sequence left is
closed (its memory freed).
"""
from __future__ import annotations

import logging
import sys
import threading
import time
from collections import deque
from contextlib import contextmanager
from typing import Callable, Optional

from .backends.generation import GenerationChunk, Sampling

log = logging.getLogger(__name__)

SLICE_SECONDS = 0.2  # decoding between two turns of the device worker (training steps, other work)


@contextmanager
def rng_untouched():
    """Chat runs between a job's training steps: whatever it draws (a model or adapter being
    initialised on load) must not move the global RNGs the job's dropout and shuffles use.
    Sampling itself uses its own generator (both backends); this restores the rest."""
    import random

    import numpy as np
    torch = sys.modules.get("torch")
    saved = (random.getstate(), np.random.get_state(), torch.random.get_rng_state() if torch else None,
             torch.cuda.get_rng_state_all() if torch and torch.cuda.is_initialized() else None)
    try:
        yield
    finally:
        random.setstate(saved[0])
        np.random.set_state(saved[1])
        if saved[2] is not None:
            torch.random.set_rng_state(saved[2])
        if saved[3] is not None:
            torch.cuda.set_rng_state_all(saved[3])


class Reply:
    """One request's sequence as the scheduler sees it. `resolve()` runs on the worker when it
    joins and gives (the resident's key, its Served: registry.Resident.serve); the scheduler calls
    `joined()` once, `chunk(c)` for each of its chunks and then `end()` (or `fail(error)`), all on
    the worker thread. `stop()` (any thread's word) is asked before every step."""

    def __init__(self, ids: list[int], sampling: Sampling, resolve: Callable, stop: Callable[[], bool]):
        self.ids, self.sampling, self.resolve, self.stop = list(ids), sampling, resolve, stop

    def joined(self) -> None:
        pass

    def chunk(self, c: GenerationChunk) -> None:
        pass

    def end(self) -> None:
        pass

    def fail(self, error: BaseException) -> None:
        pass


class _Batch:
    def __init__(self, key: tuple, served, resident_key):
        self.key, self.served, self.resident_key = key, served, resident_key
        self.decoder = served.decoder()
        self.replies: dict = {}   # uid -> Reply


class Scheduler:
    """The batches of the resident models (worker thread only) and the replies waiting to join
    them (any thread). `report(counts)` gets {resident key: sequences decoding} when it changes."""

    def __init__(self, worker, report: Callable[[dict], None] = lambda counts: None):
        self.worker, self.report = worker, report
        self._pending: deque = deque()
        self._lock = threading.Lock()
        self._queued = False
        self._batches: dict = {}
        self._counts: dict = {}
        self.active = 0   # sequences decoding now, all models (any thread reads it)
        self.peak = 0     # the most decoding together since the daemon started

    def submit(self, reply: Reply) -> None:
        """`reply` joins its batch at the next step."""
        self._pending.append(reply)
        self._queue()

    def _queue(self) -> None:
        with self._lock:
            if self._queued:
                return
            self._queued = True
        self.worker.later(self._turn)

    def _turn(self) -> None:
        """Up to SLICE_SECONDS of steps, then back in the worker's queue."""
        with self._lock:
            self._queued = False
        until = time.perf_counter() + SLICE_SECONDS
        try:
            with rng_untouched():
                while True:
                    self._admit()
                    self._drop_stopped()
                    if not self._batches:
                        break
                    for batch in list(self._batches.values()):
                        self._step(batch)
                    self._count()
                    if time.perf_counter() >= until:
                        break
        finally:
            self._count()
            if self._batches or self._pending:
                self._queue()

    def _admit(self) -> None:
        while self._pending:
            reply = self._pending.popleft()
            if reply.stop():   # cancelled, past its deadline or shutting down while it waited
                reply.end()
                continue
            try:
                resident_key, served = reply.resolve()
                key = (id(served.backend), served.adapter)
                batch = self._batches.get(key)
                if batch is None:
                    batch = self._batches[key] = _Batch(key, served, resident_key)
                uid = batch.decoder.add(reply.ids, reply.sampling)
            except BaseException as e:  # noqa: BLE001 - handed to the request's thread
                reply.fail(e)
                continue
            batch.replies[uid] = reply
            reply.joined()

    def _drop_stopped(self) -> None:
        for batch in list(self._batches.values()):
            for uid, reply in list(batch.replies.items()):
                if reply.stop():
                    del batch.replies[uid]
                    try:
                        reply.chunk(batch.decoder.remove(uid))
                    except BaseException as e:  # noqa: BLE001
                        self._fail(batch, e, [reply])
                        continue
                    reply.end()
            self._close_if_empty(batch)

    def _step(self, batch: _Batch) -> None:
        try:
            chunks = batch.decoder.step()
        except BaseException as e:  # noqa: BLE001 - every sequence of this batch fails with it
            self._fail(batch, e, list(batch.replies.values()))
            return
        for uid, c in chunks:
            reply = batch.replies.get(uid)
            if reply is None:
                continue
            reply.chunk(c)
            if c.finish_reason:
                del batch.replies[uid]
                reply.end()
        self._close_if_empty(batch)

    def _fail(self, batch: _Batch, error: BaseException, replies: list) -> None:
        log.warning("a batch of %d sequences failed: %s", len(replies), error)
        for r in replies:
            r.fail(error)
        batch.replies.clear()
        self._close(batch)

    def _close_if_empty(self, batch: _Batch) -> None:
        if not batch.replies:
            self._close(batch)

    def _close(self, batch: _Batch) -> None:
        if self._batches.pop(batch.key, None) is None:
            return
        try:
            batch.decoder.close()
        except Exception:  # noqa: BLE001 - its replies are already answered
            log.exception("closing a batch decoder failed")

    def _count(self) -> None:
        counts: dict = {}
        for batch in self._batches.values():
            counts[batch.resident_key] = counts.get(batch.resident_key, 0) + len(batch.replies)
        if counts != self._counts:
            self._counts = counts
            self.active = sum(counts.values())
            self.peak = max(self.peak, self.active)
            try:
                self.report(dict(counts))
            except Exception:  # noqa: BLE001 - a status, not the work
                log.exception("reporting active sequences failed")
