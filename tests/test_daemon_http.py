"""The OpenAI-compatible HTTP API (issue 10), driven by the official `openai` client against the
real daemon process (`tunerd --http 127.0.0.1:PORT`): models, chat and plain completions,
streaming and not, stop strings, max_tokens, seed, usage, UTF-8, errors and the bearer token."""
from __future__ import annotations

import pytest

from daemon_utils import DaemonProcess, cli, free_port, json_lines, short_home
from test_shared_base import random_adapter

openai = pytest.importorskip("openai")
pytestmark = pytest.mark.slow


def chat(client, model, content="hi", **kw):
    return client.chat.completions.create(model=model, messages=[{"role": "user", "content": content}], **kw)


def stream_chat(client, model, content="hi", **kw) -> tuple[list[str], list]:
    chunks = list(chat(client, model, content, stream=True, stream_options={"include_usage": True}, **kw))
    return [c.choices[0].delta.content or "" for c in chunks if c.choices], chunks


@pytest.mark.parametrize("backend", ["torch", "mlx"])
def test_chat_and_completions_streaming_and_not(served, tiny_model_dir, tmp_path, backend):
    d, client, _ = served
    adapter = random_adapter(tmp_path / "a", tiny_model_dir, 1)
    cli(d.home, "models", "load", tiny_model_dir, "--backend", backend, "--adapter", adapter, check=True)
    ids = {m.id for m in client.models.list().data}
    assert {tiny_model_dir, adapter} <= ids

    # the same answer as the gRPC CLI gives for that adapter (greedy)
    grpc_text = "".join(e.get("delta", "") for e in json_lines(cli(
        d.home, "chat", "--model", tiny_model_dir, "--backend", backend, "--adapter", adapter, "-p", "hi",
        "--temperature", "0", "--max-tokens", "12", "--json", check=True).stdout))
    r = chat(client, adapter, temperature=0, max_tokens=12)
    assert r.choices[0].message.content == grpc_text and r.choices[0].message.role == "assistant"
    assert r.choices[0].finish_reason == "length" and r.usage.completion_tokens == 12
    assert r.usage.total_tokens == r.usage.prompt_tokens + 12
    base = chat(client, tiny_model_dir, temperature=0, max_tokens=12).choices[0].message.content
    assert base != grpc_text   # the adapter is applied per request, on the one base

    parts, chunks = stream_chat(client, adapter, temperature=0, max_tokens=12)
    assert "".join(parts) == grpc_text
    assert chunks[-1].usage.completion_tokens == 12 and not chunks[-1].choices
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == ["length"]

    # seed: the same sample twice, streamed or not
    a = chat(client, adapter, temperature=1.0, seed=5, max_tokens=10).choices[0].message.content
    assert chat(client, adapter, temperature=1.0, seed=5, max_tokens=10).choices[0].message.content == a
    assert "".join(stream_chat(client, adapter, temperature=1.0, seed=5, max_tokens=10)[0]) == a

    # stop strings, on both paths
    stop = grpc_text[2:5]
    r = chat(client, adapter, temperature=0, max_tokens=12, stop=[stop])
    assert r.choices[0].finish_reason == "stop" and r.choices[0].message.content == grpc_text[:grpc_text.index(stop)]
    assert "".join(stream_chat(client, adapter, temperature=0, max_tokens=12, stop=stop)[0]) == \
        grpc_text[:grpc_text.index(stop)]

    # plain completion: no chat template
    prompt = "The capital of Zorblax is"
    cli_text = "".join(e.get("delta", "") for e in json_lines(cli(
        d.home, "generate", "--model", tiny_model_dir, "--backend", backend, "-p", prompt, "--temperature", "0",
        "--max-tokens", "8", "--json", check=True).stdout))
    c = client.completions.create(model=tiny_model_dir, prompt=prompt, temperature=0, max_tokens=8)
    assert c.choices[0].text == cli_text and c.usage.completion_tokens == 8
    streamed = list(client.completions.create(model=tiny_model_dir, prompt=prompt, temperature=0, max_tokens=8,
                                              stream=True))
    assert "".join(x.choices[0].text for x in streamed if x.choices) == cli_text
    cli(d.home, "models", "unload", tiny_model_dir, "--backend", backend, check=True)


@pytest.mark.parametrize("backend", ["torch", "mlx"])
def test_streamed_chunks_are_whole_characters(served, tiny_model_dir, tiny_tokenizer, backend):
    """Byte-level BPE splits a Hangul syllable over tokens, and a random model at temperature 1.5
    emits stray bytes: every streamed prefix is a prefix of the decoded reply (no half character
    sent as U+FFFD and completed later), and the whole equals the reply decoded at once."""
    from tunerd.backends.generation import Sampling
    from tunerd.backends.registry import get_backend
    from tunerd.backends.base import ModelSpec

    d, client, _ = served
    cli(d.home, "models", "load", tiny_model_dir, "--backend", backend, check=True)
    messages = [{"role": "user", "content": "안녕하세요, 한국어로 대답해 주세요"}]
    be = get_backend(backend)
    be.load(ModelSpec(model=tiny_model_dir, backend=backend))
    ids = tiny_tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
    ids = list(ids["input_ids"] if hasattr(ids, "keys") else ids)
    tokens = [c.token_id for c in be.generate(ids, Sampling(temperature=1.5, seed=3, max_tokens=60))
              if c.token_id >= 0]
    eos = set(be.tokenizer.all_special_ids)
    full = tiny_tokenizer.decode([t for t in tokens if t not in eos], skip_special_tokens=True)
    assert any(ord(ch) > 127 for ch in full)   # multi-byte characters were generated
    parts, _ = stream_chat(client, tiny_model_dir, messages[0]["content"], temperature=1.5, seed=3, max_tokens=60)
    for i in range(1, len(parts) + 1):
        assert full.startswith("".join(parts[:i])), (parts[:i], full)
    # all of it, but a character that max_tokens cut off (decoded at once: one U+FFFD at the end)
    assert "".join(parts) == (full[:-1] if full.endswith("\ufffd") else full)
    cli(d.home, "models", "unload", tiny_model_dir, "--backend", backend, check=True)


def test_errors_come_back_as_openai_errors(served, tiny_model_dir, tmp_path):
    _, client, _ = served
    with pytest.raises(openai.BadRequestError) as e:
        chat(client, tiny_model_dir, max_tokens=100_000)
    assert "max_tokens: 100000" in str(e.value)
    with pytest.raises(openai.NotFoundError):
        chat(client, str(tmp_path / "no-such-model"))
    with pytest.raises(openai.BadRequestError):
        chat(client, tiny_model_dir, n=17)   # n: 1..16 (tests/test_chat_concurrency.py)


def test_beyond_loopback_needs_the_bearer_token(tiny_model_dir):
    port = free_port()
    d = DaemonProcess(short_home(), "--http", str(port), "--http-host", "0.0.0.0").start()
    try:
        token = (d.home / "token").read_text().strip()
        url = f"http://127.0.0.1:{port}/v1"
        with pytest.raises(openai.AuthenticationError):
            openai.OpenAI(base_url=url, api_key="wrong", max_retries=0).models.list()
        assert openai.OpenAI(base_url=url, api_key=token, max_retries=0).models.list().data == []
    finally:
        d.stop()
    with pytest.raises(RuntimeError, match="not a loopback address"):
        DaemonProcess(short_home(), "--http", f"0.0.0.0:{free_port()}").start(timeout=20)


def test_a_finished_jobs_adapter_is_a_model_id(served, demo_bundle, tmp_path):
    from daemon_utils import write_config

    d, client, _ = served
    cfg = write_config(tmp_path / "j.yaml", demo_bundle, max_steps=6, save_steps=3, eval_steps=100000)
    job_id = json_lines(cli(d.home, "train", str(cfg), "--json", check=True).stdout)[0]["job_id"]
    listed = {m.id: m for m in client.models.list().data}
    assert f"job:{job_id}" in listed
    grpc_text = "".join(e.get("delta", "") for e in json_lines(cli(
        d.home, "chat", "--adapter", f"job:{job_id}", "-p", "hi", "--temperature", "0", "--max-tokens", "8",
        "--json", check=True).stdout))
    r = chat(client, f"job:{job_id}", temperature=0, max_tokens=8)
    assert r.choices[0].message.content == grpc_text
