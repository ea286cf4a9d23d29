"""task: sft -- next-token cross-entropy on the supervised (answer) tokens; the default.

A step's loss is the sum over its micro-batches' supervised tokens divided by their count
(transformers #34191), so accumulation and packing do not change it."""
from __future__ import annotations

from .base import Task


class SFT(Task):
    name = "sft"

    def check_data(self, report: dict) -> None:
        if report.get("format") == "preference":
            raise ValueError("data: the rows are preference pairs (chosen / rejected); train them with "
                             "task: dpo or task: orpo, or give prompt/completion rows for task: sft")

    def normaliser(self, step) -> float:
        return max(step.n_targets, 1)

    def forward_backward(self, backend, batch, step) -> tuple[float, dict]:
        loss_sum, _ = backend.forward_backward(batch)
        return loss_sum, {}
