"""A fake trainer at the JobManager's seam (`run_training`), and a Core built around it: the jobs
machinery (queue, worker, store, cancel, resume, watch) runs for real in milliseconds."""
from __future__ import annotations

import threading
import os
import time
from pathlib import Path
from types import SimpleNamespace

from tunerd.training import events as ev
from tunerd.training.loop import TrainingCancelled


class FakeTrainer:
    """Behaves like training/loop.py as the manager sees it: Started; a Step event every
    `log_every` steps; on `should_stop()` between steps a checkpoint-N folder and
    TrainingCancelled(N, path); resume_from_checkpoint: latest continues after the newest
    checkpoint; Finished. While `gate` is clear a job waits before each step after `hold_after`,
    calling `serve_interactive()` and `should_stop()` as the runner's step hook does between steps."""

    def __init__(self, steps: int = 5, log_every: int = 1, step_seconds: float = 0.0,
                 fail_with: BaseException | None = None):
        self.steps, self.log_every, self.step_seconds, self.fail_with = steps, log_every, step_seconds, fail_with
        self.hold_after = 0
        self.runs: list = []                 # (job output_dir, resume_from_checkpoint), in run order
        self.gate = threading.Event()
        self.gate.set()
        self.waiting = threading.Event()     # a job is held at the gate

    def __call__(self, cfg, emit, should_stop, base_dir=None, job_id="", serve_interactive=lambda: None):
        out = Path(cfg.output_dir)
        self.runs.append((out.name, cfg.resume_from_checkpoint))
        done = 0
        if cfg.resume_from_checkpoint == "latest":
            done = max(int(p.name.split("-")[1]) for p in out.glob("checkpoint-*"))
        emit(ev.Started(backend="fake", device="cpu", model=cfg.model, total_steps=self.steps, num_epochs=1,
                        train_rows=1, eval_rows=0, total_params=1, trainable_params=1, trainable_percent=100.0,
                        output_dir=str(out), resumed_from_step=done))
        for step in range(done + 1, self.steps + 1):
            if self.fail_with is not None:
                raise self.fail_with
            serve_interactive()
            while step > self.hold_after and not self.gate.is_set() and not should_stop():
                serve_interactive()
                self.waiting.set()
                time.sleep(0.005)
            if should_stop():
                ckpt = out / f"checkpoint-{step - 1}"
                ckpt.mkdir(parents=True, exist_ok=True)
                raise TrainingCancelled(step - 1, str(ckpt))
            time.sleep(self.step_seconds)
            if step % self.log_every == 0:
                emit(ev.Step(step=step, total_steps=self.steps, epoch=0.0, loss=1.0 / step, learning_rate=1e-3,
                             grad_norm=1.0, tokens_per_second=1.0, trained_tokens=step, peak_memory_bytes=0,
                             eta_seconds=0.0, elapsed_seconds=0.0))
        (out / "adapter").mkdir(parents=True, exist_ok=True)
        (out / "adapter" / "adapter_model.safetensors").write_bytes(b"")   # the PEFT layout's marker
        emit(ev.Finished(adapter_path=str(out / "adapter"), output_dir=str(out), steps=self.steps, final_loss=0.1))
        return SimpleNamespace(adapter_path=str(out / "adapter"))


def wait_until(check, timeout: float = 5.0, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out waiting for {what or check}")
        time.sleep(0.005)


def job_doc(model_dir, **kw) -> dict:
    """A config a submit accepts: a local model folder (no config.json: the memory check is
    skipped) and a one-row data file the fake never reads (submit checks its rows)."""
    return {"model": str(model_dir), "data": {"train": str(_fake_train())}, **kw}


def _fake_train():
    import tempfile
    from pathlib import Path

    from tunerd.files import atomic_write_text

    path = Path(tempfile.gettempdir()) / f"mactuner-fake-train-{os.getpid()}.jsonl"
    if not path.exists():   # whole or absent: concurrent submits read it while it is written
        atomic_write_text(path, '{"text": "one row"}\n')
    return path
