"""What a task owns (tunerd/tasks/__init__.py has the registry):

    Task(cfg)
      name, packs, sequences_per_row     its config name; whether its rows may be packed; the
                                         sequences one data row becomes (the memory estimate's)
      metric_names                       the metrics its forward_backward returns (logged per step)
      check_data(report)                 the prepared data suits it (data.prepare's report)
      iterate                            how tokenized rows become one epoch's batches
      normaliser(step) -> float          what a step's summed loss (and its metrics) divide by
      forward_backward(backend, batch, step) -> (loss_sum, {metric: sum})
                                         one micro-batch's gradients accumulated on the backend
      eval_batches(rows, cfg, pad_id)    the evaluation's batches, in order
      evaluate(backend, batches) -> (eval_loss, perplexity, {eval metric: value})

Everything a backend computes for a task goes through `Backend` (backends/base.py); a task
imports neither mlx nor torch, so its loss is written once, in numpy, over what the backend
returns (summed token losses, or per-sequence log-probs and their gradient weights).
"""
from __future__ import annotations

from ..config.schema import TrainConfig
from ..data.prepare import iterate_batches
from ..evaluation.loss import eval_batches, mean_loss, perplexity


class Task:
    name = ""
    packs = True              # rows may be packed (packing: auto / true)
    sequences_per_row = 1     # a preference pair is 2
    metric_names: tuple = ()  # forward_backward's metric sums, summed across ranks in this order
    iterate = staticmethod(iterate_batches)

    def __init__(self, cfg: TrainConfig):
        self.cfg = cfg

    def check_data(self, report: dict) -> None:
        """Raise ValueError when the prepared data is not this task's kind."""

    def normaliser(self, step) -> float:
        raise NotImplementedError

    def forward_backward(self, backend, batch, step) -> tuple[float, dict]:
        raise NotImplementedError

    def eval_batches(self, rows: list, cfg: TrainConfig, pad_id: int) -> list:
        return eval_batches(rows, cfg, pad_id)

    def evaluate(self, backend, batches: list) -> tuple[float, float, dict]:
        loss, n = mean_loss(backend, batches)
        return loss, perplexity(loss), {"eval_tokens": n}
