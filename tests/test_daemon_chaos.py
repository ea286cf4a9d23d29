"""Crash recovery through the real daemon (issue 9, finding 9 and the chaos test): the daemon is
SIGKILLed at random moments, once in the middle of writing a checkpoint, restarted and the job
resumed each time; it ends with the per-step losses of an uninterrupted run, and start-up
removes the half-written checkpoint folders the kills left. No event is lost, and the last resume
runs through `tunerctl jobs resume`."""
from __future__ import annotations

import json
import os
import random
import signal
import time

import pytest
from tuner.v1 import tuner_pb2 as pb

from daemon_utils import DaemonProcess, cli, job_state, json_lines, short_home, wait_for, write_config

pytestmark = pytest.mark.slow

STEPS = 40


def step_losses(output_dir) -> dict[int, float]:
    recs = [json.loads(line) for line in (output_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    steps = [r for r in recs if r["type"] == "train"]
    assert len(steps) == len({r["step"] for r in steps}), "a step recorded twice"
    return {r["step"]: r["loss"] for r in steps}


def kill_mid_checkpoint(d: DaemonProcess, out, timeout: float = 60) -> bool:
    """SIGKILL the daemon while a `.tmp-checkpoint-*` folder exists (polled every ~0.2 ms)."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            names = os.listdir(out)
        except FileNotFoundError:
            names = []
        if any(n.startswith(".tmp-checkpoint-") for n in names):
            d.signal(signal.SIGKILL)
            return True
        time.sleep(0.0002)
    return False


def test_sigkill_five_times_then_resume_matches_an_uninterrupted_run(demo_bundle, tmp_path):
    seed = int(os.environ.get("CHAOS_SEED", random.randrange(1 << 30)))
    rng = random.Random(seed)
    print(f"chaos seed {seed} (rerun with CHAOS_SEED={seed})")
    home = short_home()
    cfg = write_config(tmp_path / "chaos.yaml", demo_bundle, max_steps=STEPS, save_steps=2, logging_steps=1,
                       eval_steps=100000, save_total_limit=3)
    d = DaemonProcess(home).start()
    stub = d.stub()
    alone = json_lines(cli(home, "train", str(cfg), "--json", check=True).stdout)[0]["job_id"]
    expected = step_losses(home / "runs" / alone)
    assert sorted(expected) == list(range(1, STEPS + 1))

    job_id = json_lines(cli(home, "train", str(cfg), "--detach", "--json", check=True).stdout)[0]["id"]
    out = home / "runs" / job_id
    mid_checkpoint_kill = rng.randrange(5)
    killed_mid_write = False
    try:
        for i in range(5):
            before = stub.GetJob(pb.GetJobRequest(job_id=job_id)).last_sequence
            if i == mid_checkpoint_kill:
                killed_mid_write = kill_mid_checkpoint(d, out)
            else:
                at = stub.GetJob(pb.GetJobRequest(job_id=job_id)).step + rng.randint(1, 5)
                wait_for(lambda: stub.GetJob(pb.GetJobRequest(job_id=job_id)).step >= at, interval=0.01,
                         what=f"step {at}")
                time.sleep(rng.uniform(0, 0.1))  # anywhere inside the step, or the checkpoint after it
                d.signal(signal.SIGKILL)
            d.wait(30)
            d = DaemonProcess(home).start()
            stub = d.stub()
            rec = stub.GetJob(pb.GetJobRequest(job_id=job_id))
            assert pb.JobState.Name(rec.state) == "INTERRUPTED"
            assert rec.last_sequence >= before   # no event lost
            if i < 4:
                stub.ResumeJob(pb.ResumeJobRequest(job_id=job_id))
        # the last resume through the CLI, which follows the job to its end
        p = cli(home, "jobs", "resume", job_id, "--json")
        assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-2000:]
        started = [e["started"] for e in json_lines(p.stdout) if "started" in e]
        assert started and int(started[-1].get("resumed_from_step", 0)) > 0
        assert job_state(stub, job_id) == "succeeded"
        assert killed_mid_write, "no checkpoint write was caught in the act"
        assert step_losses(out) == expected
        assert not [p for p in out.iterdir() if p.name.startswith((".tmp-", ".old-"))]
        log = (home / "tunerd.log").read_text()
        assert f"job {job_id}: removed {out}/.tmp-checkpoint-" in log  # finding 9, said in the log
    finally:
        d.stop()


def test_startup_removes_stale_temporaries_of_jobs_not_running(demo_bundle, tmp_path):
    """A `.tmp-checkpoint-N-PID-RANDOM` folder (a kill mid-write: our marker, a dead pid) in a
    finished job's output dir is removed when the daemon starts, and the log says so; complete
    checkpoints stay, and so does a `.tmp-*` folder MacTuner cannot prove its own (issue 16)."""
    home = short_home()
    cfg = write_config(tmp_path / "c.yaml", demo_bundle, max_steps=4, save_steps=2, eval_steps=100000)
    d = DaemonProcess(home).start()
    try:
        job_id = json_lines(cli(home, "train", str(cfg), "--json", check=True).stdout)[0]["job_id"]
    finally:
        d.stop()
    out = home / "runs" / job_id
    stale = out / ".tmp-checkpoint-6-99999-0a1b2c"
    stale.mkdir()
    (stale / ".tunerd-output.json").write_text('{"temporary": true, "kind": "checkpoint", "pid": 99999}')
    (stale / "adapters.safetensors").write_bytes(b"half")
    users = out / ".tmp-checkpoint-7-99999"
    users.mkdir()
    (users / "notes.txt").write_text("mine")
    kept = sorted(p.name for p in out.iterdir() if p.name.startswith("checkpoint-"))
    d = DaemonProcess(home).start()
    try:
        assert not stale.exists() and (users / "notes.txt").read_text() == "mine"
        assert sorted(p.name for p in out.iterdir() if p.name.startswith("checkpoint-")) == kept and kept
        assert f"removed {stale}" in (home / "tunerd.log").read_text()
    finally:
        d.stop()
