"""A serving call selects its adapter only while it runs (backends/base.ServingBackend): between two
chunks of a reply, and after it, a training run's own adapter is selected again, whatever the
caller does with the generator. No model: a fake that records what each forward pass would see."""
import pytest

from tunerd.backends.base import TRAINING, ServingBackend
from tunerd.backends.generation import GenerationChunk, Sampling


class Fake(ServingBackend):
    name = "fake"

    def __init__(self, training: bool):
        self.training, self.active, self.seen = training, TRAINING if training else None, []

    def _training(self):
        return self.training

    def _select(self, name):
        if name not in (None, TRAINING, "a", "b"):
            raise ValueError(name)
        self.active = name

    def _generate(self, prompt_ids, sampling, should_stop, key):
        for i in range(sampling.max_tokens):
            self.seen.append(self.active)
            yield GenerationChunk(str(i), i)


@pytest.mark.parametrize("adapter, selected", [("a", "a"), ("", None), (None, TRAINING)])
def test_between_chunks_the_training_adapter_is_selected(adapter, selected):
    be = Fake(training=True)
    gen = be.generate([1, 2], Sampling(max_tokens=3), adapter=adapter)
    for _ in gen:
        assert be.active == TRAINING   # what a training step between two chunks sees
    assert be.seen == [selected] * 3 and be.active == TRAINING


def test_a_reply_closed_early_or_failing_leaves_the_training_adapter():
    be = Fake(training=True)
    gen = be.generate([1], Sampling(max_tokens=5), adapter="b")
    next(gen)
    gen.close()
    assert be.active == TRAINING
    with pytest.raises(ValueError):
        next(be.generate([1], Sampling(max_tokens=1), adapter="unknown"))
    assert be.active == TRAINING


def test_without_a_training_run_the_selection_stays_until_the_next_call():
    be = Fake(training=False)
    assert [c.text for c in be.generate([1], Sampling(max_tokens=2), adapter="a")] == ["0", "1"]
    assert be.active == "a"   # no restore needed (nothing trains); the next call selects its own
    list(be.generate([1], Sampling(max_tokens=1)))
    assert be.seen[-1] is None
