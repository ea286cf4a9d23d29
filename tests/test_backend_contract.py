"""The Backend contract, once, over both real backends (tiny demo model, CPU, float32, offline).

Drives a backend as the training loop, chat and fuse do: load(ModelSpec) -> add_adapter(cfg) ->
forward_backward / optimizer_step / eval_loss -> save_adapter / load_adapter / generate / fuse.
What only one backend has (bitsandbytes variants, MLX compilation, ...) is tested in
test_torch_backend.py / test_mlx_backend.py.
"""
from __future__ import annotations

import shutil

import numpy as np
import pytest
from backend_utils import backward_bytes, batches, logits, make, train_steps
from tunerd.backends.base import FuseError, ModelSpec
from tunerd.backends.generation import Sampling
from tunerd.backends.registry import get_backend
from tunerd.config.schema import DataConfig, TrainConfig
from tunerd.data.batch import collate

# logits of the same adapter read by PEFT/transformers vs by the backend that trained it: the same
# library on both sides for torch (measured max |diff| ~1e-6), a second implementation for MLX (~5e-5)
CROSS_ATOL = 2e-4


@pytest.fixture(params=["mlx", "torch"])
def name(request):
    pytest.importorskip("mlx.core" if request.param == "mlx" else "peft")
    return request.param


def fresh(name, model, **spec):
    be = get_backend(name)
    be.load(ModelSpec(model=str(model), **spec))
    return be


@pytest.mark.parametrize("variant", ["lora", "qlora", "full"])
def test_the_training_loop_learns_and_resumes_after_a_cancel_exactly(name, demo_bundle, tmp_path, variant):
    """Through `training.loop.train`: 16 steps (2 micro-batches each) bring eval loss from ~7.0 (random
    base) to ~3.0 with LoRA or 4-bit QLoRA and ~3.6 with full fine-tuning at lr 1e-3 (measured, both
    backends), evaluating at step 8 on the way; a run cancelled at step 8 and resumed from the
    checkpoint written at the cancel replays steps 9-16 exactly (adapter, optimizer moments,
    dropout randomness, cosine schedule, accumulation)."""
    from tunerd.training import events as ev
    from tunerd.training.loop import TrainingCancelled, train

    extra = {"lora": {}, "qlora": {"quantization": "4bit"},
             "full": {"peft_adapter": "full", "learning_rate": 1e-3}}[variant]

    def cfg(out, **kw):
        base = dict(model=demo_bundle["model"], backend=name, output_dir=str(out), learning_rate=1e-2, lora_r=8,
                    lora_alpha=16, lora_target_modules="all-linear", lora_dropout=0.05, max_steps=16,
                    per_device_train_batch_size=4, gradient_accumulation_steps=2, lr_scheduler_type="cosine",
                    warmup_steps=2, logging_steps=1, eval_strategy="steps", eval_steps=8, save_strategy="no",
                    group_size=32, data=DataConfig(train=demo_bundle["train"], validation=demo_bundle["valid"]))
        return TrainConfig(**{**base, **extra, **kw})

    full = []
    train(cfg(tmp_path / "a"), get_backend(name), full.append)
    assert [e for e in full if isinstance(e, ev.Eval)][-1].eval_loss < (4.5 if variant == "full" else 4.0)
    calls = {"n": 0}

    def stop():
        calls["n"] += 1
        return calls["n"] > 8

    with pytest.raises(TrainingCancelled) as info:
        train(cfg(tmp_path / "b"), get_backend(name), lambda e: None, should_stop=stop)
    assert info.value.step == 8
    if variant != "full":
        assert (tmp_path / "b" / "checkpoint-8" / "adapter_model.safetensors").exists()   # chat can use it
    resumed = []
    train(cfg(tmp_path / "b", resume_from_checkpoint="latest"), get_backend(name), resumed.append)
    losses = lambda evs: {e.step: e.loss for e in evs if isinstance(e, ev.Step)}  # noqa: E731
    after = {s: v for s, v in losses(full).items() if s > 8}
    assert losses(resumed).keys() == after.keys()
    np.testing.assert_allclose(list(losses(resumed).values()), list(after.values()), rtol=1e-5, atol=1e-6)


def test_packed_loss_equals_unpacked_and_padding_is_inert(name, demo_bundle):
    _, be, (train, _) = make(name, demo_bundle)
    pad = be.tokenizer.pad_token_id
    rows = train[:6]
    packed = collate(rows, pad, pack_into=256)
    assert packed.is_packed and packed.inputs.shape[0] < len(rows)
    separate = [be.eval_loss(collate([r], pad)) for r in rows]
    loss_p, n_p = be.eval_loss(packed)
    assert n_p == sum(n for _, n in separate)
    assert loss_p == pytest.approx(sum(s for s, _ in separate), rel=1e-5)
    assert be.eval_loss(collate(rows, pad))[0] == pytest.approx(loss_p, rel=1e-5)   # right-padded together


def test_accumulated_micro_batches_equal_one_batch(name, demo_bundle):
    def run(groups):
        _, be, (train, _) = make(name, demo_bundle)
        parts = [collate(train[i:j], be.tokenizer.pad_token_id) for i, j in groups]
        for b in parts:
            be.forward_backward(b)
        norm = be.optimizer_step(1e-2, 1.0 / sum(b.n_targets for b in parts), 0.5)
        return norm, logits(be, [5, 6, 7, 8])

    n1, l1 = run([(0, 4)])
    n2, l2 = run([(0, 1), (1, 3), (3, 4)])
    assert n1 == pytest.approx(n2, rel=1e-5)
    np.testing.assert_allclose(l1, l2, atol=1e-5)


@pytest.mark.parametrize("kind", ["lora", "dora"])
def test_saved_adapter_loads_in_peft_and_from_either_layout(name, demo_bundle, tmp_path, kind):
    """One adapter folder, two layouts (PEFT at the top, mlx-lm's in mlx/): PEFT reads it with the
    same logits, and a fresh backend reads either layout alone. The last layer only, with rsLoRA."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    cfg, be, (train, valid) = make(name, demo_bundle, peft_adapter=kind, num_layers=1, use_rslora=True,
                                   lora_target_modules=["q_proj", "v_proj", "down_proj"])
    train_steps(be, batches(be, train), 3e-2, 5)
    be.save_adapter(tmp_path / "adapter")
    ids = valid[0][0]
    ours = logits(be, ids)
    hf = AutoModelForCausalLM.from_pretrained(cfg.model, dtype=torch.float32)
    pm = PeftModel.from_pretrained(hf, str(tmp_path / "adapter")).eval()
    assert pm.peft_config["default"].layers_to_transform == [1] and pm.peft_config["default"].use_rslora
    with torch.no_grad():
        np.testing.assert_allclose(pm(torch.tensor([ids])).logits[0].numpy(), ours, atol=CROSS_ATOL)
    shutil.copytree(tmp_path / "adapter", tmp_path / "peft_only", ignore=shutil.ignore_patterns("mlx"))
    shutil.copytree(tmp_path / "adapter" / "mlx", tmp_path / "mlx_only")
    for only in ("peft_only", "mlx_only"):
        other = fresh(name, cfg.model)
        other.load_adapter(tmp_path / only)
        np.testing.assert_allclose(logits(other, ids), ours, atol=1e-5, err_msg=only)
    try:   # and mlx-lm's own loader reads the mlx/ layout
        import mlx.core as mx
        from mlx_lm import load
    except ImportError:
        return
    model, _ = load(cfg.model, adapter_path=str(tmp_path / "adapter" / "mlx"))
    np.testing.assert_allclose(np.array(model(mx.array([ids]))[0].astype(mx.float32)), ours, atol=CROSS_ATOL)


def test_full_fine_tuning_writes_a_standalone_model(name, demo_bundle, tmp_path):
    import torch
    from transformers import AutoModelForCausalLM

    cfg, be, (train, valid) = make(name, demo_bundle, peft_adapter="full", learning_rate=1e-3)
    losses = train_steps(be, batches(be, train), cfg.learning_rate, 4)
    assert losses[-1] < losses[0]
    be.save_adapter(tmp_path / "full")
    ids = valid[0][0]
    hf = AutoModelForCausalLM.from_pretrained(tmp_path / "full", dtype=torch.float32).eval()
    with torch.no_grad():
        np.testing.assert_allclose(hf(torch.tensor([ids])).logits[0].numpy(), logits(be, ids), atol=1e-4)
    other = fresh(name, cfg.model)
    other.load_adapter(tmp_path / "full")
    np.testing.assert_allclose(logits(other, ids), logits(be, ids), atol=1e-5)


def test_generate_streams_stops_and_cancels(name, demo_bundle):
    _, be, _ = make(name, demo_bundle)
    prompt = be.tokenizer.apply_chat_template([{"role": "user", "content": "What is the river of Oskan?"}],
                                              add_generation_prompt=True, tokenize=True)
    prompt = list(prompt["input_ids"] if hasattr(prompt, "keys") else prompt)
    chunks = [c for c in be.generate(prompt, Sampling(max_tokens=12)) if c.token_id >= 0]
    assert chunks[-1].finish_reason in ("stop", "length") and all(c.finish_reason is None for c in chunks[:-1])
    text = "".join(c.text for c in chunks)
    assert len(text) >= 6, text
    stop = text[3:6]
    cut = list(be.generate(prompt, Sampling(max_tokens=12, stop=[stop])))
    assert cut[-1].finish_reason == "stop" and "".join(c.text for c in cut) == text[:text.find(stop)]
    s = Sampling(temperature=1.0, top_p=0.9, top_k=50, min_p=0.01, seed=7, max_tokens=10)
    assert [c.token_id for c in be.generate(prompt, s)] == [c.token_id for c in be.generate(prompt, s)]
    cancelled = list(be.generate(prompt, Sampling(max_tokens=12), should_stop=lambda: True))
    assert cancelled[-1].finish_reason == "cancelled"
    assert be.memory().peak_bytes > 0


@pytest.fixture(scope="module")
def deep_bundle(demo_bundle, tmp_path_factory):
    """The demo task on an 8-layer tiny model: recomputing one layer at a time must show."""
    from tunerd.demo.tiny import TinyModelSpec, build_tiny_model

    model = build_tiny_model(tmp_path_factory.mktemp("deep"), spec=TinyModelSpec(num_hidden_layers=8))
    return {**demo_bundle, "model": str(model)}


def test_gradient_checkpointing_changes_memory_not_math(name, deep_bundle):
    """Same losses step by step; far less memory for the backward pass on a batch of long rows
    (backend_utils.backward_bytes: MLX's allocator peak; on torch the tensors kept from forward
    to backward). Measured on this 8-layer model, 4 rows of ~80 tokens: MLX 17.6 -> 6.0 MB, torch
    10.8 -> 1.0 MB."""
    runs, held = [], []
    for gc in (False, True):
        cfg, be, (train, _) = make(name, deep_bundle, gradient_checkpointing=gc)
        long_rows = [(sum((r.ids for r in train[i:i + 3]), []), sum((r.mask for r in train[i:i + 3]), []))
                     for i in range(0, 12, 3)]
        held.append(backward_bytes(be, collate(long_rows, be.tokenizer.pad_token_id)))
        be.optimizer_step(cfg.learning_rate, 1e-3, 1.0)
        runs.append(train_steps(be, batches(be, train), cfg.learning_rate, 2))
    np.testing.assert_allclose(runs[0], runs[1], rtol=1e-5)
    assert held[1] < 0.5 * held[0], held


@pytest.mark.parametrize("optimizer", ["adamw", "adam", "sgd", "adafactor", "lion"])
def test_optimizers_step(name, demo_bundle, optimizer):
    cfg, be, (train, _) = make(name, demo_bundle, optimizer=optimizer, weight_decay=0.01)
    ids = [5, 6, 7, 8]
    before = logits(be, ids)
    losses = train_steps(be, batches(be, train), 1e-3, 2)
    assert np.isfinite(losses).all()
    assert np.abs(logits(be, ids) - before).max() > 0


def test_fuse_matches_the_adapter_in_both_loaders(name, demo_bundle, tmp_path):
    """`Backend.fuse` (through export.fuse): the standalone model gives the adapter's logits in
    transformers and in mlx-lm, whichever backend fused it."""
    import torch
    from transformers import AutoModelForCausalLM

    from tunerd.export.fuse import fuse

    cfg, be, (train, valid) = make(name, demo_bundle, peft_adapter="dora", lora_target_modules=["q_proj", "o_proj"])
    train_steps(be, batches(be, train), 3e-2, 5)
    be.save_adapter(tmp_path / "adapter")
    ids = valid[0][0]
    want = logits(be, ids)
    out = fuse(cfg.model, tmp_path / "adapter", tmp_path / "fused", backend=name)
    assert not list(tmp_path.glob(".tmp-*"))   # written atomically
    with torch.no_grad():
        hf = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
        np.testing.assert_allclose(hf(torch.tensor([ids])).logits[0].numpy(), want, atol=CROSS_ATOL)
    try:
        import mlx.core as mx
        from mlx_lm import load
    except ImportError:
        return
    model, _ = load(str(out))
    np.testing.assert_allclose(np.array(model(mx.array([ids]))[0].astype(mx.float32)), want, atol=CROSS_ATOL)


def test_fuse_refuses_a_quantized_base_unless_dequantized(name, demo_bundle, tmp_path):
    import json

    cfg, be, (train, _) = make(name, demo_bundle)
    train_steps(be, batches(be, train), 1e-2, 2)
    be.save_adapter(tmp_path / "adapter")
    q = fresh(name, cfg.model, quantization="4bit", group_size=32, dtype="float32")
    (tmp_path / "out").mkdir()
    with pytest.raises(FuseError, match="1172"):
        q.fuse(tmp_path / "adapter", tmp_path / "out")
    q.fuse(tmp_path / "adapter", tmp_path / "out", dequantize=True)
    config = json.loads((tmp_path / "out" / "config.json").read_text())
    assert "quantization" not in config and "quantization_config" not in config
    assert get_backend(name).load(ModelSpec(model=str(tmp_path / "out"))).quantization == "none"


def test_an_unknown_or_missing_backend_fails_clearly(monkeypatch):
    from tunerd.backends import registry
    from tunerd.backends.base import BackendUnavailable

    with pytest.raises(ValueError, match="unknown backend 'tpu'; choose auto, mlx, torch"):
        get_backend("tpu")
    monkeypatch.setitem(registry._BACKENDS, "mlx", ("no_such_module_here", "MLXBackend", "mlx and mlx-lm", "mlx"))
    with pytest.raises(BackendUnavailable, match=r"needs mlx and mlx-lm: pip install 'mactuner\[mlx\]'"):
        get_backend("mlx")


def test_model_spec_takes_the_model_fields_of_a_config():
    cfg = TrainConfig(model="m", revision="r", dtype="bfloat16", quantization="4bit", device="cpu", bits=3,
                      group_size=32, trust_remote_code=True, lora_r=99)
    spec = ModelSpec.from_config(cfg)
    assert (spec.model, spec.revision, spec.dtype, spec.quantization, spec.device, spec.bits, spec.group_size,
            spec.trust_remote_code) == ("m", "r", "bfloat16", "4bit", "cpu", 3, 32, True)
    assert ModelSpec(model="m") == ModelSpec.from_config(TrainConfig(model="m"))   # the same defaults
