"""Every model family on both backends (issue 17): a tiny random model of each family (demo/tiny.py
FAMILIES) trains a few LoRA steps with the loss going down, saves its adapter in both layouts,
and a fresh backend reloads each layout alone (the same logits as the trained one) and chats.
Driven through the Backend interface, as tests/test_backend_contract.py does; the README's
families x backends table is what this file proves."""
from __future__ import annotations

import importlib.util
import shutil

import numpy as np
import pytest
from backend_utils import batches, logits, make, train_steps
from tunerd.backends.base import ModelSpec, Sampling
from tunerd.backends.registry import get_backend
from tunerd.demo.tiny import FAMILIES, TinyModelSpec, build_tiny_model

CROSS_ATOL = 2e-4   # as in test_backend_contract.py: a second implementation of the same model


@pytest.fixture(scope="module")
def family_dirs(tmp_path_factory):
    """family -> its tiny model folder (built once: the tokenizer is trained on the demo facts)."""
    return {}


def family_bundle(family_dirs, demo_bundle, tmp_path_factory, family):
    if family not in family_dirs:
        family_dirs[family] = str(build_tiny_model(tmp_path_factory.mktemp(family),
                                                   spec=TinyModelSpec(family=family)))
    return {**demo_bundle, "model": family_dirs[family]}


@pytest.mark.parametrize("backend", ["mlx", "torch"])
@pytest.mark.parametrize("family", list(FAMILIES))
def test_family_trains_saves_reloads_and_chats(family, backend, family_dirs, demo_bundle, tmp_path_factory,
                                               tmp_path):
    """Both layouts alone, read by both backends: the trained logits again (the other backend is a
    second implementation of the family, so this also checks that both read the config alike)."""
    readers = [b for b in (backend, "torch" if backend == "mlx" else "mlx")
               if importlib.util.find_spec("mlx" if b == "mlx" else "peft")]
    if backend not in readers:
        pytest.skip(f"{backend} is not installed")
    bundle = family_bundle(family_dirs, demo_bundle, tmp_path_factory, family)
    cfg, be, (train, valid) = make(backend, bundle, learning_rate=1e-2)
    losses = train_steps(be, batches(be, train, n_epochs=2), cfg.learning_rate, 12)
    assert np.isfinite(losses).all() and np.mean(losses[-3:]) < 0.9 * np.mean(losses[:3]), losses
    be.save_adapter(tmp_path / "adapter")
    ids = valid[0][0]
    want = logits(be, ids)
    shutil.copytree(tmp_path / "adapter", tmp_path / "peft", ignore=shutil.ignore_patterns("mlx"))
    shutil.copytree(tmp_path / "adapter" / "mlx", tmp_path / "mlx")
    prompt = be.tokenizer.apply_chat_template([{"role": "user", "content": "What is the river of Oskan?"}],
                                              add_generation_prompt=True, tokenize=True)
    prompt = list(prompt["input_ids"] if hasattr(prompt, "keys") else prompt)
    for reader in readers:
        for only in ("peft", "mlx"):
            other = get_backend(reader)
            other.load(ModelSpec(model=bundle["model"], dtype="float32"))
            other.load_adapter(tmp_path / only)
            np.testing.assert_allclose(logits(other, ids), want, atol=1e-5 if reader == backend else CROSS_ATOL,
                                       err_msg=f"the {only} layout read by {reader}")
            chunks = [c for c in other.generate(prompt, Sampling(max_tokens=6)) if c.token_id >= 0]
            assert chunks and chunks[-1].finish_reason in ("stop", "length"), (reader, only)
