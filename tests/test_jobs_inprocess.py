"""The jobs machinery in-process: a real Core, JobManager, device worker and SQLite store, with a
fake trainer injected at `run_training` (tests/jobs_fakes.py). No daemon process; each test
takes well under a second."""
from __future__ import annotations

import threading

import pytest

from jobs_fakes import FakeTrainer, job_doc, wait_until
from tunerd.core import Core
from tunerd.jobs.store import CANCELLED, FAILED, QUEUED, RUNNING, SUCCEEDED


@pytest.fixture
def trainer():
    return FakeTrainer()


@pytest.fixture
def core(tmp_path, trainer):
    c = Core(tmp_path, run_training=trainer)
    c.start()
    yield c
    trainer.gate.set()
    c.shutdown(5)


@pytest.fixture
def submit(core, tmp_path):
    model = tmp_path / "model"
    model.mkdir()
    return lambda **kw: core.submit(doc=job_doc(model, **kw), base_dir=str(tmp_path))


def state(core, job_id: str) -> str:
    return core.get_job(job_id).state


def wait_state(core, job_id: str, want: str) -> None:
    wait_until(lambda: state(core, job_id) == want, what=f"job {job_id} {want}")


def test_jobs_run_one_at_a_time_in_submit_order(core, trainer, submit):
    trainer.gate.clear()
    first = submit()
    assert trainer.waiting.wait(2)
    queued = [submit(), submit()]
    assert [core.get_job(j.id).queue_position for j in queued] == [1, 2]
    assert [state(core, j.id) for j in queued] == [QUEUED, QUEUED]
    trainer.gate.set()
    for j in queued:
        wait_state(core, j.id, SUCCEEDED)
    assert [name for name, _ in trainer.runs] == [first.id, *(j.id for j in queued)]


def test_cancel_while_queued_never_runs(core, trainer, submit):
    trainer.gate.clear()
    running = submit()
    assert trainer.waiting.wait(2)
    queued = submit()
    rec = core.cancel_job(queued.id)
    assert rec.state == CANCELLED and rec.queue_position == 0
    trainer.gate.set()
    wait_state(core, running.id, SUCCEEDED)
    assert queued.id not in [name for name, _ in trainer.runs]
    assert [e.payload["state"] for e in core.watch_job(queued.id, follow=False)] == [QUEUED, CANCELLED]


def test_cancel_while_running_checkpoints_and_the_record_shows_the_checkpoints_step(core, trainer, submit):
    """Steps are logged every 4; cancelled after step 6, the record says 6 (the checkpoint's
    step), not 4 (the last logged one)."""
    trainer.steps, trainer.log_every, trainer.hold_after = 20, 4, 6
    trainer.gate.clear()
    job = submit()
    assert trainer.waiting.wait(2)   # held before step 7
    assert core.get_job(job.id).step == 4
    assert core.cancel_job(job.id).state == RUNNING   # told to stop; it checkpoints first
    wait_state(core, job.id, CANCELLED)
    cancelled = next(e.payload for e in core.watch_job(job.id, follow=False) if e.kind == "Cancelled")
    assert cancelled["step"] == 6 and cancelled["checkpoint"].endswith("checkpoint-6")
    assert core.get_job(job.id).step == 6


def test_resume_continues_from_the_latest_checkpoint(core, trainer, submit):
    trainer.hold_after = 2
    trainer.gate.clear()
    job = submit()
    assert trainer.waiting.wait(2)
    core.cancel_job(job.id)
    wait_state(core, job.id, CANCELLED)
    trainer.gate.set()
    rec = core.resume_job(job.id)
    assert rec.state == QUEUED
    wait_state(core, job.id, SUCCEEDED)
    assert trainer.runs == [(job.id, None), (job.id, "latest")]
    reasons = [e.payload.get("reason") for e in core.watch_job(job.id, follow=False) if e.kind == "StateChanged"]
    assert "resumed from the latest checkpoint" in reasons
    started = [e.payload for e in core.watch_job(job.id, follow=False) if e.kind == "Started"]
    assert [s["resumed_from_step"] for s in started] == [0, 2]
    assert core.get_job(job.id).step == trainer.steps


def test_a_late_watcher_sees_every_event_a_live_one_saw(core, trainer, submit):
    trainer.gate.clear()
    job = submit()
    assert trainer.waiting.wait(2)
    live: list = []
    watcher = threading.Thread(target=lambda: live.extend(core.watch_job(job.id)))
    watcher.start()
    trainer.gate.set()
    watcher.join(5)
    assert not watcher.is_alive()
    late = list(core.watch_job(job.id))          # attaches after the end: the stored replay
    kinds = [e.kind for e in late]
    assert [e.seq for e in late] == list(range(1, len(late) + 1))
    assert [(e.seq, e.kind) for e in live] == [(e.seq, e.kind) for e in late]
    assert kinds[:3] == ["StateChanged", "StateChanged", "Started"] and kinds.count("Step") == trainer.steps
    assert kinds[-2:] == ["Finished", "StateChanged"] and late[-1].payload["state"] == SUCCEEDED
    assert [e.seq for e in core.watch_job(job.id, from_sequence=len(late) - 1)] == [len(late) - 1, len(late)]


def test_interactive_work_runs_between_steps_on_the_device_worker(core, trainer, submit):
    trainer.gate.clear()
    job = submit()
    assert trainer.waiting.wait(2)
    seen = core.worker.call(lambda: (threading.current_thread().name, state(core, job.id))).result(2)
    assert seen == ("device-worker", RUNNING)   # ran while the job was held between its steps


def test_a_bug_in_the_trainer_fails_the_job_naming_the_exception(core, trainer, submit):
    trainer.fail_with = TypeError("train() got an unexpected keyword argument 'x'")
    job = submit()
    wait_state(core, job.id, FAILED)
    assert core.get_job(job.id).error.startswith("TypeError: ")


def test_paths_in_a_submit_resolve_against_its_base_dir_with_home_expanded(core, tmp_path, monkeypatch):
    """The request's base dir (the client's cwd), not the daemon's cwd; `~` expanded in model:."""
    monkeypatch.setenv("HOME", str(tmp_path))
    model = tmp_path / "models" / "m"
    model.mkdir(parents=True)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)   # the daemon's cwd must not matter
    by_home = core.submit(doc=job_doc("~/models/m"), base_dir=str(elsewhere))
    by_base = core.submit(doc=job_doc("models/m"), base_dir=str(tmp_path))
    assert by_home.model == by_base.model == str(model)
    with pytest.raises(FileNotFoundError, match=str(elsewhere / "models" / "m")):   # (models/m: a hub id)
        core.submit(doc=job_doc("./models/m"), base_dir=str(elsewhere))
