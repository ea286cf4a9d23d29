"""Concurrent chats decoded together (issue 21), through the real daemon: four streaming chats
that arrive together get the greedy replies each gets alone, token for token, while their decode
steps are shared (the daemon reports a peak of >= 2 sequences decoding on the model); a seeded
reply is the same alone and in a batch; the HTTP API's `n` gives several choices per request."""
from __future__ import annotations

import threading

import pytest
from tuner.v1 import tuner_pb2 as pb

from daemon_utils import cli

openai = pytest.importorskip("openai")
pytestmark = pytest.mark.slow

PROMPTS = ["hi", "Tell me about the sea.", "What is two plus two? Answer in full.", "Name three colours"]


def request(model: str, backend: str, prompt: str, max_tokens: int = 40, **sampling):
    return pb.ChatRequest(model=model, backend=backend, messages=[pb.ChatMessage(role="user", content=prompt)],
                          sampling=pb.SamplingParams(max_tokens=max_tokens, temperature=sampling.pop("temperature", 0.0),
                                                     **sampling))


def reply(stub, req) -> tuple[str, str, int]:
    """(text, finish reason, completion tokens) of a streamed chat."""
    text, finish, n = [], "", 0
    for c in stub.Chat(req, timeout=120):
        text.append(c.delta)
        if c.finish_reason:
            finish, n = c.finish_reason, c.usage.completion_tokens
    return "".join(text), finish, n


def together(stub, reqs: list) -> list:
    """The replies to `reqs`, all sent at once (one thread each)."""
    out: list = [None] * len(reqs)
    start = threading.Barrier(len(reqs))

    def run(i):
        start.wait()
        out[i] = reply(stub, reqs[i])

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(reqs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(180)
    return out


def resident(stub, model: str, backend: str):
    return next(m for m in stub.ListModels(pb.ListModelsRequest()).models
                if m.model == model and m.backend == backend)


@pytest.mark.parametrize("backend", ["torch", "mlx"])
def test_four_concurrent_chats_share_decode_steps_and_equal_each_alone(served, tiny_model_dir, backend):
    d, _, _ = served
    stub = d.stub()
    cli(d.home, "models", "load", tiny_model_dir, "--backend", backend, check=True)
    greedy = [request(tiny_model_dir, backend, p) for p in PROMPTS]
    alone = [reply(stub, r) for r in greedy]
    assert resident(stub, tiny_model_dir, backend).peak_active_sequences == 1   # one at a time so far
    assert together(stub, greedy) == alone
    m = resident(stub, tiny_model_dir, backend)
    assert m.peak_active_sequences >= 2 and m.active_sequences == 0, m
    info = stub.GetInfo(pb.GetInfoRequest())
    assert info.peak_active_sequences >= 2 and info.active_sequences == 0

    # seeded sampling: each request's own RNG, the same text alone and beside the others
    seeded = [request(tiny_model_dir, backend, p, temperature=1.0, seed=7 + i, top_k=40, top_p=0.9)
              for i, p in enumerate(PROMPTS)]
    assert together(stub, seeded[:1] + greedy[1:])[0] == reply(stub, seeded[0])
    assert together(stub, seeded) == [reply(stub, r) for r in seeded]
    cli(d.home, "models", "unload", tiny_model_dir, "--backend", backend, check=True)


def test_http_n_gives_several_choices_through_the_batch(served, tiny_model_dir):
    d, client, _ = served
    stub = d.stub()
    messages = [{"role": "user", "content": "hi"}]
    one = client.chat.completions.create(model=tiny_model_dir, messages=messages, temperature=0, max_tokens=16)
    r = client.chat.completions.create(model=tiny_model_dir, messages=messages, temperature=0, max_tokens=16, n=3)
    assert [c.index for c in r.choices] == [0, 1, 2]
    assert {c.message.content for c in r.choices} == {one.choices[0].message.content}
    assert r.usage.prompt_tokens == one.usage.prompt_tokens and r.usage.completion_tokens == 3 * 16

    # seeded: choice i samples with seed + i (choice 0 is the request alone)
    alone = client.chat.completions.create(model=tiny_model_dir, messages=messages, temperature=1.0, seed=11,
                                           max_tokens=16)
    r = client.chat.completions.create(model=tiny_model_dir, messages=messages, temperature=1.0, seed=11,
                                       max_tokens=16, n=4)
    texts = [c.message.content for c in r.choices]
    assert texts[0] == alone.choices[0].message.content and len(set(texts)) > 1

    # streamed: each choice's deltas by its index, the same texts
    parts: dict = {}
    for c in client.chat.completions.create(model=tiny_model_dir, messages=messages, temperature=1.0, seed=11,
                                            max_tokens=16, n=4, stream=True):
        for ch in c.choices:
            parts[ch.index] = parts.get(ch.index, "") + (ch.delta.content or "")
    assert [parts[i] for i in range(4)] == texts
    m = next(m for m in stub.ListModels(pb.ListModelsRequest()).models if m.model == tiny_model_dir)
    assert m.peak_active_sequences >= 2
