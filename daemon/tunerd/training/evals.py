"""Evaluation during training: on the eval cadence, loss and perplexity on the validation batches
(+ generation metrics, + the retain set's retain_* metrics), then the metric that picks the best
checkpoint and drives early stopping.

    TrainingEval(cfg, tokenizer, rows, pad_id, base_dir, backend)   the eval batches (none: evaluation
                                                           is skipped); with data.retain and a backend, the
                                                           retain set (evaluation/retain.py: forgetting)
    .run(backend, step, epoch) -> Eval | None              one evaluation, as the event the Trainer emits
    .scalars(e) -> dict                                    its TensorBoard scalars
    .judge(e, state) -> (metric, stop)                     the best-model metric; stop: early stopping says so
    better(a, b, greater)                                  a beats the best so far (None: nothing yet)

The batches and the generation rows are what `tunerd.evaluation` computes for an Evaluate request
too (evaluation/loss.py, evaluation/generation.py), so a job's evals and a later Evaluate agree.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional

from ..config.schema import TrainConfig
from ..evaluation.generation import GenerationEval
from ..evaluation.retain import PREFIX as RETAIN, RetainEval
from ..tasks import Task, get_task
from . import events as ev
from .checkpoints import TrainerState
from .run_config import best_metric_rule


def better(a: float, b: Optional[float], greater: bool) -> bool:
    return b is None or (a > b if greater else a < b)


class TrainingEval:
    def __init__(self, cfg: TrainConfig, tokenizer, rows: list, pad_id: int, base_dir: Optional[Path],
                 backend=None, task: Optional[Task] = None):
        self.cfg, self.task = cfg, task or get_task(cfg)
        self.metric_name, self.greater = best_metric_rule(cfg)
        self.batches = self.task.eval_batches(rows, cfg, pad_id) if rows else []
        self.gen = GenerationEval.for_training(cfg, tokenizer, base_dir) \
            if self.batches and cfg.eval_generate_rows > 0 else None   # eval_rouge*, eval_bleu at each eval
        self.retain = RetainEval.for_training(cfg, backend, base_dir, pad_id) \
            if self.batches and backend is not None else None          # retain_loss ... (forgetting)

    def run(self, backend, step: int, epoch: float) -> Optional[ev.Eval]:
        """The task's loss, perplexity and metrics on the eval batches (+ generation metrics); None
        without batches."""
        if not self.batches:
            return None
        loss, ppl, metrics = self.task.evaluate(backend, self.batches)
        gen = self.gen.metrics(backend) if self.gen else {}
        gen.update(self.retain.metrics(backend) if self.retain else {})
        return ev.Eval(step=step, epoch=epoch, eval_loss=loss, perplexity=ppl,
                       metrics={"eval_loss": loss, "eval_perplexity": ppl, **metrics, **gen})

    @staticmethod
    def scalars(e: ev.Eval) -> dict:
        gen = {k: v for k, v in e.metrics.items() if k not in ("eval_loss", "eval_perplexity", "eval_tokens")}
        return {"eval/loss": e.eval_loss, "eval/perplexity": min(e.perplexity, 1e30),
                **{"retain/" + k[len(RETAIN):] if k.startswith(RETAIN) else "eval/" + k[5:]: min(v, 1e30)
                   for k, v in gen.items()}}

    def judge(self, e: ev.Eval, st: TrainerState) -> tuple[float, bool]:
        """The best-model metric of `e`, with the state's best eval and its count of evaluations
        without improvement updated; True when that count reached early_stopping_patience."""
        cfg = self.cfg
        metric = e.metrics.get(self.metric_name)
        if metric is None:
            raise ValueError(f"metric_for_best_model: {cfg.metric_for_best_model!r} is not an eval metric; "
                             f"choose one of {', '.join(sorted(e.metrics))}")
        improved = st.best_eval_metric is None or (
            better(metric, st.best_eval_metric, self.greater)
            and abs(metric - st.best_eval_metric) > cfg.early_stopping_threshold)
        if improved:
            st.best_eval_metric, st.evals_without_improvement = metric, 0
        else:
            st.evals_without_improvement += 1
        patience = cfg.early_stopping_patience
        return metric, patience is not None and st.evals_without_improvement >= patience
