"""The MLX backend on the tiny demo model: learning, packing, adapters in both layouts, fuse, resume."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

mx = pytest.importorskip("mlx.core")

from tunerd.backends.mlx import MLXBackend  # noqa: E402
from tunerd.backends.base import Sampling  # noqa: E402
from tunerd.config.schema import DataConfig, TrainConfig  # noqa: E402
from tunerd.data.batch import collate  # noqa: E402
from tunerd.data.prepare import iterate_batches, prepare  # noqa: E402
from tunerd.training import events as ev  # noqa: E402
from tunerd.training.loop import TrainingCancelled, train  # noqa: E402

PROMPT = [{"role": "user", "content": "What is the capital of Zorblax?"}]
# The demo task: 32 made-up facts; validation = 8 of them. A random base scores ~ln(vocab) = 6.2
# nats/token on the answers; 40 LoRA steps reach ~1.7. Asserted margin: eval loss falls >= 2.5 nats.
LEARN_MARGIN = 2.5


def _cfg(bundle, out, **kw):
    base = dict(model=bundle["model"], output_dir=str(out), learning_rate=1e-2, lora_r=8, lora_alpha=16,
                lora_target_modules="all-linear", max_steps=40, per_device_train_batch_size=4, logging_steps=1,
                eval_strategy="steps", eval_steps=40, save_strategy="no", warmup_steps=2, group_size=32,
                data=DataConfig(train=bundle["train"], validation=bundle["valid"]))
    base.update(kw)
    return TrainConfig(**base)


def _base_eval_loss(cfg) -> float:
    be = MLXBackend()
    be.load(ModelSpec.from_config(cfg))
    be.add_adapter(cfg)
    data = prepare(cfg, be.tokenizer)
    sums = [be.eval_loss(b) for b in iterate_batches(data.validation, 8, be.tokenizer.pad_token_id, shuffle=False)]
    return sum(s for s, _ in sums) / sum(n for _, n in sums)


def _logits(be: MLXBackend, ids) -> np.ndarray:
    return np.array(be.model(mx.array([ids]))[0, -1].astype(mx.float32))


@pytest.fixture(scope="module", params=["lora", "dora", "qlora4"])
def trained(request, demo_bundle, tmp_path_factory):
    kind = request.param
    extra = {"lora": {}, "dora": {"peft_adapter": "dora"}, "qlora4": {"quantization": "4bit"}}[kind]
    cfg = _cfg(demo_bundle, tmp_path_factory.mktemp(kind), **extra)
    seen = []
    be = MLXBackend()
    fin = train(cfg, be, seen.append)
    return {"kind": kind, "cfg": cfg, "backend": be, "finished": fin, "events": seen}


def test_adapters_learn_the_demo_task(trained):
    base = _base_eval_loss(trained["cfg"])
    final = [e for e in trained["events"] if isinstance(e, ev.Eval)][-1].eval_loss
    assert base > 5.5
    assert final < base - LEARN_MARGIN, (trained["kind"], base, final)
    started = [e for e in trained["events"] if isinstance(e, ev.Started)][0]
    assert 0 < started.trainable_params < started.total_params


def test_peft_layout_loads_in_transformers_with_same_logits(trained, tiny_tokenizer):
    if trained["kind"] == "qlora4":
        pytest.skip("a 4-bit MLX base has no exact float HF twin; covered by lora and dora")
    torch = pytest.importorskip("torch")
    peft = pytest.importorskip("peft")
    from transformers import AutoModelForCausalLM

    adapter = Path(trained["finished"].adapter_path)
    assert (adapter / "adapter_model.safetensors").exists() and (adapter / "mlx" / "adapters.safetensors").exists()
    ids = tiny_tokenizer.apply_chat_template(PROMPT, add_generation_prompt=True, tokenize=True)
    ids = list(ids["input_ids"] if hasattr(ids, "keys") else ids)
    hf = AutoModelForCausalLM.from_pretrained(trained["cfg"].model, torch_dtype=torch.float32)
    pm = peft.PeftModel.from_pretrained(hf, str(adapter)).eval()
    with torch.no_grad():
        want = pm(torch.tensor([ids])).logits[0, -1].numpy()
    got = _logits(trained["backend"], ids)
    np.testing.assert_allclose(got, want, atol=2e-4)
    # and the reverse: a fresh MLX backend reading the PEFT layout only
    be = MLXBackend()
    be.load(ModelSpec.from_config(trained["cfg"]))
    import shutil
    peft_only = adapter.parent / "peft-only"
    shutil.copytree(adapter, peft_only, ignore=shutil.ignore_patterns("mlx"))
    be.load_adapter(peft_only)
    np.testing.assert_allclose(_logits(be, ids), want, atol=2e-4)


def test_mlx_layout_loads_in_mlx_lm_and_fuse_loads_in_both(trained, tmp_path):
    from mlx_lm import load

    from tunerd.export.fuse import fuse

    cfg, adapter = trained["cfg"], Path(trained["finished"].adapter_path)
    ids = [5, 17, 42, 99, 3]
    model, _ = load(cfg.model, adapter_path=str(adapter / "mlx"))
    via_mlx_lm = np.array(model(mx.array([ids]))[0, -1])
    if trained["kind"] != "qlora4":  # (the QLoRA run trained on a 4-bit base; mlx_lm.load gives the float one)
        np.testing.assert_allclose(via_mlx_lm, _logits(trained["backend"], ids), atol=1e-4)
    out = fuse(cfg.model, adapter, tmp_path / "fused")
    fused, _ = load(str(out))
    np.testing.assert_allclose(np.array(fused(mx.array([ids]))[0, -1]), via_mlx_lm, atol=1e-4)
    torch = pytest.importorskip("torch")
    from transformers import AutoModelForCausalLM
    hf = AutoModelForCausalLM.from_pretrained(out, torch_dtype=torch.float32)
    with torch.no_grad():
        np.testing.assert_allclose(hf(torch.tensor([ids])).logits[0, -1].numpy(), via_mlx_lm, atol=1e-4)


def test_packed_loss_equals_unpacked(demo_bundle, tmp_path):
    cfg = _cfg(demo_bundle, tmp_path)
    be = MLXBackend()
    be.load(ModelSpec.from_config(cfg))
    be.add_adapter(cfg)
    rows = prepare(cfg, be.tokenizer).train[:6]
    pairs = [(r.ids, r.mask) for r in rows]
    pad = be.tokenizer.pad_token_id
    packed = collate(pairs, pad, pack_into=256)
    assert packed.is_packed and packed.inputs.shape[0] == 1
    separate = [be.eval_loss(collate([p], pad)) for p in pairs]
    loss_p, n_p = be.eval_loss(packed)
    assert n_p == sum(n for _, n in separate)
    assert loss_p == pytest.approx(sum(s for s, _ in separate), rel=1e-5)
    padded = collate(pairs, pad)  # right-padded rows in one batch: padding changes nothing either
    assert be.eval_loss(padded)[0] == pytest.approx(loss_p, rel=1e-5)


def test_accumulated_micro_batches_equal_one_batch(demo_bundle, tmp_path):
    def run(groups):
        cfg = _cfg(demo_bundle, tmp_path, max_grad_norm=0.5)
        be = MLXBackend()
        be.load(ModelSpec.from_config(cfg))
        be.add_adapter(cfg)
        rows = [(r.ids, r.mask) for r in prepare(cfg, be.tokenizer).train[:4]]
        batches = [collate(rows[i:j], be.tokenizer.pad_token_id) for i, j in groups]
        for b in batches:
            be.forward_backward(b)
        norm = be.optimizer_step(1e-2, 1.0 / sum(b.n_targets for b in batches), 0.5)
        return norm, _logits(be, [5, 6, 7, 8])

    n1, l1 = run([(0, 4)])
    n2, l2 = run([(0, 1), (1, 3), (3, 4)])
    assert n1 == pytest.approx(n2, rel=1e-5)
    np.testing.assert_allclose(l1, l2, atol=1e-5)


def test_resume_after_cancel_matches_uninterrupted_run(demo_bundle, tmp_path):
    kw = dict(max_steps=12, gradient_accumulation_steps=2, per_device_train_batch_size=3, lora_dropout=0.1,
              lr_scheduler_type="cosine", eval_strategy="no", lora_target_modules=["q_proj", "v_proj"])
    full = []
    train(_cfg(demo_bundle, tmp_path / "a", **kw), MLXBackend(), full.append)
    n = {"calls": 0}

    def stop():
        n["calls"] += 1
        return n["calls"] > 6

    with pytest.raises(TrainingCancelled) as info:
        train(_cfg(demo_bundle, tmp_path / "b", **kw), MLXBackend(), lambda e: None, should_stop=stop)
    assert info.value.step == 6
    resumed = []
    train(_cfg(demo_bundle, tmp_path / "b", resume_from_checkpoint="latest", **kw), MLXBackend(), resumed.append)
    a = [e.loss for e in full if isinstance(e, ev.Step)][6:]
    b = [e.loss for e in resumed if isinstance(e, ev.Step)]
    assert len(b) == 6
    np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-6)


def test_generate_streams_and_honours_stop_strings(trained, tiny_tokenizer):
    if trained["kind"] != "lora":
        pytest.skip("one adapter kind is enough")
    be = trained["backend"]
    ids = tiny_tokenizer.apply_chat_template(PROMPT, add_generation_prompt=True, tokenize=True)
    ids = list(ids["input_ids"] if hasattr(ids, "keys") else ids)
    chunks = list(be.generate(ids, Sampling(max_tokens=12)))
    text = "".join(c.text for c in chunks)
    assert chunks[-1].finish_reason in ("stop", "length") and all(c.finish_reason is None for c in chunks[:-1])
    assert text
    cut = text[len(text) // 2:len(text) // 2 + 2]
    if cut.strip():
        stopped = list(be.generate(ids, Sampling(max_tokens=12, stop=[cut])))
        assert stopped[-1].finish_reason == "stop"
        assert "".join(c.text for c in stopped) == text[:text.index(cut)]
    sampled = list(be.generate(ids, Sampling(max_tokens=5, temperature=0.8, top_p=0.9, seed=1)))
    again = list(be.generate(ids, Sampling(max_tokens=5, temperature=0.8, top_p=0.9, seed=1)))
    assert [c.token_id for c in sampled] == [c.token_id for c in again]
    cancelled = list(be.generate(ids, Sampling(max_tokens=12), should_stop=lambda: True))
    assert cancelled[-1].finish_reason == "cancelled"


def test_8bit_gradient_checkpointing_and_optimizers(demo_bundle, tmp_path):
    losses = {}
    for name, kw in {"adamw": {}, "ckpt": {"gradient_checkpointing": True},
                     "8bit": {"quantization": "8bit"}, "lion": {"optimizer": "lion", "learning_rate": 1e-3},
                     "sgd": {"optimizer": "sgd"}, "adafactor": {"optimizer": "adafactor"}}.items():
        seen = []
        train(_cfg(demo_bundle, tmp_path / name, max_steps=3, eval_strategy="no", **kw), MLXBackend(), seen.append)
        losses[name] = [e.loss for e in seen if isinstance(e, ev.Step)]
        assert all(np.isfinite(losses[name])), name
    np.testing.assert_allclose(losses["ckpt"], losses["adamw"], rtol=1e-5)


def test_blas_warning_names_the_fix():
    maps = Path("/proc/self/maps").read_text().lower() if Path("/proc/self/maps").exists() else ""
    w = blas_warning()
    if "openblas" in maps or not maps:
        assert w is None
    else:
        assert "LD_PRELOAD" in w


def test_fuse_refuses_a_quantized_base_unless_dequantized(trained, tmp_path):
    if trained["kind"] != "lora":
        pytest.skip("one adapter kind is enough")
    import json
    import shutil

    import mlx.nn as nn
    from mlx_lm.utils import load, quantize_model, save_config, save_model

    from tunerd.export.fuse import FuseError, fuse

    src = Path(trained["cfg"].model)
    model, _, config = load(str(src), return_config=True)
    model, config = quantize_model(model, config, group_size=32, bits=4)
    q = tmp_path / "base-4bit"
    save_model(q, model)
    save_config(config, q / "config.json")
    for f in src.glob("tokenizer*"):
        shutil.copy(f, q / f.name)
    adapter = trained["finished"].adapter_path
    with pytest.raises(FuseError, match="1172"):
        fuse(q, adapter, tmp_path / "out")
    out = fuse(q, adapter, tmp_path / "out", dequantize=True)
    fused, _ = load(str(out))
    assert "quantization" not in json.loads((out / "config.json").read_text())
    assert not any(isinstance(m, nn.QuantizedLinear) for _, m in fused.named_modules())


def test_last_n_layers_and_rslora_round_trip_through_peft(demo_bundle, tmp_path):
    torch = pytest.importorskip("torch")
    peft = pytest.importorskip("peft")
    from transformers import AutoModelForCausalLM

    cfg = _cfg(demo_bundle, tmp_path, num_layers=1, use_rslora=True, lora_r=4, lora_alpha=8,
               lora_target_modules=["q_proj", "down_proj"])
    be = MLXBackend()
    be.load(ModelSpec.from_config(cfg))
    be.add_adapter(cfg)
    rows = [(r.ids, r.mask) for r in prepare(cfg, be.tokenizer).train[:4]]
    for _ in range(3):
        b = collate(rows, be.tokenizer.pad_token_id)
        be.forward_backward(b)
        be.optimizer_step(3e-2, 1.0 / b.n_targets, 1.0)
    be.save_adapter(tmp_path / "ad")
    ids = rows[0][0][:12]
    hf = AutoModelForCausalLM.from_pretrained(cfg.model, torch_dtype=torch.float32)
    pm = peft.PeftModel.from_pretrained(hf, str(tmp_path / "ad")).eval()
    assert pm.peft_config["default"].layers_to_transform == [1] and pm.peft_config["default"].use_rslora
    with torch.no_grad():
        np.testing.assert_allclose(_logits(be, ids), pm(torch.tensor([ids])).logits[0, -1].numpy(), atol=2e-4)


def test_full_fine_tuning_writes_a_standalone_model(demo_bundle, tmp_path):
    torch = pytest.importorskip("torch")
    from transformers import AutoModelForCausalLM

    seen = []
    cfg = _cfg(demo_bundle, tmp_path / "run", peft_adapter="full", learning_rate=1e-3, max_steps=4, eval_steps=2,
               save_strategy="steps", save_steps=2, save_total_limit=1)
    be = MLXBackend()
    fin = train(cfg, be, seen.append)
    started = [e for e in seen if isinstance(e, ev.Started)][0]
    assert started.trainable_params == started.total_params
    ids = [5, 17, 42, 99, 3]
    hf = AutoModelForCausalLM.from_pretrained(fin.adapter_path, torch_dtype=torch.float32)
    with torch.no_grad():
        np.testing.assert_allclose(hf(torch.tensor([ids])).logits[0, -1].numpy(), _logits(be, ids), atol=1e-4)
    other = MLXBackend()
    other.load(ModelSpec.from_config(cfg))
    other.load_adapter(Path(fin.adapter_path))
    np.testing.assert_allclose(_logits(other, ids), _logits(be, ids), atol=1e-5)
    resumed = train(_cfg(demo_bundle, tmp_path / "run", peft_adapter="full", learning_rate=1e-3, max_steps=6,
                         resume_from_checkpoint="latest", eval_strategy="no", save_strategy="no"), MLXBackend(),
                    lambda e: None)
    assert resumed.steps == 6
