"""Chat special tokens added by a built-in template (DESIGN.md §4): the embeddings grow, the new
rows train, and they are saved with the adapter (own_base: added_tokens.safetensors +
tokenizer) so that `load_adapter` on a fresh backend reproduces the trained model.

The tiny demo tokenizer is ChatML; `data.template: llama3` needs four tokens it lacks."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from backend_utils import logits
from tunerd.backends import adapter_layout as layout, own_base
from tunerd.backends.base import ModelSpec
from tunerd.config.schema import DataConfig, TrainConfig
from tunerd.training import events as ev
from tunerd.training.loop import train

LLAMA3_TOKENS = ["<|begin_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"]
PROBE = [{"role": "user", "content": "What is the capital of Zorblax?"}]


def _cfg(bundle, out, **kw):
    base = dict(model=bundle["model"], output_dir=str(out), learning_rate=1e-2, lora_r=8, lora_alpha=16,
                lora_target_modules="all-linear", max_steps=40, per_device_train_batch_size=4, logging_steps=1,
                eval_strategy="no", save_strategy="no", warmup_steps=2, seed=0,
                data=DataConfig(train=bundle["train"], validation=bundle["valid"], template="llama3"))
    base.update(kw)
    return TrainConfig(**base)


def _make(name):
    if name == "torch":
        pytest.importorskip("peft")
        from tunerd.backends.torch import TorchBackend
        return TorchBackend()
    pytest.importorskip("mlx.core")
    from tunerd.backends.mlx import MLXBackend
    return MLXBackend()


def _logits(be, ids) -> np.ndarray:
    return logits(be, ids)[-1]


@pytest.fixture(scope="module", params=["torch", "mlx"])
def trained(request, demo_bundle, tmp_path_factory):
    be = _make(request.param)
    cfg = _cfg(demo_bundle, tmp_path_factory.mktemp(f"added-{request.param}"))
    seen = []
    fin = train(cfg, be, seen.append)
    return {"name": request.param, "cfg": cfg, "backend": be, "finished": fin, "events": seen}


def _probe_ids(tok):
    ids = tok.apply_chat_template(PROBE, tokenize=True, add_generation_prompt=True)
    return list(ids["input_ids"] if hasattr(ids, "keys") else ids)


def test_training_adds_tokens_and_learns(trained, tiny_tokenizer):
    losses = [e.loss for e in trained["events"] if isinstance(e, ev.Step)]
    assert np.mean(losses[-4:]) < 0.6 * np.mean(losses[:2])
    tok = trained["backend"].tokenizer
    assert len(tok) == len(tiny_tokenizer) + 4
    assert all(t in tok.get_vocab() for t in LLAMA3_TOKENS)


def test_adapter_holds_the_new_rows_and_tokenizer(trained, tiny_tokenizer):
    adapter = Path(trained["finished"].adapter_path)
    added = own_base.read_added_tokens(adapter)
    assert added is not None and added["vocab_size"] == len(tiny_tokenizer) + 4
    assert added["token_ids"] == list(range(len(tiny_tokenizer), len(tiny_tokenizer) + 4))
    assert sorted(added["tokens"]) == sorted(LLAMA3_TOKENS) and added["end_of_turn"] == "<|eot_id|>"
    hidden = json.loads((Path(trained["cfg"].model) / "config.json").read_text())["hidden_size"]
    assert added["embed_tokens"].shape == (4, hidden) and added["lm_head"].shape == (4, hidden)
    # trained: the rows moved away from their (identical) mean initialisation
    assert np.ptp(added["embed_tokens"], axis=0).max() > 1e-4
    assert own_base.read_added_tokens(adapter / "mlx")["dir"] == adapter
    from transformers import AutoTokenizer

    saved = AutoTokenizer.from_pretrained(adapter)
    assert len(saved) == len(tiny_tokenizer) + 4 and "<|start_header_id|>" in (saved.chat_template or "")
    # the LoRA tensors still convert between layouts (the rows are not in them)
    _, weights = layout.read_adapter(adapter, prefer="peft")
    assert weights and all(k.endswith((".lora_a", ".lora_b")) for k in weights)


@pytest.mark.parametrize("into", ["torch", "mlx"])
def test_load_adapter_reproduces_the_trained_model(trained, into):
    be, cfg = trained["backend"], trained["cfg"]
    ids = _probe_ids(be.tokenizer)
    assert ids[0] == be.tokenizer.convert_tokens_to_ids("<|begin_of_text|>")
    want = _logits(be, ids)
    fresh = _make(into)
    fresh.load(ModelSpec(model=cfg.model, backend=into))
    fresh.load_adapter(Path(trained["finished"].adapter_path))
    assert len(fresh.tokenizer) == want.shape[-1]
    assert _probe_ids(fresh.tokenizer) == ids
    got = _logits(fresh, ids)
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, atol=2e-3 * max(1.0, np.abs(want).max()))


def test_generation_stops_at_the_added_end_of_turn(trained):
    """40 steps teach the demo answers and their <|eot_id|>: generation ends there ("stop"), in the
    trained backend and in a fresh one that loaded the adapter (its tokenizer + stop token)."""
    from tunerd.backends.generation import Sampling

    be, cfg = trained["backend"], trained["cfg"]
    fresh = _make(be.name)
    fresh.load(ModelSpec(model=cfg.model, backend=be.name))
    fresh.load_adapter(Path(trained["finished"].adapter_path))
    texts = []
    for b in (be, fresh):
        eot = b.tokenizer.convert_tokens_to_ids("<|eot_id|>")
        chunks = list(b.generate(_probe_ids(b.tokenizer), Sampling(max_tokens=40)))
        assert chunks[-1].finish_reason == "stop" and chunks[-1].token_id == eot
        texts.append("".join(c.text for c in chunks))
    assert texts[0] == texts[1] and "<|" not in texts[0]


@pytest.mark.parametrize("name", ["torch", "mlx"])
def test_quantized_base_and_resume_keep_the_rows(name, demo_bundle, tmp_path):
    """4-bit base (bnb nf4 / MLX affine: the MLX embedding itself is quantized, the new rows are
    not) with a checkpoint: resuming restores the rows, and the final adapter reloads exactly."""
    if name == "torch":
        pytest.importorskip("bitsandbytes")
    kw = dict(quantization="4bit", group_size=32, max_steps=6, save_strategy="steps", save_steps=3)
    full = []
    fin = train(_cfg(demo_bundle, tmp_path / "a", **kw), _make(name), full.append)
    be = _make(name)
    n = [0]

    def stop():
        n[0] += 1
        return n[0] > 4
    from tunerd.training.loop import TrainingCancelled
    try:
        train(_cfg(demo_bundle, tmp_path / "b", **kw), _make(name), lambda e: None, should_stop=stop)
    except TrainingCancelled:
        pass
    resumed = []
    fin_b = train(_cfg(demo_bundle, tmp_path / "b", resume_from_checkpoint="latest", **kw), be, resumed.append)
    a = [e.loss for e in full if isinstance(e, ev.Step)]
    b = [e.loss for e in resumed if isinstance(e, ev.Step)]
    assert b and np.allclose(a[-len(b):], b, rtol=1e-4, atol=1e-5)
    ra, rb = (own_base.read_added_tokens(f.adapter_path) for f in (fin, fin_b))
    np.testing.assert_allclose(ra["embed_tokens"], rb["embed_tokens"], atol=1e-5)
    ids = _probe_ids(be.tokenizer)
    fresh = _make(name)
    fresh.load(ModelSpec(model=demo_bundle["model"], backend=name, quantization="4bit", group_size=32))
    fresh.load_adapter(Path(fin_b.adapter_path))
    want, got = _logits(be, ids), _logits(fresh, ids)
    np.testing.assert_allclose(got, want, atol=2e-3 * max(1.0, np.abs(want).max()))


@pytest.mark.parametrize("fuser", ["torch", "mlx"])
def test_fuse_writes_the_grown_vocabulary(trained, tmp_path, fuser):
    """The fused model (either backend fuses it) has the new rows and tokenizer."""
    if trained["name"] != "torch":
        pytest.skip("one source is enough")
    pytest.importorskip("mlx.core" if fuser == "mlx" else "peft")
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from tunerd.export.fuse import fuse

    be, cfg = trained["backend"], trained["cfg"]
    out = fuse(cfg.model, Path(trained["finished"].adapter_path), tmp_path / "fused", backend=fuser)
    tok = AutoTokenizer.from_pretrained(out)
    ids = _probe_ids(tok)
    assert ids == _probe_ids(be.tokenizer)
    hf = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32)
    with torch.no_grad():
        got = hf(torch.tensor([ids])).logits[0, -1].numpy()
    want = _logits(be, ids)
    np.testing.assert_allclose(got, want, atol=2e-3 * max(1.0, np.abs(want).max()))
    eot = tok.convert_tokens_to_ids("<|eot_id|>")
    eos = hf.generation_config.eos_token_id
    assert eot in (eos if isinstance(eos, list) else [eos])
