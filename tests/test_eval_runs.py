"""run_plan (tunerd.evaluation.runs) with a fake backend at the seam: progress, deltas, cancellation."""
from __future__ import annotations

from tunerd.backends.generation import GenerationChunk, Sampling
from tunerd.config.loader import load_config
from tunerd.evaluation.runs import EvalPlan, run_plan


class FakeBackend:
    """Answers every prompt with `answer`; loss per supervised token `loss`."""

    def __init__(self, tokenizer, answer: str, loss: float):
        self.tokenizer, self.answer, self.loss = tokenizer, answer, loss

    def eval_loss(self, batch):
        return self.loss * batch.n_targets, batch.n_targets

    def generate(self, prompt_ids, sampling, should_stop=lambda: False):
        yield GenerationChunk(self.answer, 1, "stop")


def _plan(demo_bundle, runs):
    cfg = load_config(doc={"model": demo_bundle["model"], "data": {"train": demo_bundle["train"],
                                                                   "validation": demo_bundle["valid"]}})
    return EvalPlan(cfg, runs, max_generations=3, sampling=Sampling(max_tokens=8))


def _backends(tiny_tokenizer, demo_bundle):
    ref = demo_bundle["rows"][0]["completion"]
    return {"": FakeBackend(tiny_tokenizer, "no idea", 5.0), "a": FakeBackend(tiny_tokenizer, ref, 1.0)}


def test_progress_then_result_with_deltas_against_the_first_run(tiny_tokenizer, demo_bundle):
    backends = _backends(tiny_tokenizer, demo_bundle)
    out = list(run_plan(_plan(demo_bundle, [("base", ""), ("tuned", "a")]), lambda fn: fn(), backends.__getitem__))
    progress, result = out[:-1], out[-1].result
    assert not any(p.result for p in progress)
    assert [p.rows_done for p in progress] == [0, 1, 2, 3, 4, 5, 6] and progress[-1].rows_total == 6
    base, tuned = result.runs
    assert base.loss == 5.0 and tuned.loss == 1.0 and tuned.deltas["loss"] == -4.0
    assert tuned.deltas["rougeL"] == tuned.metrics["rougeL"] - base.metrics["rougeL"] > 0
    assert len(tuned.generations) == 3 and tuned.generations[0].scores["rougeL"] > 0
    assert result.loss == 1.0 and result.split == "validation"


def test_a_caller_that_goes_away_stops_the_generation(tiny_tokenizer, demo_bundle):
    backends = _backends(tiny_tokenizer, demo_bundle)
    seen = []
    stop = lambda: len(seen) >= 2  # noqa: E731
    for p in run_plan(_plan(demo_bundle, [("base", "")]), lambda fn: fn(), backends.__getitem__, stop):
        seen.append(p)
    assert not any(p.result for p in seen) and seen[-1].rows_done == 1
