"""Generate answers for evaluation rows and score them (used by Evaluate and by training's eval)."""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Iterator, Optional

from ..backends.generation import Sampling, decode_each
from ..config.schema import TrainConfig
from .data import GenRow, build_eval_set
from .metrics import score

DEFAULT_MAX_TOKENS = 128
DEFAULT_BATCH = 8   # rows decoded together (issue 21); 1: one at a time


def generate_text(backend, prompt_ids: list[int], sampling: Sampling,
                  should_stop: Callable[[], bool] = lambda: False) -> str:
    """The whole reply to one prompt (greedy when sampling.temperature is 0)."""
    gen = backend.generate(prompt_ids, sampling, should_stop)
    try:
        return "".join(c.text for c in gen).strip()
    finally:
        gen.close()


def generate_texts(backend, prompts: list[list[int]], sampling: Sampling,
                   should_stop: Callable[[], bool] = lambda: False, batch_size: int = DEFAULT_BATCH,
                   run: Callable[[Callable], object] = lambda f: f()) -> Iterator[tuple[int, str]]:
    """(index, reply) for each prompt as it finishes, `batch_size` decoded together (the backend's
    decoder); each device call goes through `run`. A greedy reply equals generate_text's."""
    decoder = None
    if batch_size > 1 and hasattr(backend, "decoder"):   # (a backend without one: row by row)
        try:
            decoder = run(backend.decoder)
        except NotImplementedError:
            pass
        if decoder is not None:
            for i, text in decode_each(decoder, prompts, sampling, should_stop, batch_size, run):
                yield i, text.strip()
            return
    for i, ids in enumerate(prompts):
        if should_stop():
            return
        yield i, run(lambda ids=ids: generate_text(backend, ids, sampling, should_stop))


def generate_all(backend, prompts: list[list[int]], sampling: Sampling, batch_size: int = DEFAULT_BATCH) -> list[str]:
    texts = dict(generate_texts(backend, prompts, sampling, batch_size=batch_size))
    return [texts.get(i, "") for i in range(len(prompts))]


class GenerationEval:
    """Training's generation metrics: the first `eval_generate_rows` validation rows, greedy,
    scored with `eval_metric_tokenizer`. Built once before the loop; `metrics(backend)` at each eval."""

    def __init__(self, rows: list[GenRow], max_tokens: int, tokenizer: str = "whitespace",
                 batch_size: int = DEFAULT_BATCH):
        self.rows, self.tokenizer, self.batch_size = rows, tokenizer, batch_size
        self.sampling = Sampling(temperature=0.0, max_tokens=max_tokens)

    @classmethod
    def for_training(cls, cfg: TrainConfig, tokenizer, base_dir: Optional[Path] = None) -> Optional["GenerationEval"]:
        if cfg.eval_generate_rows <= 0:
            return None
        es = build_eval_set(cfg, tokenizer, base_dir, "validation", cfg.eval_generate_rows,
                            cfg.eval_generate_max_tokens)
        if not es.generation:
            raise ValueError("eval_generate_rows: no validation row ends with an assistant answer to generate")
        return cls(es.generation, cfg.eval_generate_max_tokens, cfg.eval_metric_tokenizer)

    def predict(self, backend) -> tuple[list[str], dict]:
        """(the answers, their corpus scores: rouge1/2/L/Lsum, bleu, exact_match)."""
        predictions = generate_all(backend, [r.prompt_ids for r in self.rows], self.sampling, self.batch_size)
        return predictions, score(predictions, [r.reference for r in self.rows], self.tokenizer).metrics

    def metrics(self, backend) -> dict:
        return {f"eval_{k}": v for k, v in self.predict(backend)[1].items()}

