"""What broke at real size (DESIGN.md §2, issue 8), caught on a CPU in seconds:
dtype auto, the MLX buffer-cache policy, losses that never hold [B, T, vocab] float32 logits,
QLoRA activations in the compute dtype, packing auto, and MFU telemetry."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from tunerd.backends.base import ModelInfo, ModelSpec
from tunerd.backends.generation import Sampling
from tunerd.backends.dtypes import checkpoint_dtype, resolve_dtype
from tunerd.config.schema import DataConfig, TrainConfig
from tunerd.data.batch import collate
from tunerd.training.loop import resolve_packing


# ---- dtype: auto ------------------------------------------------------------------------------

def _measure(ratio):
    return lambda dt: 100.0 * (ratio if dt != "float32" else 1.0)


@pytest.mark.parametrize("requested,device,ckpt,bf16,ratio,want", [
    ("auto", "cuda", "bfloat16", True, None, "bfloat16"),
    ("auto", "cuda", "bfloat16", False, None, "float16"),      # a GPU without bf16
    ("auto", "cuda", "float16", True, None, "float16"),
    ("auto", "mps", "bfloat16", True, None, "bfloat16"),
    ("auto", "metal", "float16", True, None, "float16"),
    ("auto", "metal", "float32", True, None, "float32"),       # never down-cast unasked
    ("auto", "cpu", "bfloat16", True, 9.0, "bfloat16"),        # AMX: 16-bit measured faster
    ("auto", "cpu", "bfloat16", True, 0.05, "float32"),        # MLX's CPU bf16: measured slower
    ("auto", "cpu", "bfloat16", True, 1.2, "float32"),         # not faster enough to pay
    ("auto", "cpu", "float32", True, 9.0, "float32"),
    ("float32", "cuda", "bfloat16", True, None, "float32"),    # explicit wins
    ("bfloat16", "cpu", "float32", True, 0.05, "bfloat16"),
])
def test_dtype_auto_rule(requested, device, ckpt, bf16, ratio, want):
    got, why = resolve_dtype(requested, device, ckpt, _measure(ratio) if ratio else None, bf16)
    assert got == want and why


def test_checkpoint_dtype_reads_either_key():
    assert checkpoint_dtype({"torch_dtype": "bfloat16"}) == "bfloat16"
    assert checkpoint_dtype({"dtype": "float16"}) == "float16"
    assert checkpoint_dtype({"text_config": {"torch_dtype": "bfloat16"}}) == "bfloat16"
    assert checkpoint_dtype({}) == "float32"
    with pytest.raises(ValueError, match="dtype: 'half' is not one of auto"):
        resolve_dtype("half", "cpu", "float32")


def _cfg(model, tmp_path, **kw):
    return TrainConfig(model=str(model), output_dir=str(tmp_path / "out"), lora_r=4, lora_alpha=8,
                       data=DataConfig(train="unused"), **kw)


def test_torch_keeps_a_bf16_checkpoint_where_bf16_is_faster(tiny_bf16_model_dir, tmp_path):
    torch = pytest.importorskip("torch")
    from tunerd.backends.torch import TorchBackend
    from tunerd.backends.registry import peak_flops

    be = TorchBackend()
    info = be.load(ModelSpec.from_config(_cfg(tiny_bf16_model_dir, tmp_path)))
    faster = peak_flops("cpu", "bfloat16") >= 1.5 * peak_flops("cpu", "float32")
    assert info.dtype == ("bfloat16" if faster else "float32") and "measured" in info.dtype_reason
    assert be.base.get_input_embeddings().weight.dtype == getattr(torch, info.dtype)
    be.add_adapter(_cfg(tiny_bf16_model_dir, tmp_path))
    lora = [p for n, p in be.model.named_parameters() if "lora_" in n]
    assert lora and all(p.dtype == torch.float32 for p in lora)    # PEFT's practice: fp32 adapters
    info = TorchBackend().load(ModelSpec.from_config(_cfg(tiny_bf16_model_dir, tmp_path, dtype="float32")))
    assert (info.dtype, info.dtype_reason) == ("float32", "set in the config")


def test_mlx_trains_a_bf16_checkpoint_in_the_measured_dtype(tiny_bf16_model_dir, tmp_path):
    mx = pytest.importorskip("mlx.core")
    from mlx.utils import tree_flatten

    from tunerd.backends.mlx import MLXBackend
    from tunerd.backends.registry import peak_flops

    be = MLXBackend()
    info = be.load(ModelSpec.from_config(_cfg(tiny_bf16_model_dir, tmp_path)))
    dev = str(mx.default_device())
    faster = peak_flops(dev, "bfloat16") >= 1.5 * peak_flops(dev, "float32")
    assert info.dtype == ("bfloat16" if faster else "float32")
    weights = {v.dtype for _, v in tree_flatten(be.model.parameters())}
    assert weights == {getattr(mx, info.dtype)}
    be.add_adapter(_cfg(tiny_bf16_model_dir, tmp_path))
    assert {v.dtype for _, v in tree_flatten(be.model.trainable_parameters())} == {mx.float32}


def test_the_registry_and_config_default_to_auto():
    import inspect

    from tunerd.models.registry import ModelRegistry

    assert TrainConfig().dtype == "auto" and TrainConfig().packing == "auto"
    assert TrainConfig().lora_target_modules == "all-linear"
    assert inspect.signature(ModelRegistry.get).parameters["dtype"].default == "auto"


# ---- MLX memory -------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def vocab_heavy_model(tmp_path_factory, tiny_model_dir):
    """hidden 64, vocabulary 32,768: the logits dominate memory, as with a 128k vocabulary at 1B."""
    import shutil

    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    out = tmp_path_factory.mktemp("vocab") / "model"
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=32768, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
                         tie_word_embeddings=False, eos_token_id=2, pad_token_id=3, bos_token_id=None)
    LlamaForCausalLM(config).save_pretrained(out)
    for f in Path(tiny_model_dir).iterdir():
        if f.name.startswith(("tokenizer", "special_tokens", "chat_template")):
            shutil.copy(f, out / f.name)
    return out


def _rows(rng, lengths, answer=16, vocab=500):
    return [(list(rng.integers(4, vocab, n + 1)), [0.0] * (n + 1 - answer) + [1.0] * answer) for n in lengths]


def test_mlx_loss_never_holds_full_float32_logits(vocab_heavy_model, tmp_path):
    mx = pytest.importorskip("mlx.core")
    import mlx.nn as nn

    from tunerd.backends.mlx import MLXBackend
    from tunerd.backends.mlx.loss import batch_arrays, summed_loss

    be = MLXBackend(compile=False)
    be.load(ModelSpec.from_config(_cfg(vocab_heavy_model, tmp_path, dtype="float32")))
    be.add_adapter(_cfg(vocab_heavy_model, tmp_path, dtype="float32"))
    batch = collate(_rows(np.random.default_rng(0), [255] * 4), pad_id=3)
    full_f32 = batch.inputs.size * 32768 * 4                      # [4, 256, 32768] float32 = 128 MiB
    be.forward_backward(batch)                                      # warm up (compile-free, buffers)
    be._acc = None
    mx.clear_cache()
    mx.reset_peak_memory()
    base = mx.get_active_memory()
    loss, n = be.forward_backward(batch)
    # measured: 53 MiB (all of it [64 supervised, vocab] logits work); the old full-logits loss: 531 MiB
    assert mx.get_peak_memory() - base < full_f32 / 2, (mx.get_peak_memory() - base, full_f32)
    # same value as the textbook loss over full logits
    logits = be.model(mx.array(batch.inputs)).astype(mx.float32)
    ref = (nn.losses.cross_entropy(logits, mx.array(batch.targets), reduction="none")
           * mx.array(batch.loss_mask)).sum()
    assert n == 64 and loss == pytest.approx(float(ref), rel=1e-5)
    # chunks recomputed in backward give the same loss and gradients as one piece
    packed, arrays = batch_arrays(batch, be.model_type, be.compile)
    vg = nn.value_and_grad(be.model, summed_loss)
    (l1, _), g1 = vg(be.model, *arrays[:4], None, mx.float32, True, 0)
    (l2, _), g2 = vg(be.model, *arrays[:4], None, mx.float32, True, 24)
    from mlx.utils import tree_flatten
    assert float(l1) == pytest.approx(float(l2), rel=1e-6)
    for (k, a), (_, b) in zip(tree_flatten(g1), tree_flatten(g2)):
        np.testing.assert_allclose(np.array(a), np.array(b), atol=1e-6, err_msg=k)


def test_mlx_buffer_cache_stays_bounded_over_varying_lengths(demo_bundle, tmp_path):
    """30 steps of 10 different lengths: the cache is emptied every step (the policy that kept the
    GPU from filling up) and active memory does not grow."""
    mx = pytest.importorskip("mlx.core")
    from tunerd.backends.mlx import MLXBackend

    be = MLXBackend()
    cfg = _cfg(demo_bundle["model"], tmp_path)
    be.load(ModelSpec.from_config(cfg))
    be.add_adapter(cfg)
    rng = np.random.default_rng(0)
    lengths = [20 + 17 * i for i in range(10)]
    active = []
    for step in range(30):
        n = lengths[step % 10]
        loss, ntok = be.forward_backward(collate(_rows(rng, [n] * 4), be.tokenizer.pad_token_id))
        be.optimizer_step(1e-3, 1.0 / ntok, 1.0)
        assert mx.get_cache_memory() < 2 ** 16, (step, mx.get_cache_memory())   # without the policy: ~32 MiB
        active.append(mx.get_active_memory())
    assert max(active[10:]) <= active[9] * 1.05 + 2 ** 20, active
    list(be.generate([5, 6, 7], Sampling(max_tokens=8)))
    assert mx.get_cache_memory() < 2 ** 16


# ---- torch memory -----------------------------------------------------------------------------

def test_torch_chunked_cross_entropy_matches_one_piece():
    torch = pytest.importorskip("torch")
    from tunerd.backends.torch.loss import head_cross_entropy

    torch.manual_seed(0)
    hidden = torch.randn(300, 32, requires_grad=True)
    head = torch.nn.Linear(32, 1000, bias=False)
    targets, weights = torch.randint(0, 1000, (300,)), torch.rand(300)
    grads = []
    for chunk_bytes in (None, 64 * 4 * 1000):
        kw = {} if chunk_bytes is None else {"chunk_bytes": chunk_bytes}
        loss = head_cross_entropy(hidden, head, targets, weights, vocab=1000, **kw)
        loss.backward()
        grads.append((float(loss), hidden.grad.clone(), head.weight.grad.clone()))
        hidden.grad = head.weight.grad = None
    assert grads[0][0] == pytest.approx(grads[1][0], rel=1e-6)
    torch.testing.assert_close(grads[0][1], grads[1][1])
    torch.testing.assert_close(grads[0][2], grads[1][2], atol=1e-5, rtol=1e-5)


def test_torch_qlora_runs_in_the_compute_dtype(demo_bundle, tmp_path):
    """No prepare_model_for_kbit_training: norms, embeddings, activations and (as TRL does) the LoRA
    weights are bfloat16; before, float32 norms made every activation float32 (2.8x TRL's peak)."""
    torch = pytest.importorskip("torch")
    pytest.importorskip("bitsandbytes")
    from tunerd.backends.torch import TorchBackend

    cfg = _cfg(demo_bundle["model"], tmp_path, quantization="4bit", dtype="bfloat16")
    be = TorchBackend()
    be.load(ModelSpec.from_config(cfg))
    be.add_adapter(cfg)
    floats = {p.dtype for p in be.model.parameters() if p.is_floating_point()}
    assert floats == {torch.bfloat16}, floats
    seen = set()

    def hook(module, args, out):
        for t in (out if isinstance(out, (tuple, list)) else [out]):
            if isinstance(t, torch.Tensor) and t.is_floating_point():
                seen.add((type(module).__name__, t.dtype))
    handles = [m.register_forward_hook(hook) for m in be.model.modules()]
    rows = _rows(np.random.default_rng(0), [40, 30])
    before = [p.detach().clone() for p in be.model.parameters() if p.requires_grad]
    loss, n = be.forward_backward(collate(rows, be.tokenizer.pad_token_id))
    be.optimizer_step(1e-2, 1.0 / n, 1.0)
    for h in handles:
        h.remove()
    assert seen and all(dt == torch.bfloat16 for _, dt in seen), sorted(s for s in seen if s[1] != torch.bfloat16)
    after = [p for p in be.model.parameters() if p.requires_grad]
    assert any(not torch.equal(a, b) for a, b in zip(after, before))   # it trained


# ---- packing: auto, MFU -----------------------------------------------------------------------

def _info(kind, supported=True):
    return ModelInfo(model="m", backend="b", device=kind, dtype="float32", quantization="none", total_params=1,
                     vocab_size=1, device_kind=kind, packing_supported=supported, config={"model_type": "x"})


def test_packing_auto_is_on_for_accelerators_off_on_cpu():
    assert resolve_packing("auto", _info("cuda"))[0] is True
    assert resolve_packing("auto", _info("metal"))[0] is True
    assert resolve_packing("auto", _info("cpu"))[0] is False
    assert resolve_packing("auto", _info("cuda", supported=False))[0] is False
    assert resolve_packing(True, _info("cpu")) == (True, "set in the config")


def test_started_and_steps_say_dtype_packing_and_mfu(demo_bundle, tmp_path):
    pytest.importorskip("torch")
    from tunerd.backends.torch import TorchBackend
    from tunerd.training import events as ev
    from tunerd.training.loop import train

    cfg = TrainConfig(model=demo_bundle["model"], output_dir=str(tmp_path / "run"), max_steps=4, logging_steps=2,
                      eval_strategy="no", save_strategy="no", per_device_train_batch_size=4, backend="torch",
                      data=DataConfig(train=demo_bundle["train"], validation=demo_bundle["valid"]))
    events = []
    train(cfg, TorchBackend(), events.append)
    started = next(e for e in events if isinstance(e, ev.Started))
    assert started.dtype == "float32" and started.dtype_reason == "the checkpoint is float32"
    assert started.packing is False and "CPU" in started.packing_reason
    assert started.peak_tflops > 0.01
    steps = [e for e in events if isinstance(e, ev.Step)]
    assert steps and all(e.tflops > 0 and 0 < e.mfu < 1 for e in steps)
    resolved = json.loads((tmp_path / "run" / "config.json").read_text())
    assert resolved["dtype"] == "float32" and resolved["packing"] is False


def test_measuring_the_peak_leaves_the_global_rngs_alone():
    torch = pytest.importorskip("torch")
    mx = pytest.importorskip("mlx.core")
    from tunerd.backends.mlx.peak import measure_peak as mlx_peak
    from tunerd.backends.torch.peak import measure_peak as torch_peak

    torch.manual_seed(1)
    mx.random.seed(1)
    torch_peak("cpu", "float32")
    mlx_peak("Device(cpu, 0)", "float32")
    t, m = torch.rand(3), mx.random.uniform(shape=(3,))
    torch.manual_seed(1)
    mx.random.seed(1)
    assert torch.equal(t, torch.rand(3)) and mx.array_equal(m, mx.random.uniform(shape=(3,)))
