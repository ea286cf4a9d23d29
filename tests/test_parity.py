"""MLX and torch are two implementations of the same math: prove it step by step.

Same tiny model weights, same batches (padded and packed), same hyper-parameters (AdamW with
bias correction and weight decay, clipping at 1.0), no dropout, float32, and the same initial
adapter: MLX draws its LoRA A (B = 0, DoRA m = ||W||) and torch copies it through the adapter
layout (backend_utils.copy_into_trainable_adapter). Then:
- per-step training losses agree within LOSS_RTOL for STEPS steps, for LoRA and DoRA;
- an adapter trained on MLX gives torch the same next-token logits (and the reverse).
"""
from __future__ import annotations

import numpy as np
import pytest

mx = pytest.importorskip("mlx.core")
torch = pytest.importorskip("torch")
pytest.importorskip("peft")

from backend_utils import copy_into_trainable_adapter, logits  # noqa: E402
from tunerd.backends.base import ModelSpec  # noqa: E402
from tunerd.config.schema import DataConfig, TrainConfig  # noqa: E402
from tunerd.data.batch import collate  # noqa: E402

STEPS = 24
# float32 on both sides; what differs is summation order inside matmuls and softmax, compounded by
# Adam over the steps. Measured (2-core x86-64, OpenBLAS for MLX, Nov 2026): max relative per-step
# loss difference 3.0e-6 over 24 steps (4.0e-6 over 40) for LoRA and for DoRA, while the loss falls
# 7.05 -> 3.57; grad norms agree to ~3e-6 relative (clipping at 1.0 is active: norms 1.4-2.1).
LOSS_RTOL = 1e-4
# logits of the trained adapters: measured max |diff| 6e-5 (LoRA) / 7e-5 (DoRA) after 40 steps
LOGITS_ATOL = 5e-4


def _cfg(bundle, kind: str) -> TrainConfig:
    return TrainConfig(model=bundle["model"], peft_adapter=kind, lora_r=8, lora_alpha=16, lora_dropout=0.0,
                       lora_target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "down_proj"],
                       optimizer="adamw", learning_rate=3e-3, weight_decay=0.01, max_grad_norm=1.0,
                       dtype="float32", seed=3, data=DataConfig(train=bundle["train"], validation=bundle["valid"]))


def _rows(tokenizer, bundle_rows):
    rows = []
    for r in bundle_rows:
        msgs = [{"role": "user", "content": r["prompt"]}]
        p = tokenizer.apply_chat_template(msgs, add_generation_prompt=True, tokenize=True)
        full = tokenizer.apply_chat_template(msgs + [{"role": "assistant", "content": r["completion"]}],
                                             tokenize=True)
        p, full = (list(x["input_ids"] if hasattr(x, "keys") else x) for x in (p, full))
        rows.append((full, [0.0] * len(p) + [1.0] * (len(full) - len(p))))
    return rows


def _batches(tokenizer, bundle_rows, steps):
    """Mixed-length padded batches of 4, every third batch packed (two packed sequences)."""
    rows = _rows(tokenizer, bundle_rows)
    pad = tokenizer.pad_token_id
    out = []
    for i in range(steps):
        chunk = [rows[(4 * i + j) % len(rows)] for j in range(4)]
        out.append(collate(chunk, pad, pack_into=64 if i % 3 == 2 else 0))
    assert any(b.is_packed for b in out)
    return out


def _pair(bundle, kind, tmp_path):
    from tunerd.backends.mlx import MLXBackend
    from tunerd.backends.torch import TorchBackend

    cfg = _cfg(bundle, kind)
    mlx_be, torch_be = MLXBackend(), TorchBackend()
    for be in (mlx_be, torch_be):
        be.load(ModelSpec.from_config(cfg))
        be.add_adapter(cfg)
    mlx_be.save_adapter(tmp_path / "init")
    copy_into_trainable_adapter(torch_be, tmp_path / "init")  # same initial A (and m for DoRA)
    return cfg, mlx_be, torch_be


@pytest.mark.parametrize("kind", ["lora", "dora"])
def test_training_losses_match_step_by_step(demo_bundle, tmp_path, kind):
    cfg, mlx_be, torch_be = _pair(demo_bundle, kind, tmp_path)
    batches = _batches(torch_be.tokenizer, demo_bundle["rows"], STEPS)
    rel, norms = [], []
    for b in batches:
        (lm, nm), (lt, nt) = mlx_be.forward_backward(b), torch_be.forward_backward(b)
        assert nm == nt == b.n_targets
        gm = mlx_be.optimizer_step(cfg.learning_rate, 1.0 / nm, cfg.max_grad_norm)
        gt = torch_be.optimizer_step(cfg.learning_rate, 1.0 / nt, cfg.max_grad_norm)
        rel.append(abs(lm - lt) / abs(lt))
        norms.append(abs(gm - gt) / gt)
    assert max(rel) < LOSS_RTOL, f"{kind}: per-step relative loss diffs {['%.1e' % r for r in rel]}"
    assert max(norms) < 1e-3, f"{kind}: grad-norm diffs {['%.1e' % r for r in norms]}"
    # after training, the two adapters still give the same logits
    ids = _rows(torch_be.tokenizer, demo_bundle["rows"][:1])[0][0]
    np.testing.assert_allclose(logits(torch_be, ids), logits(mlx_be, ids), atol=LOGITS_ATOL)


@pytest.mark.parametrize("kind", ["lora", "dora"])
def test_adapters_interchange_between_backends(demo_bundle, tmp_path, kind):
    from tunerd.backends.mlx import MLXBackend
    from tunerd.backends.torch import TorchBackend

    cfg, mlx_be, torch_be = _pair(demo_bundle, kind, tmp_path)
    batches = _batches(torch_be.tokenizer, demo_bundle["rows"], 6)
    for b in batches:  # each backend trains its own adapter, then they swap
        for be in (mlx_be, torch_be):
            _, n = be.forward_backward(b)
            be.optimizer_step(cfg.learning_rate * 3, 1.0 / n, cfg.max_grad_norm)
    mlx_be.save_adapter(tmp_path / "from_mlx")
    torch_be.save_adapter(tmp_path / "from_torch")
    ids = _rows(torch_be.tokenizer, demo_bundle["rows"][5:6])[0][0]

    base = TorchBackend()
    base.load(ModelSpec.from_config(cfg))
    base_logits = logits(base, ids)
    base.load_adapter(tmp_path / "from_mlx")          # mlx-trained adapter into torch
    np.testing.assert_allclose(logits(base, ids), logits(mlx_be, ids), atol=LOGITS_ATOL)
    assert np.abs(logits(base, ids) - base_logits).max() > 1e-2  # the adapter changed something

    other = MLXBackend()
    other.load(ModelSpec.from_config(cfg))
    other.load_adapter(tmp_path / "from_torch")        # torch-trained adapter into mlx
    np.testing.assert_allclose(logits(other, ids), logits(torch_be, ids), atol=LOGITS_ATOL)
