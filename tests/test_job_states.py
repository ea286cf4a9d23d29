"""Job state transitions under concurrency (issue 9, finding 1): a real JobManager and a real
SQLite store, with a fake trainer at the seam so a burst of jobs takes milliseconds."""
from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from jobs_fakes import FakeTrainer
from tunerd.config.loader import from_dict
from tunerd.jobs.manager import JobManager, JobStateError
from tunerd.jobs.store import CANCELLED, FINAL_STATES, QUEUED, RUNNING, SUCCEEDED, JobStore
from tunerd.jobs.worker import DeviceWorker

STEPS = 5


@pytest.fixture
def manager(tmp_path):
    trainer = FakeTrainer(steps=STEPS, step_seconds=0.001)
    store = JobStore(tmp_path / "jobs.db")
    worker = DeviceWorker()
    m = JobManager(store, tmp_path / "runs", worker, trainer)
    m.runs = trainer.runs
    worker.start()
    yield m
    m.shutdown()
    worker.stop(10)
    store.close()


CFG = from_dict({"model": "m", "data": {"train": "t.jsonl"}, "max_steps": STEPS})


def check_history(store: JobStore, job_id: str) -> str:
    """One final state, reached once, with no events after it; returns that state."""
    events = store.events(job_id, 0, limit=10_000)
    states = [e.payload["state"] for e in events if e.kind == "StateChanged"]
    finals = [i for i, e in enumerate(events) if e.kind == "StateChanged" and e.payload["state"] in FINAL_STATES]
    assert len(finals) == 1, (job_id, states)
    assert finals[0] == len(events) - 1, (job_id, [e.kind for e in events])
    final = states[-1]
    assert store.get(job_id).state == final
    kinds = [e.kind for e in events]
    if final == SUCCEEDED:
        assert states == [QUEUED, RUNNING, SUCCEEDED] and kinds.count("Finished") == 1
        assert kinds.count("Step") == STEPS
    else:
        assert final == CANCELLED, states
        assert states in ([QUEUED, CANCELLED], [QUEUED, RUNNING, CANCELLED]), states
        assert "Finished" not in kinds
    return final


def test_bursts_of_submits_and_cancels_end_in_one_final_state(manager):
    """10 bursts of 30 parallel submits + 30 parallel cancels: each job is cancelled or runs to
    completion exactly once, and nothing is recorded after its final state."""
    all_ids = []
    with ThreadPoolExecutor(16) as pool:
        for _ in range(10):
            ids = list(pool.map(lambda i: manager.submit(CFG, name=f"j{i}").id, range(30)))
            list(pool.map(manager.cancel, ids))
            all_ids += ids
    deadline = time.time() + 30
    while time.time() < deadline and any(manager.store.get(i).state not in FINAL_STATES for i in all_ids):
        time.sleep(0.05)
    finals = [check_history(manager.store, i) for i in all_ids]
    assert set(finals) <= {CANCELLED, SUCCEEDED}
    # a run started at most once per job, and only for jobs that left the queue as running
    started = [i for i in all_ids if RUNNING in [e.payload["state"] for e in manager.store.events(i, 0)
                                                 if e.kind == "StateChanged"]]
    assert len(manager.runs) == len(started) == len(set(manager.runs))
    # the queue is not blocked: a new job still runs to completion
    j = manager.submit(CFG)
    deadline = time.time() + 10
    while time.time() < deadline and manager.store.get(j.id).state not in FINAL_STATES:
        time.sleep(0.02)
    assert check_history(manager.store, j.id) == SUCCEEDED


@pytest.mark.parametrize("cancel_lands", ["before the job starts", "after it starts"])
def test_cancel_racing_the_worker_start_cancels_the_job(manager, cancel_lands):
    """The worker has dequeued a job when cancel arrives (the race of finding 1): either the
    cancel wins and the job never trains, or the job started and its stop flag cancels it;
    never 'cancelled' on the record while it trains on to 'succeeded'."""
    gate, proceed = threading.Event(), threading.Event()
    original = manager.store.transition

    def slow_transition(job_id, expected, state, reason, **fields):
        if state != RUNNING:
            return original(job_id, expected, state, reason, **fields)
        ok = original(job_id, expected, state, reason, **fields) if cancel_lands != "before the job starts" else None
        gate.set()  # the worker has taken the job: hold it here while cancel runs
        proceed.wait(5)
        return ok if ok is not None else original(job_id, expected, state, reason, **fields)

    manager.store.transition = slow_transition
    j = manager.submit(CFG)
    assert gate.wait(5)
    t = threading.Thread(target=manager.cancel, args=(j.id,))
    t.start()
    t.join(5)
    proceed.set()
    deadline = time.time() + 10
    while time.time() < deadline and manager.store.get(j.id).state not in FINAL_STATES:
        time.sleep(0.02)
    assert check_history(manager.store, j.id) == CANCELLED
    assert len(manager.runs) == (0 if cancel_lands == "before the job starts" else 1)


def test_resume_is_compare_and_set(manager):
    j = manager.submit(CFG)
    deadline = time.time() + 10
    while time.time() < deadline and manager.store.get(j.id).state != SUCCEEDED:
        time.sleep(0.02)
    with pytest.raises(JobStateError):
        manager.resume(j.id)
    assert not manager.store.transition(j.id, (QUEUED, RUNNING), CANCELLED, "late")
    assert manager.store.get(j.id).state == SUCCEEDED


@pytest.mark.slow
def test_burst_of_submits_and_cancels_through_the_real_daemon(demo_bundle, tmp_path):
    """Finding 1 as it was found: 30 parallel SubmitJob + 30 parallel CancelJob over the real
    socket; every job ends cancelled or succeeded once, nothing after its final state, and the
    queue still runs a job afterwards."""
    from tuner.v1 import tuner_pb2 as pb

    from daemon_utils import DaemonProcess, short_home, wait_for, write_config

    home = short_home()
    cfg = write_config(tmp_path / "c.yaml", demo_bundle, max_steps=3, save_steps=100, eval_steps=100)
    d = DaemonProcess(home).start()
    try:
        stub = d.stub()
        submit = lambda i: stub.SubmitJob(pb.SubmitJobRequest(config_path=str(cfg), name=f"b{i}")).id  # noqa: E731
        with ThreadPoolExecutor(30) as pool:
            ids = list(pool.map(submit, range(30)))
            list(pool.map(lambda j: stub.CancelJob(pb.CancelJobRequest(job_id=j)), ids))
        final = {"SUCCEEDED", "CANCELLED", "FAILED", "INTERRUPTED"}
        state = lambda j: pb.JobState.Name(stub.GetJob(pb.GetJobRequest(job_id=j)).state)  # noqa: E731
        wait_for(lambda: all(state(j) in final for j in ids), timeout=120, what="every job final")
        for j in ids:
            events = list(stub.WatchJob(pb.WatchJobRequest(job_id=j, from_sequence=1, follow=False), timeout=30))
            kinds = [e.WhichOneof("event") for e in events]
            states = [e.state_changed.state for e in events if e.WhichOneof("event") == "state_changed"]
            names = [pb.JobState.Name(s) for s in states]
            assert sum(n in final for n in names) == 1 and names[-1] in final and kinds[-1] == "state_changed", \
                (j, kinds, names)
            assert names[-1] in ("CANCELLED", "SUCCEEDED"), names
            assert kinds.count("finished") == (names[-1] == "SUCCEEDED")
        after = stub.SubmitJob(pb.SubmitJobRequest(config_path=str(cfg))).id
        wait_for(lambda: state(after) in final, timeout=60, what="a job after the burst")
        assert state(after) == "SUCCEEDED"
    finally:
        d.stop()
