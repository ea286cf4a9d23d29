"""One resident base, many adapters (issue 10): adapters attach by name to one copy of the base and
are selected per request; each gives what loading it alone gives; memory counts the base once."""
from __future__ import annotations

import gc
import json
from pathlib import Path

import numpy as np
import pytest

from tunerd.backends.adapter_layout import AdapterSpec, write_adapter
from tunerd.backends.own_base import changes_base
from tunerd.backends.base import ModelSpec
from tunerd.backends.generation import Sampling
from tunerd.backends.registry import get_backend
from tunerd.models.registry import ModelRegistry

BACKENDS = ["torch", "mlx"]


def random_adapter(out: Path, model_dir: str, seed: int, r: int = 4, targets=("q_proj", "v_proj"),
                   kind: str = "lora") -> str:
    """A LoRA adapter with random A and B (B != 0, so it changes the outputs), in both layouts."""
    cfg = json.loads((Path(model_dir) / "config.json").read_text())
    h, n = cfg["hidden_size"], cfg["num_hidden_layers"]
    kv = h // cfg["num_attention_heads"] * cfg["num_key_value_heads"]
    outs = {"q_proj": h, "k_proj": kv, "v_proj": kv, "o_proj": h}
    rng = np.random.default_rng(seed)
    w = {}
    for i in range(n):
        for t in targets:
            p = f"model.layers.{i}.self_attn.{t}"
            w[p + ".lora_a"] = rng.normal(0, 0.3, (h, r)).astype(np.float32)
            w[p + ".lora_b"] = rng.normal(0, 0.3, (r, outs[t])).astype(np.float32)
    write_adapter(out, w, AdapterSpec(kind=kind, r=r, lora_alpha=2.0 * r, target_modules=list(targets),
                                      base_model=model_dir), n_model_layers=n)
    return str(out)


def greedy(backend, ids, n=12, **kw) -> list[int]:
    """`backend`: a Backend (kw: adapter=) or a resident's `serve(name)`."""
    return [c.token_id for c in backend.generate(ids, Sampling(temperature=0.0, max_tokens=n), **kw)
            if c.token_id >= 0]


def alone(name, model_dir, adapter, ids):
    be = get_backend(name)
    be.load(ModelSpec(model=model_dir, backend=name, dtype="float32"))
    if adapter:
        be.load_adapter(Path(adapter))
    out = greedy(be, ids)
    del be
    gc.collect()
    return out


@pytest.fixture(scope="module")
def adapters(tiny_model_dir, tmp_path_factory):
    d = tmp_path_factory.mktemp("adapters")
    return (random_adapter(d / "a", tiny_model_dir, 1),
            random_adapter(d / "b", tiny_model_dir, 2, r=2, targets=("q_proj", "k_proj", "o_proj")))


@pytest.mark.parametrize("name", BACKENDS)
def test_two_adapters_share_one_base_and_each_answers_as_alone(name, tiny_model_dir, tiny_tokenizer, adapters):
    a, b = adapters
    ids = tiny_tokenizer("The capital of Zorblax is")["input_ids"]
    expected = {x: alone(name, tiny_model_dir, x, ids) for x in ("", a, b)}
    assert len({tuple(v) for v in expected.values()}) == 3   # the adapters do change the answer

    reg = ModelRegistry(lambda cfg: name)
    res = reg.get(tiny_model_dir, name, dtype="float32")
    base_bytes = res.base_bytes
    for adapter in (a, b):
        reg.get(tiny_model_dir, name, dtype="float32", adapter=adapter)
    assert len(reg.list()) == 1 and reg.list()[0] is res and list(res.adapters) == [a, b]
    # interleaved, as chats on one base take turns: each request selects its own adapter
    for adapter in (b, "", a, b, a, ""):
        assert greedy(res.serve(adapter), ids) == expected[adapter], adapter
    base, per_adapter = res.backend.weight_bytes()
    assert base == base_bytes   # the base counted once, with two adapters attached
    assert 0 < per_adapter[a] < base and 0 < per_adapter[b] < base
    assert res.memory_bytes == base + per_adapter[a] + per_adapter[b]

    assert reg.unload(adapter=a) == 1 and list(res.adapters) == [b]
    assert greedy(res.serve(b), ids) == expected[b]
    assert greedy(res.serve(""), ids) == expected[""]
    assert reg.unload(model=tiny_model_dir) == 1 and reg.list() == []


def _rss() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


@pytest.fixture(scope="module")
def wide_model(tmp_path_factory, tiny_model_dir):
    """~34 MB of float32 weights: big enough that a second copy shows in resident memory."""
    import shutil

    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    out = tmp_path_factory.mktemp("wide") / "model"
    src = json.loads((Path(tiny_model_dir) / "config.json").read_text())
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=src["vocab_size"], hidden_size=512, intermediate_size=1024, num_hidden_layers=4,
                      num_attention_heads=8, num_key_value_heads=4, max_position_embeddings=512,
                      eos_token_id=src.get("eos_token_id"), pad_token_id=src.get("pad_token_id"), bos_token_id=None)
    LlamaForCausalLM(cfg).save_pretrained(out)
    for f in Path(tiny_model_dir).iterdir():
        if f.name.startswith(("tokenizer", "special_tokens", "chat_template")):
            shutil.copy(f, out / f.name)
    return str(out)


@pytest.mark.parametrize("name", BACKENDS)
def test_a_second_adapter_costs_its_own_bytes_not_a_second_base(name, wide_model, tmp_path):
    """Measured resident memory (process RSS for torch, MLX's active memory for mlx): attaching a
    second adapter grows it by far less than the base; loading the base again (the old registry's
    behaviour for each adapter) grows it by about the base."""
    a = random_adapter(tmp_path / "a", wide_model, 1)
    b = random_adapter(tmp_path / "b", wide_model, 2)
    if name == "mlx":
        import mlx.core as mx

        def measure():
            gc.collect()
            return mx.get_active_memory()
    else:
        def measure():
            gc.collect()
            return _rss()
    ids = list(range(5, 25))
    reg = ModelRegistry(lambda cfg: name)
    res = reg.get(wide_model, name, dtype="float32", adapter=a)
    greedy(res.serve(a), ids, 2)   # every weight read (safetensors are memory-mapped until then)
    before = measure()
    reg.get(wide_model, name, dtype="float32", adapter=b)
    greedy(res.serve(b), ids, 2)
    with_b = measure() - before
    second_copy = get_backend(name)
    second_copy.load(ModelSpec(model=wide_model, backend=name, dtype="float32"))
    greedy(second_copy, ids, 2)
    another_base = measure() - before - with_b
    print(f"{name}: base {res.base_bytes / 2**20:.1f} MiB; attaching adapter b: +{with_b / 2**20:.1f} MiB "
          f"(its tensors {res.adapters[b].memory_bytes / 2**20:.2f} MiB); a second base: "
          f"+{another_base / 2**20:.1f} MiB")
    assert res.base_bytes > 30 * 2**20
    assert with_b < 0.25 * res.base_bytes
    assert another_base > 0.75 * res.base_bytes


def test_adapters_that_change_the_base_are_recognised(tmp_path, tiny_model_dir):
    lora = random_adapter(tmp_path / "lora", tiny_model_dir, 1)
    assert not changes_base(lora)
    full = tmp_path / "full"
    full.mkdir()
    (full / "config.json").write_text("{}")
    (full / "model.safetensors").write_bytes(b"")
    assert changes_base(full)
    (tmp_path / "lora" / "added_tokens.safetensors").write_bytes(b"")
    assert changes_base(lora)


@pytest.mark.parametrize("name", BACKENDS)
def test_the_next_turn_reads_only_its_new_tokens_and_answers_the_same(name, tiny_model_dir, tiny_tokenizer, adapters):
    """A conversation's next request re-sends the history: the KV cache of the previous reply
    (per adapter) is reused for the common prefix, and the reply equals one without the cache."""
    a, _ = adapters
    be = get_backend(name)
    be.load(ModelSpec(model=tiny_model_dir, backend=name, dtype="float32"))
    be.attach_adapter(a, Path(a))
    reused = []
    take = be._prompt_cache.take
    be._prompt_cache.take = lambda key, prompt: (lambda r: (reused.append(r[1]), r)[1])(take(key, prompt))
    turn1 = tiny_tokenizer("The capital of Zorblax is")["input_ids"]
    reply = greedy(be, turn1, 8, adapter=a)
    turn2 = turn1 + reply + tiny_tokenizer(" and the river of Quenta is")["input_ids"]
    with_cache = greedy(be, turn2, 8, adapter=a)
    assert reused[-1] >= len(turn1) + len(reply) - 1, (reused, len(turn1), len(reply))
    be._prompt_cache.clear()
    assert greedy(be, turn2, 8, adapter=a) == with_cache and reused[-1] == 0
    greedy(be, turn2, 2, adapter="")   # another adapter's turn (the bare base) does not get this adapter's cache
    assert reused[-1] == 0


def _job_config(name, model, bundle, out, **kw):
    """A LoRA run of the same shape as `random_adapter`'s first adapter (r 4 on q/v, alpha 2r)."""
    from tunerd.config.schema import DataConfig, TrainConfig

    kw.setdefault("max_steps", 6)
    kw.setdefault("eval_strategy", "no")
    return TrainConfig(model=model, backend=name, dtype="float32", output_dir=str(out),
                       lora_r=4, lora_alpha=8.0, lora_target_modules=["q_proj", "v_proj"], lora_dropout=0.1,
                       learning_rate=1e-3, logging_steps=1, save_strategy="steps", save_steps=2,
                       per_device_train_batch_size=4, data=DataConfig(train=bundle["train"]), **kw)


def _train_lending(name, cfg, between_steps=lambda reg: None):
    """Train as the daemon does: the job's model lent to a registry from Started to the end;
    `between_steps(registry)` runs where the daemon serves chats (the runner's serve_interactive)."""
    from tunerd.chat import rng_untouched
    from tunerd.jobs.runner import run_training

    reg = ModelRegistry(lambda c: name)
    losses = []

    def emit(e):
        if type(e).__name__ == "Step":
            losses.append(e.loss)

    def serve_interactive():
        with rng_untouched():   # as the daemon's chat slices run
            between_steps(reg)
    run_training(cfg, emit, lambda: False, job_id="j1", serve_interactive=serve_interactive, lend=reg.lend)
    return losses, reg


@pytest.mark.parametrize("name", BACKENDS)
def test_a_running_job_lends_its_base_and_chats_leave_its_losses_unchanged(
        name, tiny_model_dir, tiny_tokenizer, demo_bundle, adapters, tmp_path):
    """Chats with adapter A, the bare base and job:<id> (its latest checkpoint) between the job's
    steps use the job's own model (one base), answer as each alone would, and the job's losses
    equal a run without chats. An adapter of another LoRA shape: shared on torch (PEFT named
    adapters); on mlx, which swaps tensors into the run's layers, it gets a base of its own."""
    from tunerd.training.checkpoints import list_checkpoints

    a, b = adapters
    ids = tiny_tokenizer("The capital of Zorblax is")["input_ids"]
    expected = {x: alone(name, tiny_model_dir, x, ids) for x in ("", a, b)}
    quiet, _ = _train_lending(name, _job_config(name, tiny_model_dir, demo_bundle, tmp_path / "quiet"))

    seen = []

    def chats(reg):
        if not reg.list():
            return   # before Started: nothing lent yet
        job = reg.list()[0]
        assert job.job_id == "j1"
        for adapter in (a, ""):
            res = reg.get(tiny_model_dir, name, adapter=adapter)
            assert res is job
            assert greedy(res.serve(adapter), ids) == expected[adapter]
        ckpts = list_checkpoints(tmp_path / "busy")
        if ckpts:   # job:<id>: a snapshot of the latest checkpoint, attached beside the run's own adapter
            res = reg.get(tiny_model_dir, name, adapter=str(ckpts[-1]), name="job:j1")
            assert res is job and greedy(res.serve("job:j1"), ids) == alone(name, tiny_model_dir, str(ckpts[-1]), ids)
        res = reg.get(tiny_model_dir, name, adapter=b)
        assert (res is job) == (name == "torch")
        assert greedy(res.serve(b), ids) == expected[b]
        seen.append(sorted(job.adapters))
    busy, reg = _train_lending(name, _job_config(name, tiny_model_dir, demo_bundle, tmp_path / "busy"), chats)
    assert len(seen) >= 6 and "job:j1" in seen[-1] and a in seen[-1]
    assert busy == quiet, (busy, quiet)
    assert all(not r.job_id for r in reg.list())   # the job ended: its model is no longer lent


@pytest.mark.parametrize("name", BACKENDS)
def test_two_adapters_beside_a_running_job_cost_their_bytes_not_a_base(name, wide_model, demo_bundle, tmp_path):
    """Measured resident memory (process RSS for torch, MLX's active memory for mlx) while a job
    trains: chats with two adapters on its base grow it by far less than a base (a second base
    costs about one: test_a_second_adapter_costs_its_own_bytes_not_a_second_base)."""
    import mlx.core as mx

    a = random_adapter(tmp_path / "a", wide_model, 1)
    b = random_adapter(tmp_path / "b", wide_model, 2)

    def measure():
        gc.collect()
        return mx.get_active_memory() if name == "mlx" else _rss()
    ids, seen, calls = list(range(5, 25)), {}, []

    def chats(reg):
        calls.append(1)
        if len(calls) != 3:   # after two steps: the first forward pages in the memory-mapped weights
            return
        job = reg.list()[0]
        before = measure()
        for adapter in (a, b):
            res = reg.get(wide_model, name, adapter=adapter)
            greedy(res.serve(adapter), ids, 2)
        seen.update(base=job.base_bytes, grown=measure() - before, residents=len(reg.list()),
                    adapters=sorted(job.adapters))
    _train_lending(name, _job_config(name, wide_model, demo_bundle, tmp_path / "run", max_steps=3), chats)
    print(f"{name}: base {seen['base'] / 2**20:.1f} MiB; two adapters beside the running job: "
          f"+{seen['grown'] / 2**20:.1f} MiB")
    assert seen["residents"] == 1 and seen["adapters"] == sorted([a, b])
    assert seen["base"] > 30 * 2**20
    assert seen["grown"] < 0.25 * seen["base"]
