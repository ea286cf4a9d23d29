"""Batched decoding (issue 21): a batched greedy reply equals the reply generated alone, token for
token, on both backends, with prompts of different lengths (left padding), sequences joining late
and one removed mid-way; evaluation's decode_all keeps each row's greedy reply."""
from __future__ import annotations

import pytest

from tunerd.backends.base import ModelSpec
from tunerd.backends.generation import Sampling, decode_all
from tunerd.backends.registry import get_backend


def prompts(be, demo_bundle, n: int = 4) -> list[list[int]]:
    rows = demo_bundle["rows"]
    out = []
    for i in range(n):
        text = " ".join(r["prompt"] for r in rows[i:i + 1 + 2 * i])   # different lengths
        out.append(be.tokenizer(text)["input_ids"])
    assert len({len(p) for p in out}) > 1
    return out


def alone(be, prompt, max_tokens):
    be._prompt_cache.clear()
    chunks = list(be.generate(prompt, Sampling(max_tokens=max_tokens)))
    return [c.token_id for c in chunks if c.token_id >= 0], "".join(c.text for c in chunks)


@pytest.mark.parametrize("name", ["mlx", "torch"])
def test_batched_greedy_equals_alone(demo_bundle, name):
    be = get_backend(name)
    be.load(ModelSpec(model=demo_bundle["model"], backend=name))
    ps = prompts(be, demo_bundle)
    n = 12
    expected = [alone(be, p, n) for p in ps]
    be._prompt_cache.clear()

    dec = be.decoder()
    tokens: dict = {}
    text: dict = {}
    uids = [dec.add(p, Sampling(max_tokens=n)) for p in ps[:2]]
    steps = 0
    while len(dec):
        if steps == 3:   # two more join while the first two decode
            uids += [dec.add(p, Sampling(max_tokens=n)) for p in ps[2:]]
        for uid, chunk in dec.step():
            if chunk.token_id >= 0:
                tokens.setdefault(uid, []).append(chunk.token_id)
            text[uid] = text.get(uid, "") + chunk.text
        steps += 1
        assert steps < 200
    dec.close()
    for uid, (toks, txt) in zip(uids, expected):
        assert tokens.get(uid, []) == toks
        assert text[uid] == txt

    # one removed mid-way: the others are unchanged
    be._prompt_cache.clear()
    dec = be.decoder()
    uids = [dec.add(p, Sampling(max_tokens=n)) for p in ps]
    got: dict = {}
    steps = 0
    while len(dec):
        for uid, chunk in dec.step():
            if chunk.token_id >= 0:
                got.setdefault(uid, []).append(chunk.token_id)
        steps += 1
        if steps == 4:
            assert dec.remove(uids[1]).finish_reason == "cancelled"
    dec.close()
    for i in (0, 2, 3):
        assert got[uids[i]] == expected[i][0]
    assert len(got.get(uids[1], [])) < n

    # evaluation's batches: the same replies, batch of 2 over 4 prompts
    be._prompt_cache.clear()
    texts = decode_all(be.decoder(), ps, Sampling(max_tokens=n), batch_size=2)
    assert texts == [t for _, t in expected]


@pytest.mark.parametrize("name", ["mlx", "torch"])
def test_evaluation_rows_in_batches_equal_one_at_a_time(demo_bundle, name):
    from tunerd.evaluation.generation import generate_all

    be = get_backend(name)
    be.load(ModelSpec(model=demo_bundle["model"], backend=name))
    ps = prompts(be, demo_bundle, 6)
    greedy = Sampling(temperature=0.0, max_tokens=10)
    one = generate_all(be, ps, greedy, batch_size=1)
    be._prompt_cache.clear()
    assert generate_all(be, ps, greedy, batch_size=4) == one
