"""Every model family on both backends (issue 17): a tiny random model of each family
(backends/families.py FAMILIES, built by demo/tiny.py) trains a few LoRA steps with the loss going
down, saves its adapter in both layouts, and a fresh backend of each kind reloads each layout alone
(the trained logits again) and chats. Driven through the Backend interface, as
tests/test_backend_contract.py does; the README's families x backends table is what this file
proves. A family a backend cannot run is refused at submit, naming the backend that can."""
from __future__ import annotations

import importlib.util
import shutil

import numpy as np
import pytest
from backend_utils import batches, logits, make, train_steps
from tunerd.backends.base import ModelSpec, Sampling
from tunerd.backends.registry import get_backend
from tunerd.data.batch import collate
from tunerd.backends.families import FAMILIES
from tunerd.demo.tiny import FAMILY_CLASSES, TinyModelSpec, build_tiny_model
from tunerd.export.fuse import fuse

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
    """Packed rows give the unpacked loss; a few steps lower it; then both layouts alone, read by
    both backends, applied alone (`load_adapter`, what fuse does) and as chat attaches them beside
    each other on one base (`attach_adapter`), and the model fused by the training backend: the
    trained logits again (the other backend is a second implementation of the family, so this also
    checks that both read the config alike), and chat replies."""
    readers = [b for b in (backend, "torch" if backend == "mlx" else "mlx")
               if importlib.util.find_spec("mlx" if b == "mlx" else "peft")]
    if backend not in readers:
        pytest.skip(f"{backend} is not installed")
    bundle = family_bundle(family_dirs, demo_bundle, tmp_path_factory, family)
    cfg, be, (train, valid) = make(backend, bundle, learning_rate=1e-2)
    if not (backend == "mlx" and family == "gpt2"):   # mlx packs RoPE families only (a clear error otherwise)
        pad = be.tokenizer.pad_token_id
        separate = sum(be.eval_loss(collate([r], pad))[0] for r in train[:6])
        assert be.eval_loss(collate(train[:6], pad, pack_into=256))[0] == pytest.approx(separate, rel=1e-5)
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

    def fresh(reader, model=bundle["model"]):
        other = get_backend(reader)
        other.load(ModelSpec(model=str(model), dtype="float32"))
        return other

    fused = fuse(bundle["model"], tmp_path / "adapter", tmp_path / "fused", backend=backend)

    for reader in readers:
        atol = 1e-5 if reader == backend else CROSS_ATOL
        for only in ("peft", "mlx"):
            other = fresh(reader)
            other.load_adapter(tmp_path / only)
            np.testing.assert_allclose(logits(other, ids), want, atol=atol, err_msg=f"{only} layout, {reader} load")
        chat = fresh(reader)
        for only in ("peft", "mlx"):
            chat.attach_adapter(only, tmp_path / only)
        for only in ("peft", "mlx"):
            with chat.using(only):
                np.testing.assert_allclose(logits(chat, ids), want, atol=atol, err_msg=f"{only} layout, {reader} attach")
            chunks = [c for c in chat.generate(prompt, Sampling(max_tokens=6), adapter=only) if c.token_id >= 0]
            assert chunks and chunks[-1].finish_reason in ("stop", "length"), (reader, only)
        np.testing.assert_allclose(logits(fresh(reader, fused), ids), want, atol=atol, err_msg=f"fused, {reader}")


@pytest.mark.parametrize("backend", ["mlx", "torch"])
def test_a_gpt2_full_fine_tune_reads_on_both_backends(backend, family_dirs, demo_bundle, tmp_path_factory, tmp_path):
    """The family whose module names differ (mlx-lm model.h.N Linear, transformers transformer.h.N
    Conv1D): the standalone model a full fine-tune writes loads on either backend, as an adapter
    and as a model, with the trained logits."""
    for b in ("mlx", "torch"):
        pytest.importorskip("mlx.core" if b == "mlx" else "peft")
    bundle = family_bundle(family_dirs, demo_bundle, tmp_path_factory, "gpt2")
    cfg, be, (train, valid) = make(backend, bundle, peft_adapter="full", learning_rate=1e-3)
    losses = train_steps(be, batches(be, train), cfg.learning_rate, 4)
    assert losses[-1] < losses[0]
    be.save_adapter(tmp_path / "full")
    want = logits(be, valid[0][0])
    for reader in ("mlx", "torch"):
        other = get_backend(reader)
        other.load(ModelSpec(model=bundle["model"], dtype="float32"))
        other.load_adapter(tmp_path / "full")
        np.testing.assert_allclose(logits(other, valid[0][0]), want, atol=CROSS_ATOL, err_msg=reader)
        alone = get_backend(reader)
        alone.load(ModelSpec(model=str(tmp_path / "full"), dtype="float32"))
        np.testing.assert_allclose(logits(alone, valid[0][0]), want, atol=CROSS_ATOL, err_msg=reader)


def test_every_family_has_a_tiny_model():
    assert set(FAMILY_CLASSES) == set(FAMILIES)


def test_mlx_gets_the_config_keys_transformers_5_no_longer_writes():
    """mlx-lm reads GPT-2's n_ctx and rope_theta / rope_scaling / Gemma 3's sliding-window pattern
    under their 4.x names: filled in from what transformers 5 writes (not over what is there)."""
    pytest.importorskip("mlx_lm")
    from tunerd.backends.mlx.model import legacy_config_keys

    assert legacy_config_keys({"model_type": "gpt2", "n_positions": 1024}) == {"n_ctx": 1024}
    assert legacy_config_keys({"model_type": "gpt2", "n_positions": 1024, "n_ctx": 512}) == {}
    llama3 = {"rope_type": "llama3", "rope_theta": 500000.0, "factor": 32.0}
    assert legacy_config_keys({"model_type": "llama", "rope_parameters": llama3}) == {
        "rope_theta": 500000.0, "rope_scaling": {"rope_type": "llama3", "type": "llama3", "factor": 32.0}}
    gemma3 = {"model_type": "gemma3_text", "layer_types": ["sliding_attention"] * 5 + ["full_attention"] * 1,
              "rope_parameters": {"full_attention": {"rope_type": "default", "rope_theta": 1e6},
                                  "sliding_attention": {"rope_type": "default", "rope_theta": 1e4}}}
    assert legacy_config_keys(gemma3) == {"rope_theta": 1e6, "rope_local_base_freq": 1e4,
                                          "sliding_window_pattern": 6}


@pytest.mark.parametrize("model_type, backend, other", [("bloom", "mlx", "torch"), ("openelm", "torch", "mlx")])
def test_a_family_the_backend_cannot_run_is_refused_at_submit(tmp_path, model_type, backend, other):
    """bloom: transformers has it, mlx-lm not; openelm the other way round (without remote code)."""
    import json

    from jobs_fakes import FakeTrainer, job_doc
    from tunerd.config.loader import ConfigError
    from tunerd.core import Core

    for b in (backend, other):
        pytest.importorskip("mlx_lm" if b == "mlx" else "transformers")
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text(json.dumps({"model_type": model_type}))
    core = Core(tmp_path, run_training=FakeTrainer())
    try:
        with pytest.raises(ConfigError) as e:
            core.submit(doc=job_doc(model, backend=backend), base_dir=str(tmp_path))
        assert e.value.problems == [e.value.problems[0]]
        msg = e.value.problems[0]
        assert msg.startswith(f"model: the {backend} backend cannot run a model of family '{model_type}'"), msg
        assert msg.endswith(f"the {other} backend runs it: set backend: {other}"), msg
        assert not core.list_jobs()
    finally:
        core.shutdown(5)


@pytest.mark.parametrize("model_type, backend, other", [("bloom", "mlx", "torch"), ("openelm", "torch", "mlx")])
def test_a_family_the_backend_cannot_run_is_refused_before_a_chat_load(tmp_path, model_type, backend, other):
    """The same refusal when chat asks the registry to load such a model: before the backend tries
    (and fails with its library's own message)."""
    import json

    from tunerd.config.loader import ConfigError
    from tunerd.models.registry import ModelRegistry

    for b in (backend, other):
        pytest.importorskip("mlx_lm" if b == "mlx" else "transformers")
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text(json.dumps({"model_type": model_type}))
    reg = ModelRegistry(lambda cfg: backend)
    with pytest.raises(ConfigError) as e:
        reg.get(str(model), backend=backend)
    assert e.value.problems[0].startswith(f"model: the {backend} backend cannot run a model of family "
                                          f"'{model_type}'"), e.value.problems
    assert not reg.snapshot()


@pytest.mark.parametrize("config, needle", [
    ({"model_type": "gpt2", "n_embd": 64, "n_inner": 128}, "this model's n_inner is 128"),
    ({"model_type": "gemma3_text", "num_hidden_layers": 2, "layer_types": ["sliding_attention"] * 2},
     "needs at least sliding_window_pattern = 6 layers, this model has 2"),
])
def test_shapes_mlx_lm_cannot_build_are_named_too(config, needle):
    pytest.importorskip("mlx_lm")
    pytest.importorskip("transformers")
    from tunerd.backends.families import family_problem

    msg = family_problem(config, "mlx")
    assert needle in msg and msg.endswith("the torch backend runs it: set backend: torch"), msg
    assert family_problem(config, "torch") is None
