"""task: dpo -- Direct Preference Optimisation against the base with the adapter off.

Per pair, with policy log-probs pc, pr and reference log-probs rc, rr of the chosen and rejected
answers (summed over their supervised tokens), d = (pc - rc) - (pr - rr) and z = beta * d:
    sigmoid  -(1 - ls) log sigmoid(z) - ls log sigmoid(-z)     (ls = label_smoothing: cDPO)
    ipo      (dc / nc - dr / nr - 1 / (2 beta))^2, dc = pc - rc, dr = pr - rr; n: supervised tokens
             (TRL's length-normalised IPO)
    hinge    max(0, 1 - z)
rewards/chosen = beta (pc - rc), rewards/rejected = beta (pr - rr), as TRL's DPOTrainer logs them;
with label_smoothing 0 the losses equal TRL 1.16's (tests/test_tasks.py checks them, within 1e-4).
"""
from __future__ import annotations

import numpy as np

from .preference import PreferenceTask, log_sigmoid, reward_metrics, sigmoid


def dpo_loss(pc, pr, rc, rr, nc, nr, beta: float, loss_type: str = "sigmoid", label_smoothing: float = 0.0):
    """Per pair: (losses, d losses / d pc, d losses / d pr, chosen rewards, rejected rewards)."""
    dc, dr = pc - rc, pr - rr
    if loss_type == "sigmoid":
        z = beta * (dc - dr)
        losses = -(1 - label_smoothing) * log_sigmoid(z) - label_smoothing * log_sigmoid(-z)
        g = beta * (-(1 - label_smoothing) * sigmoid(-z) + label_smoothing * sigmoid(z))
        gc, gr = g, -g
    elif loss_type == "ipo":
        nc, nr = np.maximum(nc, 1.0), np.maximum(nr, 1.0)
        delta = dc / nc - dr / nr - 1 / (2 * beta)
        losses = delta ** 2
        gc, gr = 2 * delta / nc, -2 * delta / nr
    elif loss_type == "hinge":
        z = beta * (dc - dr)
        losses = np.maximum(0.0, 1 - z)
        g = np.where(1 - z > 0, -beta, 0.0)
        gc, gr = g, -g
    else:
        raise ValueError(f"loss_type: {loss_type!r} is not one of sigmoid, ipo, hinge")
    return losses, gc, gr, beta * dc, beta * dr


class DPO(PreferenceTask):
    name = "dpo"
    needs_reference = True

    def pair_loss(self, logps, ref, n, context):
        half = len(logps) // 2
        cfg = self.cfg
        losses, gc, gr, chosen, rejected = dpo_loss(logps[:half], logps[half:], ref[:half], ref[half:], n[:half],
                                                    n[half:], cfg.beta, cfg.loss_type, cfg.label_smoothing)
        metrics = {**reward_metrics(chosen, rejected), "logps/chosen": float(logps[:half].sum()),
                   "logps/rejected": float(logps[half:].sum())}
        return float(losses.sum()), np.concatenate([gc, gr]), metrics
