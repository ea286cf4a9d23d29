"""A training process killed with SIGKILL mid-run resumes from its last checkpoint exactly."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("mlx.core")

from tunerd.backends.mlx import MLXBackend  # noqa: E402
from tunerd.config.schema import DataConfig, TrainConfig  # noqa: E402
from tunerd.training import events as ev  # noqa: E402
from tunerd.training.checkpoints import list_checkpoints  # noqa: E402
from tunerd.training.loop import train  # noqa: E402

SCRIPT = textwrap.dedent("""
    import json, sys, time
    from tunerd.backends.mlx import MLXBackend
    from tunerd.config.schema import DataConfig, TrainConfig
    from tunerd.training.loop import train
    kw = json.loads(sys.argv[1])
    kw["data"] = DataConfig(**kw["data"])
    def emit(e):
        if type(e).__name__ == "Step":
            time.sleep(0.25)   # slow enough to be killed mid-run
    train(TrainConfig(**kw), MLXBackend(), emit)
""")


@pytest.mark.slow
def test_sigkill_mid_run_then_resume_is_exact(demo_bundle, tmp_path):
    kw = dict(model=demo_bundle["model"], learning_rate=1e-2, lora_target_modules="all-linear", max_steps=12,
              per_device_train_batch_size=4, gradient_accumulation_steps=2, logging_steps=1, eval_strategy="no",
              save_strategy="steps", save_steps=2, lr_scheduler_type="linear", warmup_steps=2,
              data={"train": demo_bundle["train"], "validation": demo_bundle["valid"]})
    out = tmp_path / "killed"
    script = tmp_path / "run.py"
    script.write_text(SCRIPT)
    proc = subprocess.Popen([sys.executable, str(script), json.dumps({**kw, "output_dir": str(out)})],
                            env={**os.environ}, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 90
        while time.time() < deadline and not (out / "checkpoint-4" / "trainer_state.json").exists():
            assert proc.poll() is None, "training process ended before it could be killed"
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
    done = list_checkpoints(out)
    assert done and not (out / "adapter").exists(), "the run should have been killed before finishing"
    resume_step = int(done[-1].name.split("-")[1])
    assert 4 <= resume_step < 12

    def cfg(path, **more):
        return TrainConfig(**{**kw, "data": DataConfig(**kw["data"]), "output_dir": str(path), **more})

    full, resumed = [], []
    train(cfg(tmp_path / "full"), MLXBackend(), full.append)
    fin = train(cfg(out, resume_from_checkpoint="latest"), MLXBackend(), resumed.append)
    assert [e for e in resumed if isinstance(e, ev.Started)][0].resumed_from_step == resume_step
    a = [e.loss for e in full if isinstance(e, ev.Step)][resume_step:]
    b = [e.loss for e in resumed if isinstance(e, ev.Step)]
    np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-6)
    assert fin.steps == 12 and Path(fin.adapter_path, "adapter_model.safetensors").exists()
