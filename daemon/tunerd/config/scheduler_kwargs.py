"""`lr_scheduler_kwargs`, checked at submit: the keys the learning-rate schedules read
(training/schedulers.py: Hugging Face's formulas, torch's ReduceLROnPlateau rules) and the MLX SGD
optimizer's momentum, each a number >= 0 or one of a few names.

    kwargs_problems(name, kwargs, base_lr) -> list[str]   one message per problem (the loader's validator)
"""
from __future__ import annotations

import math

_KWARG_CHOICES = {"decay_type": ("cosine", "linear", "1-sqrt", "sqrt"), "mode": ("min", "max"),
                  "threshold_mode": ("rel", "abs")}
_NUMERIC_KWARGS = ("num_cycles", "lr_end", "power", "timescale", "min_lr", "min_lr_rate", "num_decay_steps",
                   "decay_ratio", "num_stable_steps", "min_lr_ratio", "threshold", "patience", "factor", "eps",
                   "cooldown", "momentum")


def kwargs_problems(name: str, kwargs, base_lr) -> list[str]:
    """Problems with `lr_scheduler_kwargs` (checked at submit by the config validator)."""
    import difflib

    if not isinstance(kwargs, dict):
        return [f"lr_scheduler_kwargs: expected a mapping such as {{num_cycles: 0.5}}, got {kwargs!r}"]
    p = []
    known = (*_NUMERIC_KWARGS, *_KWARG_CHOICES)
    for key, value in kwargs.items():
        full = f"lr_scheduler_kwargs.{key}"
        if key in _KWARG_CHOICES:
            if value not in _KWARG_CHOICES[key]:
                p.append(f"{full}: {value!r} is not one of {', '.join(_KWARG_CHOICES[key])}")
        elif key in _NUMERIC_KWARGS:
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
                    or value < 0:
                p.append(f"{full}: expected a number >= 0, got {value!r}")
        else:
            close = difflib.get_close_matches(str(key), known, n=1, cutoff=0.6)
            p.append(f"{full}: unknown key" + (f"; did you mean lr_scheduler_kwargs.{close[0]}?" if close else
                                                f" (known: {', '.join(known)})"))
    lr_end = kwargs.get("lr_end")
    if name == "polynomial" and isinstance(lr_end, (int, float)) and isinstance(base_lr, (int, float)) \
            and lr_end > base_lr:
        p.append(f"lr_scheduler_kwargs.lr_end ({lr_end}) must be <= learning_rate ({base_lr})")
    return p
