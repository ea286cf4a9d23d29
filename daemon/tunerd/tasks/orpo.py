"""task: orpo -- Odds Ratio Preference Optimisation: SFT on the chosen answers plus an odds-ratio
term, no reference model (Hong et al. 2024; TRL's ORPOTrainer).

With ac, ar the chosen / rejected answers' mean log-prob per supervised token:
    log_odds = (ac - ar) - (log(1 - e^ac) - log(1 - e^ar))
    loss     = NLL(chosen) - beta * mean(log sigmoid(log_odds))
NLL(chosen) is the mean cross-entropy over all chosen answer tokens of the step (TRL takes the
chosen prompt tokens into it too; here, as for SFT, only the answer is supervised).
rewards/chosen = beta * ac, rewards/rejected = beta * ar (TRL's); also nll_loss, log_odds_ratio
(mean log sigmoid(log_odds)) and log_odds_chosen (mean log_odds).
"""
from __future__ import annotations

import numpy as np

from .preference import REWARDS, PreferenceTask, log_sigmoid, n_pairs, reward_metrics, sigmoid


def log1mexp(x):
    """log(1 - e^x) for x < 0, stable on both sides of -ln 2 (TRL's)."""
    return np.where(x < -0.6931471805599453, np.log1p(-np.exp(x)), np.log(-np.expm1(x)))


def odds_ratio(ac, ar, beta: float):
    """Per pair: (beta * log sigmoid(log_odds), its derivative by ac and by ar, log_odds)."""
    ac, ar = np.minimum(ac, -1e-12), np.minimum(ar, -1e-12)
    log_odds = (ac - ar) - (log1mexp(ac) - log1mexp(ar))
    ratio = beta * log_sigmoid(log_odds)
    g = beta * sigmoid(-log_odds)   # d ratio / d log_odds
    # d log1mexp(x) / dx = -1 / expm1(-x)
    return ratio, g * (1 + 1 / np.expm1(-ac)), -g * (1 + 1 / np.expm1(-ar)), log_odds


class ORPO(PreferenceTask):
    name = "orpo"
    metric_names = REWARDS + ("nll_loss", "log_odds_ratio", "log_odds_chosen")

    def context(self, batches) -> float:
        """Pairs per chosen answer token of the whole step: NLL(chosen) is a mean over those tokens."""
        chosen = sum(float(b.loss_mask[:b.inputs.shape[0] // 2].sum()) for b in batches)
        return n_pairs(batches) / max(chosen, 1.0)

    def pair_loss(self, logps, ref, n, context):
        half = len(logps) // 2
        pc, pr = logps[:half], logps[half:]
        nc, nr = np.maximum(n[:half], 1.0), np.maximum(n[half:], 1.0)
        ratio, g_ac, g_ar, log_odds = odds_ratio(pc / nc, pr / nr, self.cfg.beta)
        nll = -pc.sum() * context              # this micro-batch's share of pairs x NLL(chosen)
        loss = nll - ratio.sum()
        grad = np.concatenate([-context - g_ac / nc, -g_ar / nr])
        metrics = {**reward_metrics(self.cfg.beta * pc / nc, self.cfg.beta * pr / nr), "nll_loss": float(nll),
                   "log_odds_ratio": float((ratio / self.cfg.beta).sum()), "log_odds_chosen": float(log_odds.sum()),
                   "logps/chosen": float((pc / nc).sum()), "logps/rejected": float((pr / nr).sum())}
        return float(loss), grad, metrics

