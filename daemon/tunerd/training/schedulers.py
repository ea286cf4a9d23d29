"""Learning-rate schedules, pure Python, with Hugging Face's formulas (transformers.optimization).

`lr_at(step)` is the learning rate for the optimizer step taken after `step` completed steps
(HF calls `scheduler.step()` after `optimizer.step()`, so the first update uses factor(0): with
warmup that is 0). Every schedule ramps linearly over `warmup_steps` first.
`reduce_lr_on_plateau` is driven by eval loss through `on_eval(metric)` (torch's
ReduceLROnPlateau rules: mode min, factor 0.1, patience 10, relative threshold 1e-4, cooldown 0,
min_lr 0; override with lr_scheduler_kwargs, checked at submit: config/scheduler_kwargs.py). State
round-trips through `state_dict()`.
"""
from __future__ import annotations

import math
from typing import Optional

NAMES = ("linear", "cosine", "cosine_with_restarts", "polynomial", "constant", "constant_with_warmup",
         "inverse_sqrt", "cosine_with_min_lr", "warmup_stable_decay", "reduce_lr_on_plateau")


def warmup_steps_for(total_steps: int, warmup_steps: int, warmup_ratio: float) -> int:
    return warmup_steps if warmup_steps > 0 else math.ceil(total_steps * warmup_ratio)


class Scheduler:
    def __init__(self, name: str, base_lr: float, total_steps: int, warmup_steps: int = 0,
                 kwargs: Optional[dict] = None):
        if name not in NAMES:
            raise ValueError(f"lr_scheduler_type: {name!r} is not one of {', '.join(NAMES)}")
        self.name, self.base_lr, self.total, self.warmup = name, base_lr, max(total_steps, 1), warmup_steps
        self.kw = dict(kwargs or {})
        # reduce_lr_on_plateau state
        self.plateau_factor = 1.0
        self.best: Optional[float] = None
        self.bad_evals = 0
        self.cooldown_left = 0

    # ---- the factor of base_lr at a step --------------------------------------------------------
    def factor(self, step: int) -> float:
        w, total, kw = self.warmup, self.total, self.kw
        name = self.name
        if name == "constant":
            return 1.0
        if step < w:
            ramp = step / max(1, w)
            return ramp * (self.plateau_factor if name == "reduce_lr_on_plateau" else 1.0)
        if name in ("constant_with_warmup",):
            return 1.0
        if name == "reduce_lr_on_plateau":
            return self.plateau_factor
        progress = (step - w) / max(1, total - w)
        if name == "linear":
            return max(0.0, (total - step) / max(1, total - w))
        if name == "cosine":
            cycles = kw.get("num_cycles", 0.5)
            return max(0.0, 0.5 * (1.0 + math.cos(math.pi * cycles * 2.0 * progress)))
        if name == "cosine_with_restarts":
            cycles = kw.get("num_cycles", 1)
            if progress >= 1.0:
                return 0.0
            return max(0.0, 0.5 * (1.0 + math.cos(math.pi * ((cycles * progress) % 1.0))))
        if name == "polynomial":
            lr_end, power = kw.get("lr_end", 1e-7), kw.get("power", 1.0)
            if lr_end > self.base_lr:
                raise ValueError(f"lr_scheduler_kwargs.lr_end ({lr_end}) must be <= learning_rate ({self.base_lr})")
            if step > total:
                return lr_end / self.base_lr
            decay = (self.base_lr - lr_end) * (1 - progress) ** power + lr_end
            return decay / self.base_lr
        if name == "inverse_sqrt":
            timescale = kw.get("timescale") or w or 10_000
            return 1.0 / math.sqrt((step + timescale - w) / timescale)
        if name == "cosine_with_min_lr":
            if "min_lr" in kw:
                rate = kw["min_lr"] / self.base_lr
            else:
                rate = kw.get("min_lr_rate", 0.1)
            cycles = kw.get("num_cycles", 0.5)
            f = 0.5 * (1.0 + math.cos(math.pi * cycles * 2.0 * progress))
            return max(0.0, f * (1 - rate) + rate)
        if name == "warmup_stable_decay":
            decay = kw.get("num_decay_steps")
            if decay is None:
                decay = max(1, round((total - w) * kw.get("decay_ratio", 0.1)))
            stable = kw.get("num_stable_steps", max(0, total - w - decay))
            min_ratio = kw.get("min_lr_ratio", 0.0)
            if step < w + stable:
                return 1.0
            if step < w + stable + decay:
                p = (step - w - stable) / max(1, decay)
                kind = kw.get("decay_type", "cosine")
                if kind == "linear":
                    v = 1.0 - p
                elif kind in ("1-sqrt", "sqrt"):
                    v = 1.0 - math.sqrt(p)
                else:
                    v = max(0.0, 0.5 * (1.0 + math.cos(math.pi * kw.get("num_cycles", 0.5) * 2.0 * p)))
                return (1.0 - min_ratio) * v + min_ratio
            return min_ratio
        raise AssertionError(name)  # pragma: no cover

    def lr_at(self, step: int) -> float:
        return self.base_lr * self.factor(step)

    # ---- reduce_lr_on_plateau ---------------------------------------------------------------
    def on_eval(self, metric: float) -> None:
        if self.name != "reduce_lr_on_plateau" or metric is None or not math.isfinite(metric):
            return
        kw = self.kw
        mode = kw.get("mode", "min")
        thr = kw.get("threshold", 1e-4)
        rel = kw.get("threshold_mode", "rel") == "rel"
        if self.best is None:
            better = True
        elif mode == "min":
            better = metric < (self.best * (1 - thr) if rel else self.best - thr)
        else:
            better = metric > (self.best * (1 + thr) if rel else self.best + thr)
        if better:
            self.best, self.bad_evals = metric, 0
        else:
            self.bad_evals += 1
        if self.cooldown_left > 0:
            self.cooldown_left -= 1
            self.bad_evals = 0
        if self.bad_evals > kw.get("patience", 10):
            min_factor = kw.get("min_lr", 0.0) / self.base_lr
            new = max(self.plateau_factor * kw.get("factor", 0.1), min_factor)
            if self.plateau_factor - new > kw.get("eps", 1e-8):
                self.plateau_factor = new
            self.cooldown_left = kw.get("cooldown", 0)
            self.bad_evals = 0

    def state_dict(self) -> dict:
        return {"name": self.name, "plateau_factor": self.plateau_factor, "best": self.best,
                "bad_evals": self.bad_evals, "cooldown_left": self.cooldown_left}

    def load_state_dict(self, state: dict) -> None:
        self.plateau_factor = state.get("plateau_factor", 1.0)
        self.best = state.get("best")
        self.bad_evals = state.get("bad_evals", 0)
        self.cooldown_left = state.get("cooldown_left", 0)
