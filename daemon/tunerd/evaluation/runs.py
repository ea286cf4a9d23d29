"""Evaluate: loss/perplexity and generation metrics of the base model and/or adapters on the
same rows, side by side, with progress; with a retain set (data.retain, evaluation/retain.py) its
retain_* metrics and answers too, so base vs tuned shows what the tuning made the model forget.
Device work goes through `on_device` (the core passes the device worker's call), one generated
row per call, so a training job steps in between.

    EvalPlan(cfg, runs=[(label, adapter)], ...)   what to evaluate (resolved by the core)
    run_plan(plan, on_device, model_for) -> EvalProgress items; the last one carries `result` (EvalResult)
    score_predictions(predictions, references, tokenizer) -> EvalResult   (no model)
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, Iterator, Optional

from ..backends.generation import Sampling
from ..config.schema import TrainConfig
from ..data.batch import pad_id_of
from .data import build_eval_set
from .generation import DEFAULT_BATCH, generate_texts
from .loss import eval_batches, mean_loss, perplexity
from .metrics import score
from .retain import PREFIX as RETAIN, build_retain_set, changed

NO_DELTA = ("supervised_tokens", "retain_rows", "retain_tokens", "retain_changed")


@dataclass
class EvalPlan:
    cfg: TrainConfig                  # model, data (+ format), max_seq_length, eval batch size, debug
    runs: list                        # [(label, adapter path or "")], the first is the reference for deltas
    base_dir: Optional[Path] = None
    split: str = ""                   # "" -> test when the config has one, else validation
    max_generations: int = 0
    sampling: Sampling = field(default_factory=lambda: Sampling(temperature=0.0, max_tokens=128))
    generate_batch_size: int = DEFAULT_BATCH   # rows decoded together (issue 21)
    tokenizer: str = "whitespace"


@dataclass(frozen=True)
class Generation:
    row: int                 # index in the evaluated split
    prompt: str
    reference: str
    prediction: str
    scores: dict             # metric -> value for this row


@dataclass(frozen=True)
class EvalRun:
    label: str               # "base", "adapter", "job:<id>", a checkpoint name ...
    adapter: str             # resolved adapter path ("" for the base)
    loss: float
    perplexity: float
    rows: int
    metrics: dict
    generations: tuple = ()  # Generation
    deltas: dict = field(default_factory=dict)   # metrics minus those of the first run
    retain_generations: tuple = ()   # Generation, on the retain set's rows


@dataclass(frozen=True)
class EvalResult:
    loss: float              # the last run's numbers
    perplexity: float
    rows: int
    metrics: dict
    runs: tuple              # EvalRun, in order
    tokenizer: str           # the metric tokenizer used
    split: str               # the data split evaluated


@dataclass(frozen=True)
class EvalProgress:
    """One message of an evaluation's stream; the last one (and only it) carries `result`."""
    run: str = ""
    rows_done: int = 0
    rows_total: int = 0
    eta_seconds: float = 0.0
    elapsed_seconds: float = 0.0
    result: Optional[EvalResult] = None


def run_plan(plan: EvalPlan, on_device: Callable[[Callable], object], model_for: Callable[[str], object],
             should_stop: Callable[[], bool] = lambda: False) -> Iterator[EvalProgress]:
    """`model_for(adapter)` returns the backend with that adapter applied ("" = the base); it and
    everything touching it run inside `on_device`."""
    t0 = time.perf_counter()
    runs, done, total = [], 0, 0
    for i, (label, adapter) in enumerate(plan.runs):
        def prepare(adapter=adapter):
            backend = model_for(adapter)
            tok, pad = backend.tokenizer, pad_id_of(backend.tokenizer)
            es = build_eval_set(plan.cfg, tok, plan.base_dir, plan.split, plan.max_generations,
                                plan.sampling.max_tokens)
            rs = build_retain_set(plan.cfg, tok, plan.base_dir, plan.max_generations, plan.sampling.max_tokens)
            return (es, mean_loss(backend, eval_batches(es.rows, plan.cfg, pad)),
                    rs, rs and mean_loss(backend, eval_batches(rs.rows, plan.cfg, pad)))
        es, (loss, n_tok), rs, kept = on_device(prepare)
        to_generate = list(es.generation) + list(rs.generation if rs else [])
        if i == 0:
            total = len(to_generate) * len(plan.runs)
            yield EvalProgress(run=label, rows_done=0, rows_total=total, eta_seconds=0.0,
                               elapsed_seconds=time.perf_counter() - t0)
        texts: dict = {}
        backend = on_device(lambda adapter=adapter: model_for(adapter))
        for j, text in generate_texts(backend, [r.prompt_ids for r in to_generate], plan.sampling, should_stop,
                                      plan.generate_batch_size,
                                      run=lambda f, adapter=adapter: on_device(lambda: (model_for(adapter), f())[1])):
            texts[j] = text
            done += 1
            elapsed = time.perf_counter() - t0
            yield EvalProgress(run=label, rows_done=done, rows_total=total, elapsed_seconds=elapsed,
                               eta_seconds=elapsed / done * (total - done))
        if len(texts) < len(to_generate):  # the caller went away: stop without a result
            return
        predictions = [texts[j] for j in range(len(to_generate))]
        metrics = {"supervised_tokens": float(n_tok)}
        generations = _scored(es.generation, predictions[:len(es.generation)], plan.tokenizer, metrics, "")
        retained = ()
        if rs is not None:
            metrics.update(retain_loss=kept[0], retain_perplexity=perplexity(kept[0]),
                           retain_rows=float(len(rs.rows)), retain_tokens=float(kept[1]))
            retained = _scored(rs.generation, predictions[len(es.generation):], plan.tokenizer, metrics, RETAIN)
        runs.append(EvalRun(label, adapter, loss, perplexity(loss), len(es.rows), metrics, generations,
                            retain_generations=retained))
        split = es.split
    yield EvalProgress(result=_result(runs, plan.tokenizer, split))


def _scored(rows: list, predictions: list[str], tokenizer: str, metrics: dict, prefix: str) -> tuple:
    """Score `predictions` of `rows` into `metrics` (keys with `prefix`); the Generations."""
    if not rows:
        return ()
    s = score(predictions, [r.reference for r in rows], tokenizer)
    metrics.update({prefix + k: v for k, v in s.metrics.items()})
    return tuple(Generation(r.index, r.prompt, r.reference, p, sc) for r, p, sc in zip(rows, predictions, s.rows))


def _result(runs: list[EvalRun], tokenizer: str, split: str) -> EvalResult:
    first = runs[0]

    def deltas(run: EvalRun) -> dict:
        out = {k: run.metrics[k] - first.metrics[k] for k in run.metrics
               if k in first.metrics and k not in NO_DELTA}
        return dict(out, loss=run.loss - first.loss, perplexity=run.perplexity - first.perplexity)

    def with_changed(run: EvalRun) -> EvalRun:   # retain answers that differ from the first run's
        if not run.retain_generations:
            return run
        n = changed([g.prediction for g in run.retain_generations],
                    [g.prediction for g in first.retain_generations])
        return replace(run, metrics=dict(run.metrics, retain_changed=float(n)))
    runs = [replace(with_changed(run), deltas=deltas(run)) for run in runs]
    last = runs[-1]
    return EvalResult(last.loss, last.perplexity, last.rows, dict(last.metrics), tuple(runs), tokenizer, split)


def score_predictions(predictions: list[str], references: list[str], tokenizer: str = "whitespace",
                      prompts: Optional[list[str]] = None) -> EvalResult:
    """Score outputs made anywhere: the same metrics, no model."""
    s = score(predictions, references, tokenizer)
    prompts = prompts or [""] * len(predictions)
    run = EvalRun("predictions", "", 0.0, 0.0, len(predictions), dict(s.metrics),
                  tuple(Generation(i, q, r, p, sc)
                        for i, (q, p, r, sc) in enumerate(zip(prompts, predictions, references, s.rows))))
    return EvalResult(0.0, 0.0, len(predictions), dict(s.metrics), (run,), tokenizer, "")
