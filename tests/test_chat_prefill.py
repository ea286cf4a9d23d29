"""A long prompt is read in chunks, with a turn for others between chunks (issue 9, finding 5):
both backends mark each chunk read, stop there when asked, and produce the same tokens as an
unchunked read."""
from __future__ import annotations

import pytest

from tunerd.backends import base
from tunerd.backends.base import ModelSpec, Sampling
from tunerd.backends.registry import get_backend


@pytest.mark.parametrize("name", ["mlx", "torch"])
def test_long_prompt_is_prefilled_in_chunks(demo_bundle, monkeypatch, name):
    be = get_backend(name)
    be.load(ModelSpec(model=demo_bundle["model"], backend=name))
    text = " ".join(r["prompt"] for r in demo_bundle["rows"] * 20)
    prompt = be.tokenizer(text)["input_ids"][:450]
    assert len(prompt) == 450
    chunks = list(be.generate(prompt, Sampling(max_tokens=8)))
    marks = [c for c in chunks if c.token_id < 0 and c.finish_reason is None]
    assert len(marks) == (450 - 1) // base.PREFILL_CHUNK and not any(c.text for c in marks)
    tokens = [c.token_id for c in chunks if c.token_id >= 0]
    assert tokens and chunks[-1].finish_reason == "length"

    monkeypatch.setattr(base, "PREFILL_CHUNK", 10_000)
    be._prompt_cache.clear()   # read the whole prompt again (not the previous reply's KV cache)
    whole = list(be.generate(prompt, Sampling(max_tokens=8)))
    assert [c.token_id for c in whole] == tokens
    monkeypatch.undo()

    asked = []
    be._prompt_cache.clear()
    stopped = list(be.generate(prompt, Sampling(max_tokens=8), should_stop=lambda: asked.append(1) or True))
    assert stopped[-1].finish_reason == "cancelled" and all(c.token_id < 0 for c in stopped)
