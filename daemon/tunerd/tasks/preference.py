"""What task dpo and task orpo share: preference pairs as batches, a step normalised by its pairs,
their loss written once in numpy over per-sequence log-probs, and their evaluation.

A batch of B pairs has 2B rows, chosen first (data/preference.py). Per micro-batch:
  1. (DPO) the reference log-probs: the same base with the adapter off (backend.sequence_logps(
     reference=True)): no second copy of the model;
  2. backend.forward_backward_sequences: the policy's log-probs with the adapter on; the task's
     `pair_loss` turns them into the summed loss of the pairs and its gradient with respect to
     each sequence's log-prob, which the backend back-propagates (sum_i w_i * d logp_i).
The loop divides the step's summed loss, its gradient and its metric sums by the step's pairs.
Metrics carry TRL's names (rewards/chosen, rewards/rejected, rewards/accuracies, rewards/margins),
so dashboards built for TRL read them; at eval they are eval_rewards/....
"""
from __future__ import annotations

import math

import numpy as np

from ..data.preference import iterate_pair_batches
from .base import Task


def log_sigmoid(x: np.ndarray) -> np.ndarray:
    return -np.logaddexp(0.0, -x)


def sigmoid(x: np.ndarray) -> np.ndarray:
    return np.exp(log_sigmoid(x))


def counts(batch) -> np.ndarray:
    """Supervised targets of each row (float64 [2B])."""
    return batch.loss_mask.sum(axis=1).astype(np.float64)


def n_pairs(batches) -> int:
    return sum(b.inputs.shape[0] // 2 for b in batches)


def reward_metrics(chosen: np.ndarray, rejected: np.ndarray) -> dict:
    """TRL's reward metrics, as sums over the pairs (the loop divides by the pairs)."""
    return {"rewards/chosen": float(chosen.sum()), "rewards/rejected": float(rejected.sum()),
            "rewards/accuracies": float((chosen > rejected).sum()), "rewards/margins": float((chosen - rejected).sum())}


REWARDS = ("rewards/chosen", "rewards/rejected", "rewards/accuracies", "rewards/margins", "logps/chosen",
           "logps/rejected")


class PreferenceTask(Task):
    packs = False
    metric_names = REWARDS
    sequences_per_row = 2
    needs_reference = False
    iterate = staticmethod(iterate_pair_batches)

    def check_data(self, report: dict) -> None:
        if report.get("format") != "preference":
            raise ValueError(f"task {self.name}: the rows are {report.get('format')!r}; it needs preference rows "
                             f"{{prompt, chosen, rejected}} (map yours with data.prompt_column, "
                             f"data.chosen_column and data.rejected_column)")

    def pair_loss(self, logps: np.ndarray, ref, n: np.ndarray, context: float) -> tuple[float, np.ndarray, dict]:
        """(summed loss over the pairs, d loss / d logps [2B], metric sums) for rows [chosen, rejected]."""
        raise NotImplementedError

    def context(self, batches) -> float:
        """What a step's (or the evaluation's) whole batch set adds to the loss (ORPO: pairs per chosen token)."""
        return 0.0

    def normaliser(self, step) -> float:
        return max(n_pairs(step.batches), 1)

    def forward_backward(self, backend, batch, step) -> tuple[float, dict]:
        n = counts(batch)
        ref = backend.sequence_logps(batch, reference=True) if self.needs_reference else None
        ctx = self.context(step.batches)
        return backend.forward_backward_sequences(batch, lambda logps: self.pair_loss(logps, ref, n, ctx))

    def eval_batches(self, rows: list, cfg, pad_id: int) -> list:
        return iterate_pair_batches(rows, cfg.per_device_eval_batch_size, pad_id, max_seq_length=cfg.max_seq_length,
                                    shuffle=False)

    def evaluate(self, backend, batches: list) -> tuple[float, float, dict]:
        """The loss and metrics over every eval pair; perplexity: of the chosen answers."""
        ctx, total, sums = self.context(batches), 0.0, {}
        refs = getattr(self, "_eval_refs", None)
        if refs is None or len(refs) != len(batches):   # the base's log-probs never change: once per run
            refs = self._eval_refs = [backend.sequence_logps(b, reference=True) if self.needs_reference else None
                                      for b in batches]
        chosen_lp = chosen_tokens = 0.0
        for b, ref in zip(batches, refs):
            n, logps = counts(b), backend.sequence_logps(b)
            value, _, metrics = self.pair_loss(logps, ref, n, ctx)
            total += value
            for k, v in metrics.items():
                sums[k] = sums.get(k, 0.0) + v
            half = len(n) // 2
            chosen_lp, chosen_tokens = chosen_lp + logps[:half].sum(), chosen_tokens + n[:half].sum()
        pairs = max(n_pairs(batches), 1)
        ppl = -chosen_lp / max(chosen_tokens, 1)
        metrics = {"eval_" + k: v / pairs for k, v in sums.items()}
        return total / pairs, math.exp(ppl) if ppl < 700 else float("inf"), {
            "eval_tokens": int(sum(counts(b).sum() for b in batches)), **metrics}
