"""Evaluate: loss/perplexity and generation metrics of the base model and/or adapters on the
same rows, side by side, with progress. Device work goes through `on_device` (the core passes the
device worker's call), one generated row per call, so a training job steps in between.

    EvalPlan(cfg, runs=[(label, adapter)], ...)   what to evaluate (resolved by the core)
    run_plan(plan, on_device, model_for) -> iterator of progress dicts, then {"result": ...}
    score_predictions(predictions, references, tokenizer) -> result   (no model)
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Optional

from ..backends.generation import Sampling
from ..config.schema import TrainConfig
from ..data.batch import pad_id_of
from .data import build_eval_set
from .generation import generate_text
from .loss import eval_batches, mean_loss, perplexity
from .metrics import score


@dataclass
class EvalPlan:
    cfg: TrainConfig                  # model, data (+ format), max_seq_length, eval batch size, debug
    runs: list                        # [(label, adapter path or "")], the first is the reference for deltas
    base_dir: Optional[Path] = None
    split: str = ""                   # "" -> test when the config has one, else validation
    max_generations: int = 0
    sampling: Sampling = field(default_factory=lambda: Sampling(temperature=0.0, max_tokens=128))
    tokenizer: str = "whitespace"


def run_plan(plan: EvalPlan, on_device: Callable[[Callable], object], model_for: Callable[[str], object],
             should_stop: Callable[[], bool] = lambda: False) -> Iterator[dict]:
    """`model_for(adapter)` returns the backend with that adapter applied ("" = the base); it and
    everything touching it run inside `on_device`."""
    t0 = time.perf_counter()
    runs, done, total = [], 0, 0
    for i, (label, adapter) in enumerate(plan.runs):
        def prepare(adapter=adapter):
            backend = model_for(adapter)
            es = build_eval_set(plan.cfg, backend.tokenizer, plan.base_dir, plan.split, plan.max_generations,
                                plan.sampling.max_tokens)
            return es, mean_loss(backend, eval_batches(es.rows, plan.cfg, pad_id_of(backend.tokenizer)))
        es, (loss, n_tok) = on_device(prepare)
        if i == 0:
            total = len(es.generation) * len(plan.runs)
            yield {"run": label, "rows_done": 0, "rows_total": total, "eta_seconds": 0.0,
                   "elapsed_seconds": time.perf_counter() - t0}
        predictions = []
        for row in es.generation:
            if should_stop():  # the caller went away: stop without a result
                return
            predictions.append(on_device(lambda ids=row.prompt_ids, adapter=adapter: generate_text(
                model_for(adapter), ids, plan.sampling, should_stop)))
            done += 1
            elapsed = time.perf_counter() - t0
            yield {"run": label, "rows_done": done, "rows_total": total, "elapsed_seconds": elapsed,
                   "eta_seconds": elapsed / done * (total - done)}
        run = {"label": label, "adapter": adapter, "loss": loss, "perplexity": perplexity(loss),
               "rows": len(es.rows), "metrics": {"supervised_tokens": float(n_tok)}, "generations": []}
        if es.generation:
            s = score(predictions, [r.reference for r in es.generation], plan.tokenizer)
            run["metrics"].update(s.metrics)
            run["generations"] = [{"row": r.index, "prompt": r.prompt, "reference": r.reference, "prediction": p,
                                   "scores": sc} for r, p, sc in zip(es.generation, predictions, s.rows)]
        runs.append(run)
        split = es.split
    yield {"result": _result(runs, plan.tokenizer, split)}


def _result(runs: list[dict], tokenizer: str, split: str) -> dict:
    first = runs[0]
    for run in runs:
        run["deltas"] = {k: run["metrics"][k] - first["metrics"][k] for k in run["metrics"]
                         if k in first["metrics"] and k != "supervised_tokens"}
        run["deltas"].update(loss=run["loss"] - first["loss"], perplexity=run["perplexity"] - first["perplexity"])
    last = runs[-1]
    return {"loss": last["loss"], "perplexity": last["perplexity"], "rows": last["rows"],
            "metrics": dict(last["metrics"]), "runs": runs, "tokenizer": tokenizer, "split": split}


def score_predictions(predictions: list[str], references: list[str], tokenizer: str = "whitespace",
                      prompts: Optional[list[str]] = None) -> dict:
    """Score outputs made anywhere: the same metrics, no model."""
    s = score(predictions, references, tokenizer)
    prompts = prompts or [""] * len(predictions)
    run = {"label": "predictions", "adapter": "", "loss": 0.0, "perplexity": 0.0, "rows": len(predictions),
           "metrics": dict(s.metrics), "deltas": {},
           "generations": [{"row": i, "prompt": q, "reference": r, "prediction": p, "scores": sc}
                           for i, (q, p, r, sc) in enumerate(zip(prompts, predictions, references, s.rows))]}
    return {"loss": 0.0, "perplexity": 0.0, "rows": len(predictions), "metrics": dict(s.metrics), "runs": [run],
            "tokenizer": tokenizer, "split": ""}
