"""Through the real daemon and CLI (issue 10): adapters share one resident base, memory per model
is the backend's count, unload by adapter or by model, and plain completion (`tunerctl generate`)."""
from __future__ import annotations

import grpc
import pytest
from tuner.v1 import tuner_pb2 as pb

from daemon_utils import cli, json_lines
from test_shared_base import random_adapter

pytestmark = pytest.mark.slow


def one_shot(d, *args) -> str:
    out = json_lines(cli(d.home, *args, "--temperature", "0", "--max-tokens", "10", "--json", check=True).stdout)
    return "".join(e.get("delta", "") for e in out)


@pytest.mark.parametrize("backend", ["torch", "mlx"])
def test_two_adapters_one_base_in_models_list_and_unload_by_adapter(daemon, tiny_model_dir, tmp_path, backend):
    a = random_adapter(tmp_path / "a", tiny_model_dir, 1)
    b = random_adapter(tmp_path / "b", tiny_model_dir, 2)
    model = ["--model", tiny_model_dir, "--backend", backend]
    answers = {x: one_shot(daemon, "chat", *model, *(["--adapter", x] if x else []), "-p", "hi")
               for x in ("", a, b)}
    assert len(set(answers.values())) == 3, answers
    for x in (a, b):
        cli(daemon.home, "models", "load", tiny_model_dir, "--backend", backend, "--adapter", x, check=True)
    listed = [m for m in json_lines(cli(daemon.home, "models", "list", "--json", check=True).stdout)
              if m["backend"] == backend]
    assert len(listed) == 1, listed   # one base, not one per adapter
    m = listed[0]
    assert m["adapters"] == [a, b]
    sizes = {x["name"]: int(x["memory_bytes"]) for x in m["attached"]}
    assert int(m["memory_bytes"]) == int(m["base_bytes"]) + sizes[a] + sizes[b]
    assert 0 < sizes[a] < int(m["base_bytes"])
    # chats interleaved across adapters still answer as each one does
    assert one_shot(daemon, "chat", *model, "--adapter", b, "-p", "hi") == answers[b]
    assert one_shot(daemon, "chat", *model, "-p", "hi") == answers[""]
    assert one_shot(daemon, "chat", *model, "--adapter", a, "-p", "hi") == answers[a]

    out = json_lines(cli(daemon.home, "models", "unload", "--adapter", a, "--json", check=True).stdout)
    assert out == [{"unloaded": True, "count": 1}]
    m = [m for m in json_lines(cli(daemon.home, "models", "list", "--json").stdout) if m["backend"] == backend][0]
    assert m["adapters"] == [b] and int(m["memory_bytes"]) == int(m["base_bytes"]) + sizes[b]
    cli(daemon.home, "models", "unload", tiny_model_dir, "--backend", backend, check=True)
    assert not [m for m in json_lines(cli(daemon.home, "models", "list", "--json").stdout)
                if m["backend"] == backend]


@pytest.mark.parametrize("backend", ["torch", "mlx"])
def test_generate_continues_the_text_without_a_chat_template(daemon, tiny_model_dir, tiny_tokenizer, backend):
    from tunerd.backends.generation import Sampling
    from tunerd.backends.registry import get_backend
    from tunerd.backends.base import ModelSpec

    prompt = "The capital of Zorblax is"
    be = get_backend(backend)
    be.load(ModelSpec(model=tiny_model_dir, backend=backend, dtype="auto"))
    ids = tiny_tokenizer(prompt)["input_ids"]
    expected = "".join(c.text for c in be.generate(ids, Sampling(temperature=0.0, max_tokens=10)))
    got = one_shot(daemon, "generate", "--model", tiny_model_dir, "--backend", backend, "-p", prompt)
    assert got == expected

    stub = daemon.stub()

    def gen(**sampling):
        req = pb.GenerateRequest(model=tiny_model_dir, backend=backend, prompt=prompt,
                                 sampling=pb.SamplingParams(**sampling))
        chunks = list(stub.Generate(req, timeout=60))
        return "".join(c.delta for c in chunks), chunks[-1]

    text, last = gen(temperature=1.0, seed=7, max_tokens=5)
    assert last.finish_reason == "length" and last.usage.completion_tokens == 5
    assert last.usage.prompt_tokens == len(ids)
    assert gen(temperature=1.0, seed=7, max_tokens=5)[0] == text   # seed reproducibility
    full, _ = gen(temperature=0.0, max_tokens=20)
    stop = full[3:6]
    cut, last = gen(temperature=0.0, max_tokens=20, stop=[stop])
    assert last.finish_reason == "stop" and cut == full[:full.index(stop)]
    with pytest.raises(grpc.RpcError) as e:
        list(stub.Generate(pb.GenerateRequest(model=tiny_model_dir, backend=backend, prompt=""), timeout=60))
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
