"""A long prompt is read in chunks, with a turn for others between chunks (issue 9, finding 5),
sized by time rather than a fixed 256 tokens (issue 16, finding 5): both backends mark each chunk
read, stop there when asked, and produce the same tokens as an unchunked read; each chunk takes
about PREFILL_SECONDS however slow the model is per token."""
from __future__ import annotations

import time

import pytest

from tunerd.backends import generation as base
from tunerd.backends.base import ModelSpec
from tunerd.backends.generation import PrefillPlan, Sampling
from tunerd.backends.registry import get_backend


def fixed_chunks(monkeypatch, n: int) -> None:
    """Every chunk n tokens, whatever the time (a test's deterministic plan)."""
    for name in ("PREFILL_FIRST", "PREFILL_MIN", "PREFILL_MAX"):
        monkeypatch.setattr(base, name, n)


def long_prompt(be, demo_bundle, n: int) -> list[int]:
    text = " ".join(r["prompt"] for r in demo_bundle["rows"] * 40)
    prompt = be.tokenizer(text)["input_ids"][:n]
    assert len(prompt) == n
    return prompt


@pytest.mark.parametrize("name", ["mlx", "torch"])
def test_long_prompt_is_prefilled_in_chunks(demo_bundle, monkeypatch, name):
    be = get_backend(name)
    be.load(ModelSpec(model=demo_bundle["model"], backend=name))
    prompt = long_prompt(be, demo_bundle, 450)
    fixed_chunks(monkeypatch, 100)
    chunks = list(be.generate(prompt, Sampling(max_tokens=8)))
    marks = [c for c in chunks if c.token_id < 0 and c.finish_reason is None]
    assert len(marks) == (450 - 1) // 100 and not any(c.text for c in marks)
    tokens = [c.token_id for c in chunks if c.token_id >= 0]
    assert tokens and chunks[-1].finish_reason == "length"

    fixed_chunks(monkeypatch, 10_000)
    be._prompt_cache.clear()   # read the whole prompt again (not the previous reply's KV cache)
    whole = list(be.generate(prompt, Sampling(max_tokens=8)))
    assert [c.token_id for c in whole] == tokens
    monkeypatch.undo()

    be._prompt_cache.clear()   # and with the real, timed plan: the same greedy tokens
    timed = list(be.generate(prompt, Sampling(max_tokens=8)))
    assert [c.token_id for c in timed if c.token_id >= 0] == tokens

    asked = []
    be._prompt_cache.clear()
    fixed_chunks(monkeypatch, 100)
    stopped = list(be.generate(prompt, Sampling(max_tokens=8), should_stop=lambda: asked.append(1) or True))
    assert stopped[-1].finish_reason == "cancelled" and all(c.token_id < 0 for c in stopped)


def test_chunks_are_sized_by_time_within_bounds():
    plan = PrefillPlan(10_000, seconds=0.1)
    assert plan.next() == base.PREFILL_FIRST            # nothing measured yet: small
    plan.took(base.PREFILL_FIRST, base.PREFILL_FIRST * 0.001)   # 1 ms a token
    assert plan.next() == 100                           # -> 0.1 s worth
    plan.took(100, 1.0)                                 # 10 ms a token: 10 would do, the floor is 16
    assert plan.next() == base.PREFILL_MIN
    plan.took(base.PREFILL_MIN, 1e-6)                   # very fast: the ceiling
    assert plan.next() == base.PREFILL_MAX
    while plan.next():
        pass
    assert plan.pos == 10_000 and sum(plan.sizes) == 10_000 and plan.size() == 0


def test_a_slow_model_gets_small_chunks_that_each_take_about_the_target(demo_bundle):
    """A model that takes 2 ms a prompt token (a long-context model on a small device): a fixed 256
    would hold the device 0.5 s a chunk; the plan keeps each near PREFILL_SECONDS (0.1 s)."""
    be = get_backend("torch")
    be.load(ModelSpec(model=demo_bundle["model"], backend="torch"))
    prompt = long_prompt(be, demo_bundle, 480)
    expected = [c.token_id for c in be.generate(prompt, Sampling(max_tokens=6)) if c.token_id >= 0]
    hook = be.model.register_forward_pre_hook(
        lambda module, args, kwargs: time.sleep(0.002 * kwargs["input_ids"].shape[1]), with_kwargs=True)
    try:
        be._prompt_cache.clear()
        marks, last, tokens = [], time.perf_counter(), []
        for c in be.generate(prompt, Sampling(max_tokens=6)):
            if c.token_id < 0 and c.finish_reason is None:
                now = time.perf_counter()
                marks.append(now - last)
                last = now
            elif c.token_id >= 0:
                tokens.append(c.token_id)
    finally:
        hook.remove()
    print("chunk times:", [round(m, 3) for m in marks])
    assert tokens == expected
    assert len(marks) >= 5, marks                          # 480 tokens at ~50 a chunk, not one 256 + rest
    assert all(m < 0.25 for m in marks[1:]), marks          # about 0.1 s each (never 0.5 s)
