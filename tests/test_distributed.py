"""Data-parallel jobs through the real daemon and `tunerctl train` (tunerd.distributed): 2 ranks
started by torchrun (DDP over gloo) and by mlx.launch (ring on localhost) give the per-step
losses of one process training the same global batch; a rank killed with SIGKILL fails the job
naming that rank, with a checkpoint to resume from; resumed, cancelled and resumed again, the job
logs the losses of one uninterrupted process."""
from __future__ import annotations

import json
import os
import re
import signal
from pathlib import Path

import pytest

from tunerd.backends.registry import get_backend
from tunerd.config.loader import load_config
from tunerd.training import events as ev
from tunerd.training.loop import train

from daemon_utils import cli, job_state, json_lines, wait_for, write_config

pytestmark = pytest.mark.slow

STEPS = dict(max_steps=4, logging_steps=1, eval_strategy="no", save_steps=2, per_device_train_batch_size=4,
             lr_scheduler_type="constant", learning_rate=3e-3)


def one_process_losses(cfg_path: Path, out: Path) -> list[float]:
    """The same job in this process, one rank, the global batch as accumulation."""
    cfg = load_config(cfg_path, overrides=[f"output_dir={out}", "gradient_accumulation_steps=2",
                                           "distributed=null", "save_strategy='no'"])
    steps = []
    train(cfg, get_backend(cfg.backend), lambda e: steps.append(e.loss) if isinstance(e, ev.Step) else None)
    return steps


@pytest.mark.parametrize("backend,engine", [("torch", "ddp"), ("mlx", "mlx")])
def test_two_ranks_give_the_losses_of_one_process_with_the_same_global_batch(daemon, demo_bundle, tmp_path,
                                                                             backend, engine):
    pytest.importorskip("mlx.core" if backend == "mlx" else "torch")
    cfg = write_config(tmp_path / "dist.yaml", demo_bundle, backend=backend, **STEPS,
                       distributed={"nproc_per_node": 2})
    p = cli(daemon.home, "train", str(cfg), "--json", check=True)
    events = json_lines(p.stdout)
    started = [e["started"] for e in events if "started" in e]
    assert len(started) == 1, p.stdout[-3000:]
    assert (started[0]["world_size"], started[0]["global_batch_size"], started[0]["distributed_backend"]) == \
        (2, 8, engine)
    losses = [e["step"]["loss"] for e in events if "step" in e]
    finished = [e["finished"] for e in events if "finished" in e]
    assert len(losses) == 4 and len(finished) == 1, p.stdout[-3000:]
    assert Path(finished[0]["adapter_path"], "adapter_config.json").exists()
    assert sorted(p.name for p in Path(finished[0]["output_dir"]).glob("checkpoint-*")) == \
        ["checkpoint-2", "checkpoint-4"]
    ref = one_process_losses(cfg, tmp_path / "one")
    assert losses == pytest.approx(ref, rel=1e-5, abs=1e-5), (losses, ref)


def test_a_rank_killed_fails_the_job_naming_it_then_resume_and_cancel_reproduce_the_losses(daemon, demo_bundle,
                                                                                           tmp_path):
    from tuner.v1 import tuner_pb2 as pb

    total = 60
    cfg = write_config(tmp_path / "kill.yaml", demo_bundle, backend="torch", max_steps=total, logging_steps=1,
                       eval_strategy="no", save_steps=2, per_device_train_batch_size=2,
                       distributed={"nproc_per_node": 2})
    job = json_lines(cli(daemon.home, "train", str(cfg), "--detach", "--json", check=True).stdout)[0]["id"]
    stub = daemon.stub()
    out = Path(stub.GetJob(pb.GetJobRequest(job_id=job)).output_dir)

    def ended():
        return job_state(stub, job) in ("failed", "succeeded", "cancelled")
    wait_for(lambda: (out / "checkpoint-2" / "trainer_state.json").exists() or ended(), 120, 0.05,
             "the first checkpoint")
    pid = int(re.search(r"rank 1: pid (\d+)", (out / "ranks" / "rank-1.log").read_text()).group(1))
    os.kill(pid, signal.SIGKILL)
    wait_for(ended, 120, 0.2, "the job to end")
    rec = stub.GetJob(pb.GetJobRequest(job_id=job))
    assert rec.step < total and job_state(stub, job) == "failed", (rec.step, rec.error)
    assert "rank 1 of 2" in rec.error and "SIGKILL" in rec.error, rec.error
    assert list(out.glob("checkpoint-*")), "a checkpoint to resume from"

    cli(daemon.home, "jobs", "resume", job, "--detach", "--json", check=True)   # then cancelled a few steps on
    resumed = wait_for(lambda: job_state(stub, job) == "running" and stub.GetJob(pb.GetJobRequest(job_id=job)).step,
                       120, 0.05, "the resumed job's first step")
    wait_for(lambda: stub.GetJob(pb.GetJobRequest(job_id=job)).step >= resumed + 3 or ended(), 60, 0.05, "steps")
    stub.CancelJob(pb.CancelJobRequest(job_id=job))   # at once (a tunerctl would take a second to start)
    wait_for(ended, 120, 0.2, "the cancel")
    assert job_state(stub, job) == "cancelled", stub.GetJob(pb.GetJobRequest(job_id=job)).error

    cli(daemon.home, "jobs", "resume", job, "--json", check=True)
    wait_for(ended, 180, 0.2, "the resumed job to end")
    rec = stub.GetJob(pb.GetJobRequest(job_id=job))
    assert job_state(stub, job) == "succeeded" and rec.step == total, rec.error
    logged = {r["step"]: r["loss"] for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines())
              if r["type"] == "train"}
    assert sorted(logged) == list(range(1, total + 1))
    ref = one_process_losses(cfg, tmp_path / "one")
    assert [logged[i] for i in range(1, total + 1)] == pytest.approx(ref, rel=1e-5, abs=1e-5)
