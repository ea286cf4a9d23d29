"""Data-parallel jobs through the real daemon and `tunerctl train` (tunerd.distributed): 2 ranks
started by mlx.launch (ring on localhost) and by torchrun (DDP over gloo) give the per-step losses
of one process training the same global batch. One torch job goes through every way a group ends:
a rank killed with SIGKILL fails the job naming that rank, with a checkpoint to resume from;
resumed, it is cancelled; resumed again, the daemon gets SIGTERM, which checkpoints and stops the
group (no rank outlives the daemon); after a restart the job resumes to the end, and its logged
losses are those of one uninterrupted process.

A group launch costs ~10-20 s here (torch and transformers imported by the launcher and each rank
on 2 cores), so the tests launch as few as they can: 1 (mlx) + 4 (the torch job)."""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tunerd.backends.registry import get_backend
from tunerd.config.loader import load_config
from tunerd.files import process_exists
from tunerd.training import events as ev
from tunerd.training.loop import train

from daemon_utils import cli, job_state, json_lines, wait_for, write_config

pytestmark = pytest.mark.slow

TOTAL = 40   # the torch job's steps: room for a kill, a cancel and a SIGTERM a few steps apart
JOB = dict(logging_steps=1, eval_strategy="no", save_steps=2, per_device_train_batch_size=2,
           lr_scheduler_type="constant", learning_rate=3e-3, distributed={"nproc_per_node": 2})


def one_process_losses(cfg_path: Path, out: Path) -> list[float]:
    """The same job in this process, one rank, the global batch as accumulation."""
    cfg = load_config(cfg_path, overrides=[f"output_dir={out}", "gradient_accumulation_steps=2",
                                           "distributed=null", "save_strategy='no'"])
    steps = []
    train(cfg, get_backend(cfg.backend), lambda e: steps.append(e.loss) if isinstance(e, ev.Step) else None)
    return steps


def test_two_mlx_ranks_give_the_losses_of_one_process_with_the_same_global_batch(daemon, demo_bundle, tmp_path):
    pytest.importorskip("mlx.core")
    cfg = write_config(tmp_path / "dist.yaml", demo_bundle, backend="mlx", max_steps=4, **JOB)
    p = cli(daemon.home, "train", str(cfg), "--json", check=True)
    events = json_lines(p.stdout)
    started = [e["started"] for e in events if "started" in e]
    assert len(started) == 1, p.stdout[-3000:]
    assert (started[0]["world_size"], started[0]["global_batch_size"], started[0]["distributed_backend"]) == \
        (2, 4, "mlx")
    losses = [e["step"]["loss"] for e in events if "step" in e]
    finished = [e["finished"] for e in events if "finished" in e]
    assert len(losses) == 4 and len(finished) == 1, p.stdout[-3000:]
    assert Path(finished[0]["adapter_path"], "adapter_config.json").exists()
    assert sorted(p.name for p in Path(finished[0]["output_dir"]).glob("checkpoint-*")) == \
        ["checkpoint-2", "checkpoint-4"]
    ref = one_process_losses(cfg, tmp_path / "one")
    assert losses == pytest.approx(ref, rel=1e-5, abs=1e-5), (losses, ref)


def test_fsdp_is_refused_at_submit_saying_why_and_what_to_use(demo_bundle, tmp_path):
    cfg = write_config(tmp_path / "fsdp.yaml", demo_bundle, backend="torch", max_steps=4,
                       **dict(JOB, distributed={"nproc_per_node": 2, "backend": "fsdp"}))
    with pytest.raises(ValueError, match=r"fsdp is not built yet; use ddp.*same number of micro-batches"):
        load_config(cfg)


def rank_pid(out: Path, r: int) -> int:
    """Rank r's pid in the group's latest launch (its log's last `rank R: pid N`)."""
    return int(re.findall(rf"rank {r}: pid (\d+)", (out / "ranks" / f"rank-{r}.log").read_text())[-1])


def group_pids(out: Path) -> list[int]:
    """The latest launch's ranks and their launcher (the ranks' parent)."""
    pids = {rank_pid(out, r) for r in (0, 1)}
    for pid in list(pids):
        try:
            pids.add(int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1]))
        except (OSError, IndexError, ValueError):
            pass
    return sorted(pids)


def test_a_torch_job_killed_cancelled_and_daemon_stopped_resumes_to_the_losses_of_one_process(daemon, demo_bundle,
                                                                                             tmp_path):
    from tuner.v1 import tuner_pb2 as pb

    cfg = write_config(tmp_path / "kill.yaml", demo_bundle, backend="torch", max_steps=TOTAL, **JOB)
    stub = daemon.stub()

    def rec(job):
        return stub.GetJob(pb.GetJobRequest(job_id=job))

    def ended(job):
        return job_state(stub, job) in ("failed", "succeeded", "cancelled", "interrupted")

    # 1. `tunerctl train` in the foreground; rank 1 SIGKILLed after the first checkpoint fails the job
    before = {j.id for j in stub.ListJobs(pb.ListJobsRequest()).jobs}
    env = dict(os.environ, TUNER_HOME=str(daemon.home), COLUMNS="200")
    fg = subprocess.Popen([sys.executable, "-m", "tunerctl", "--home", str(daemon.home), "train", str(cfg), "--json"],
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, stdin=subprocess.DEVNULL)
    job = wait_for(lambda: [j.id for j in stub.ListJobs(pb.ListJobsRequest()).jobs if j.id not in before], 120, 0.1,
                   "the job")[0]
    out = Path(rec(job).output_dir)
    wait_for(lambda: (out / "checkpoint-2" / "trainer_state.json").exists() or ended(job), 180, 0.05,
             "the first checkpoint")
    os.kill(rank_pid(out, 1), signal.SIGKILL)
    stdout, stderr = fg.communicate(timeout=180)
    assert fg.returncode != 0 and job_state(stub, job) == "failed", (fg.returncode, stdout[-2000:], stderr[-2000:])
    started = [e["started"] for e in json_lines(stdout) if "started" in e]
    assert len(started) == 1, stdout[-3000:]
    assert (started[0]["world_size"], started[0]["global_batch_size"], started[0]["distributed_backend"]) == \
        (2, 4, "ddp")
    error = rec(job).error
    assert rec(job).step < TOTAL and "rank 1 of 2" in error and "SIGKILL" in error, error
    assert list(out.glob("checkpoint-*")), "a checkpoint to resume from"

    def resume_and_wait_steps(n: int) -> int:
        cli(daemon.home, "jobs", "resume", job, "--detach", "--json", check=True)
        first = wait_for(lambda: job_state(stub, job) == "running" and rec(job).step, 180, 0.05,
                         "the resumed job's first step")
        wait_for(lambda: rec(job).step >= first + n or ended(job), 60, 0.05, "steps")
        return first

    # 2. resumed, then cancelled at once (a tunerctl would take a second to start)
    resume_and_wait_steps(3)
    stub.CancelJob(pb.CancelJobRequest(job_id=job))
    wait_for(lambda: ended(job), 120, 0.1, "the cancel")
    assert job_state(stub, job) == "cancelled", rec(job).error

    # 3. resumed, then the daemon gets SIGTERM: it checkpoints and stops the group before it exits
    resume_and_wait_steps(2)
    group = group_pids(out)
    assert len(group) == 3, group   # two ranks and their launcher
    daemon.signal(signal.SIGTERM)
    assert daemon.wait(120) == 0
    assert [p for p in group if process_exists(p)] == [], "a rank outlived the daemon"
    daemon.start()
    stub = daemon.stub()
    r = rec(job)
    assert job_state(stub, job) == "interrupted" and (out / f"checkpoint-{r.step}").exists(), (r.step, r.error)

    # 4. resumed to the end in the foreground: the losses of one uninterrupted process
    cli(daemon.home, "jobs", "resume", job, "--json", check=True)
    r = rec(job)
    assert job_state(stub, job) == "succeeded" and r.step == TOTAL, r.error
    assert Path(r.adapter_path, "adapter_config.json").exists()
    logged = {m["step"]: m["loss"] for m in map(json.loads, (out / "metrics.jsonl").read_text().splitlines())
              if m["type"] == "train"}
    assert sorted(logged) == list(range(1, TOTAL + 1))
    ref = one_process_losses(cfg, tmp_path / "one")
    assert [logged[i] for i in range(1, TOTAL + 1)] == pytest.approx(ref, rel=1e-5, abs=1e-5)
