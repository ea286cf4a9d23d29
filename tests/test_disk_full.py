"""A full disk (issue 16, finding 6), on a small tmpfs, through the real daemon and CLI.

Home full (jobs.db on the tmpfs): the running job fails with "no space left on tmpfs at HOME while
writing HOME/jobs.db (needs ~N MB, M MB free)" instead of staying RUNNING for ever; cancel and
resume answer (resume says there is no room); once the filler is deleted the kept state change
is written without a restart and the job resumes. Output full (output_dir on the tmpfs): the job
fails naming the checkpoint it could not write, not with a library's "unexpected pos"; resumed
after freeing space, it finishes.

Needs root to mount a tmpfs (CI runs as root); skipped, saying so, where mounting is impossible.
"""
from __future__ import annotations

import contextlib
import errno
import os
import re
import sqlite3
import subprocess
from pathlib import Path

import pytest
from tuner.v1 import tuner_pb2 as pb

from daemon_utils import DaemonProcess, cli, job_state, json_lines, short_home, wait_for, write_config

pytestmark = pytest.mark.slow


@contextlib.contextmanager
def small_tmpfs(path: Path, size: str):
    path.mkdir(parents=True, exist_ok=True)
    p = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs", str(path)],
                       capture_output=True, text=True)
    if p.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root): {p.stderr.strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], capture_output=True)


def fill(folder: Path, leave: int = 0) -> Path:
    """A filler file that takes all of `folder`'s free space but about `leave` bytes."""
    filler = folder / "filler"
    chunk = b"\0" * (64 << 10)
    with open(filler, "wb", buffering=0) as f:
        while os.statvfs(folder).f_bavail * os.statvfs(folder).f_frsize > leave + len(chunk):
            try:
                f.write(chunk)
            except OSError as e:
                assert e.errno == errno.ENOSPC
                break
    return filler


def get(stub, job_id: str):
    return stub.GetJob(pb.GetJobRequest(job_id=job_id))


def kinds(stub, job_id: str) -> list:
    return [(e.WhichOneof("event"), e) for e in stub.WatchJob(pb.WatchJobRequest(job_id=job_id, follow=False))]


def test_home_full_fails_the_job_then_recovers_without_a_restart(demo_bundle, tmp_path):
    home = short_home()
    with small_tmpfs(home, "16m"):
        cfg = write_config(tmp_path / "long.yaml", demo_bundle, max_steps=100000, save_steps=3, logging_steps=1,
                           eval_steps=100000, output_dir=str(tmp_path / "out"))
        d = DaemonProcess(home).start()
        try:
            stub = d.stub()
            job_id = json_lines(cli(home, "train", str(cfg), "--detach", "--json", check=True).stdout)[0]["id"]
            wait_for(lambda: get(stub, job_id).step >= 4, what="a checkpoint")
            filler = fill(home)
            wait_for(lambda: job_state(stub, job_id) == "failed", timeout=120, what="the job failing")
            error = get(stub, job_id).error
            print("home full:", error)
            assert f"no space left on tmpfs at {home} while writing {home / 'jobs.db'}" in error, error
            assert "MB free" in error and "needs ~" in error and f"tunerctl jobs resume {job_id}" in error, error

            # the CLI answers: cancel leaves the failed job as it is, resume says why it cannot yet
            p = cli(home, "jobs", "cancel", job_id)
            assert p.returncode == 0 and "failed" in p.stdout, p.stdout + p.stderr
            p = cli(home, "jobs", "resume", job_id, "--detach")
            assert p.returncode != 0 and "no space left on" in p.stdout + p.stderr, p.stdout + p.stderr
            p = cli(home, "jobs", "list", "--json", check=True)
            assert json_lines(p.stdout)[0]["state"] == "failed"

            filler.unlink()   # room again: the kept change is written within seconds, no restart
            db = sqlite3.connect(f"file:{home / 'jobs.db'}?mode=ro", uri=True)
            wait_for(lambda: db.execute("SELECT state FROM jobs WHERE id = ?", (job_id,)).fetchone()[0] == "failed",
                     timeout=30, what="the failed state written to jobs.db")
            db.close()
            failed = [e for k, e in kinds(stub, job_id) if k == "failed"]
            assert len(failed) == 1 and "no space left on" in failed[0].failed.reason

            resumed_at = get(stub, job_id).step
            p = cli(home, "jobs", "resume", job_id, "--detach", "--json", check=True)
            assert json_lines(p.stdout)[0]["state"] == "queued"
            wait_for(lambda: get(stub, job_id).step > resumed_at + 2, what="steps after the resume")
            assert job_state(stub, job_id) == "running"
            cli(home, "jobs", "cancel", job_id, check=True)
            wait_for(lambda: job_state(stub, job_id) == "cancelled", what="cancelled")
        finally:
            d.stop()


@pytest.mark.parametrize("backend", ["torch", "mlx"])
def test_output_full_fails_naming_the_checkpoint_then_resumes(demo_bundle, tmp_path, backend):
    home = short_home()
    with small_tmpfs(tmp_path / "small", "8m") as small:
        out = small / "run"
        cfg = write_config(tmp_path / "job.yaml", demo_bundle, backend=backend, max_steps=40, save_steps=4,
                           logging_steps=1, eval_steps=100000, output_dir=str(out))
        d = DaemonProcess(home).start()
        try:
            stub = d.stub()
            job_id = json_lines(cli(home, "train", str(cfg), "--detach", "--json", check=True).stdout)[0]["id"]
            wait_for(lambda: (out / "checkpoint-4").exists(), what="the first checkpoint")
            filler = fill(small, leave=96 << 10)   # room for metrics lines, not for a checkpoint
            wait_for(lambda: job_state(stub, job_id) in ("failed", "succeeded"), timeout=120, what="the job failing")
            rec = get(stub, job_id)
            print("output full:", rec.error)
            assert job_state(stub, job_id) == "failed", rec
            m = re.search(rf"no space left on tmpfs at {re.escape(str(small))} while writing "
                          rf"{re.escape(str(out))}/checkpoint-(\d+) \(needs ~0\.\d MB, 0\.\d MB free\)", rec.error)
            assert m, rec.error
            assert "unexpected pos" not in rec.error and "Unable to write" not in rec.error, rec.error
            assert not any(p.name.startswith(".tmp-") for p in out.iterdir())   # the half-written one removed
            failed_at = int(m.group(1))

            filler.unlink()
            p = cli(home, "jobs", "resume", job_id, "--json", timeout=300)
            assert p.returncode == 0, p.stdout + p.stderr
            wait_for(lambda: job_state(stub, job_id) == "succeeded", what="the resumed job finishing")
            assert (out / "adapter" / "adapter_config.json").exists()
            logs = [e.log.message for k, e in kinds(stub, job_id) if k == "log"]
            assert any(f"resumed from {out}/checkpoint-{failed_at - 4} " in m for m in logs), logs
        finally:
            d.stop()
