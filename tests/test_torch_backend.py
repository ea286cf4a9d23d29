"""What only the torch backend has (the shared contract is tests/test_backend_contract.py):
attention implementations and the packing-mask fallback, bitsandbytes precisions, devices, CUDA,
and fusing with no MLX installed.
"""
from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("peft")

import backend_utils  # noqa: E402
from backend_utils import batches, train_steps  # noqa: E402
from tunerd.backends.generation import Sampling  # noqa: E402
from tunerd.data.batch import collate  # noqa: E402


def make(bundle, **kw):
    return backend_utils.make("torch", bundle, **kw)


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_packing_isolates_rows_by_position_ids_or_the_block_mask(demo_bundle, attn):
    """Measured: packed and unpacked loss sums are bit-identical here (diff 0.0), both with
    transformers' position-id packing detection and with the explicit block mask."""
    cfg, be, (train, valid) = make(demo_bundle)
    be.base.set_attn_implementation(attn)
    pad = be.tokenizer.pad_token_id
    rows = [(r.ids, r.mask) for r in train[:8]]
    unpacked = collate(rows, pad)
    packed = collate(rows, pad, pack_into=128)
    assert packed.is_packed and packed.inputs.shape[0] < unpacked.inputs.shape[0]
    lu, nu = be.eval_loss(unpacked)
    lp, npk = be.eval_loss(packed)
    assert nu == npk
    assert be.packing_mode == "position_ids"  # transformers isolates rows from position-id resets
    assert abs(lu - lp) / lu < 1e-5, (lu, lp)
    # the explicit 4D block-mask fallback gives the same loss
    be.packing_mode = "mask"
    lm, _ = be.eval_loss(packed)
    assert abs(lu - lm) / lu < 1e-5, (lu, lm)
    # negative control: without position resets the rows attend to each other and the loss moves
    leaky = collate(rows, pad, pack_into=128)
    leaky.position_ids[:] = np.arange(leaky.inputs.shape[1])
    leaky.segment_ids[:] = np.where(leaky.segment_ids > 0, 1, 0)
    ll, _ = be.eval_loss(leaky)
    assert abs(lu - ll) / lu > 1e-3
    # padding: one row alone == the same row in a batch padded to a longer neighbour
    alone = sum(be.eval_loss(collate([r], pad))[0] for r in rows)
    assert abs(alone - lu) / lu < 1e-5
    # packed gradients equal unpacked gradients
    grads = []
    for batch in (unpacked, packed):
        be.packing_mode = "position_ids"
        be.forward_backward(batch)
        grads.append(torch.cat([p.grad.flatten() for p in be._params]))
        be.optimizer.zero_grad(set_to_none=True)
    scale = float(grads[0].abs().max())  # measured: max |diff| 7e-6 against max |grad| 21
    torch.testing.assert_close(grads[1], grads[0], rtol=1e-4, atol=1e-6 * scale)


def test_bnb_8bit_optimizers_need_cuda(demo_bundle):
    with pytest.raises(ValueError, match="needs a CUDA device"):
        make(demo_bundle, optimizer="paged_adamw_8bit")


@pytest.mark.parametrize("variant", [dict(dtype="bfloat16"), dict(dtype="float16"), dict(quantization="8bit"),
                                     dict(quantization="fp4", bnb_4bit_use_double_quant=False),
                                     dict(quantization="4bit", dtype="bfloat16", gradient_checkpointing=True)],
                         ids=["bf16", "fp16-gradscaler", "int8", "fp4", "nf4-bf16-checkpointing"])
def test_precision_and_quantization_variants_train(demo_bundle, variant):
    """12 steps cut the training loss by 30% (measured: 7.0 -> 3.5-3.9 in every variant)."""
    cfg, be, (train, valid) = make(demo_bundle, **variant)
    losses = train_steps(be, batches(be, train, 2), cfg.learning_rate, 12)
    assert np.isfinite(losses).all() and losses[-1] < 0.7 * losses[0], losses


def test_devices_resolve_and_fail_clearly():
    from tunerd.backends.torch.device import pick_device, pick_dtype

    auto = pick_device("auto")
    assert auto.type == ("cuda" if torch.cuda.is_available() else "mps" if torch.backends.mps.is_available()
                         else "cpu")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="no CUDA GPU"):
            pick_device("cuda")
    with pytest.raises(ValueError, match="unknown device"):
        pick_device("tpu")
    with pytest.raises(ValueError, match="'float8' is not one of auto, float32"):
        pick_dtype("float8", auto)
    assert pick_dtype("float32", auto, "bfloat16")[1:] == ("float32", "set in the config")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs an NVIDIA GPU")
@pytest.mark.parametrize("variant", [dict(dtype="bfloat16"), dict(dtype="float16"),
                                     dict(quantization="4bit", dtype="bfloat16", optimizer="paged_adamw_8bit"),
                                     dict(quantization="8bit", optimizer="adamw_8bit")],
                         ids=["bf16", "fp16", "nf4-paged8bit", "int8-adamw8bit"])
def test_cuda_path_trains(demo_bundle, variant, tmp_path):
    cfg, be, (train, valid) = make(demo_bundle, device="cuda", **variant)
    assert be.device.type == "cuda"
    pad = be.tokenizer.pad_token_id
    losses = train_steps(be, batches(be, train, 2), cfg.learning_rate, 12)
    assert losses[-1] < 0.7 * losses[0], losses
    packed = collate([(r.ids, r.mask) for r in train[:8]], pad, pack_into=128)
    unpacked = collate([(r.ids, r.mask) for r in train[:8]], pad)
    lp, lu = be.eval_loss(packed)[0], be.eval_loss(unpacked)[0]
    assert abs(lp - lu) / lu < 2e-2  # 16-bit compute
    be.save_checkpoint(tmp_path / "ckpt")
    be.load_checkpoint(tmp_path / "ckpt")
    assert be.memory().peak_bytes > 0
    assert "".join(c.text for c in be.generate(valid[0].ids[:10], Sampling(max_tokens=5))) is not None


def test_fuse_works_without_mlx(demo_bundle, tmp_path):
    """`adapters fuse` on a host without MLX (a CUDA box): export.fuse picks torch and PEFT's merge;
    nothing imports mlx (a subprocess where `import mlx` fails)."""
    import subprocess
    import sys

    cfg, be, (train, valid) = make(demo_bundle)
    train_steps(be, batches(be, train, 1), 1e-2, 3)
    be.save_adapter(tmp_path / "adapter")
    script = (
        "import sys; sys.modules['mlx'] = None\n"
        "from tunerd.export.fuse import fuse\n"
        f"out = fuse({cfg.model!r}, {str(tmp_path / 'adapter')!r}, {str(tmp_path / 'fused')!r})\n"
        "assert not any(m == 'mlx' or m.startswith(('mlx.', 'mlx_lm')) for m in sys.modules if sys.modules[m]), 'mlx imported'\n"
        "print('fused', out)\n")
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    from transformers import AutoModelForCausalLM

    ids = valid[0].ids
    hf = AutoModelForCausalLM.from_pretrained(tmp_path / "fused", dtype=torch.float32).eval()
    be.model.eval()
    with torch.no_grad():
        want = be.model(input_ids=torch.tensor([ids]), use_cache=False).logits[0].numpy()
        np.testing.assert_allclose(hf(torch.tensor([ids])).logits[0].numpy(), want, atol=1e-5)


def test_peft_export_leaves_the_mlx_layout_out(demo_bundle, tmp_path):
    from tunerd.export.layout import export_adapter

    _, be, _ = make(demo_bundle)
    be.save_adapter(tmp_path / "run" / "adapter")
    peft = export_adapter(tmp_path / "run", tmp_path / "peft", "peft")
    assert (peft / "adapter_model.safetensors").exists() and not (peft / "mlx").exists()
    mlx = export_adapter(tmp_path / "run", tmp_path / "mlx", "mlx")
    assert (mlx / "adapters.safetensors").exists() and not (mlx / "adapter_model.safetensors").exists()
