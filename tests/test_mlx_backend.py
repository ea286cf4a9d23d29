"""What only the MLX backend has (the shared contract is tests/test_backend_contract.py): MLX's own
quantization widths, fusing into a base quantized on disk in MLX's format, the BLAS it runs on."""
from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

mx = pytest.importorskip("mlx.core")

from tunerd.backends.base import FuseError, ModelSpec  # noqa: E402
from tunerd.backends.mlx import MLXBackend  # noqa: E402
from tunerd.config.schema import DataConfig, TrainConfig  # noqa: E402
from tunerd.training import events as ev  # noqa: E402
from tunerd.training.loop import train  # noqa: E402


def _cfg(bundle, out, **kw):
    base = dict(model=bundle["model"], output_dir=str(out), learning_rate=1e-2, lora_r=8, lora_alpha=16,
                lora_target_modules="all-linear", max_steps=3, per_device_train_batch_size=4, logging_steps=1,
                eval_strategy="no", save_strategy="no", warmup_steps=2, group_size=32,
                data=DataConfig(train=bundle["train"], validation=bundle["valid"]))
    base.update(kw)
    return TrainConfig(**base)


@pytest.mark.parametrize("kw", [{"quantization": "8bit"}, {"quantization": "4bit", "bits": 3}], ids=["8bit", "3bit"])
def test_other_quantization_widths_train(demo_bundle, tmp_path, kw):
    seen = []
    be = MLXBackend()
    train(_cfg(demo_bundle, tmp_path, **kw), be, seen.append)
    losses = [e.loss for e in seen if isinstance(e, ev.Step)]
    assert len(losses) == 3 and np.isfinite(losses).all()
    bits = {m.bits for _, m in be.model.named_modules() if hasattr(m, "bits")}
    assert bits == {kw.get("bits", 8)}


def _quantized_copy(src, out: Path, bits: int) -> Path:
    """`src` quantized on disk in MLX's format (as mlx-community models are), with its tokenizer."""
    from mlx_lm.utils import load, quantize_model, save_config, save_model

    model, _, config = load(str(src), return_config=True)
    model, config = quantize_model(model, config, group_size=32, bits=bits)
    save_model(out, model)
    save_config(config, out / "config.json")
    for f in Path(src).glob("tokenizer*"):
        shutil.copy(f, out / f.name)
    return out


def test_blas_hint_names_the_fix():
    from tunerd.host import blas_hint

    maps = Path("/proc/self/maps").read_text().lower() if Path("/proc/self/maps").exists() else ""
    hint = blas_hint()
    if sys.platform != "linux" or "openblas" in maps:
        assert hint == ""
    else:
        assert "LD_PRELOAD" in hint or "apt-get install libopenblas0-pthread" in hint


def test_fuse_into_an_mlx_quantized_base_needs_dequantize(demo_bundle, tmp_path):
    """A base quantized on disk in MLX's format (mlx-community style) is fused by MLX whatever
    `backend: auto` would pick, and only with dequantize (mlx-lm #1172)."""
    import mlx.nn as nn
    from mlx_lm.utils import load

    from tunerd.export.fuse import fuse

    cfg = _cfg(demo_bundle, tmp_path / "run")
    train(cfg, MLXBackend(), lambda e: None)
    adapter = tmp_path / "run" / "adapter"
    q = _quantized_copy(cfg.model, tmp_path / "base-4bit", bits=4)
    with pytest.raises(FuseError, match="1172"):
        fuse(q, adapter, tmp_path / "out")
    out = fuse(q, adapter, tmp_path / "out", dequantize=True)
    fused, _ = load(str(out))
    assert "quantization" not in json.loads((out / "config.json").read_text())
    assert not any(isinstance(m, nn.QuantizedLinear) for _, m in fused.named_modules())


def test_a_pre_quantized_base_keeps_its_own_bits(demo_bundle, tmp_path):
    q = _quantized_copy(demo_bundle["model"], tmp_path / "base-8bit", bits=8)
    be = MLXBackend()
    info = be.load(ModelSpec(model=str(q), quantization="4bit"))
    assert info.quantization == "pre-quantized" and any("already quantized" in w for w in be.warnings)
