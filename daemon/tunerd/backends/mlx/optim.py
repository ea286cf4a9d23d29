"""Config optimizer names -> mlx.optimizers, and the clipped update step.

Adam/AdamW use `bias_correction=True`, as torch does (DESIGN.md §2). The loop sets the learning
rate every step (`optimizer_step(lr, ...)`), so the lr given here is only the initial value.
"""
from __future__ import annotations

import mlx.core as mx
import mlx.optimizers as optim
from mlx.utils import tree_flatten, tree_map

from ...config.schema import TrainConfig

OPTIMIZERS = ("adamw", "adam", "sgd", "adafactor", "lion")


def make_optimizer(cfg: TrainConfig, warnings: list) -> optim.Optimizer:
    name = cfg.optimizer.lower()
    lr, betas, eps, wd = cfg.learning_rate, [cfg.adam_beta1, cfg.adam_beta2], cfg.adam_epsilon, cfg.weight_decay
    if name.startswith("adamw") or name.startswith("paged_adamw"):
        return optim.AdamW(lr, betas=betas, eps=eps, weight_decay=wd, bias_correction=True)
    if name == "adam":
        if wd:
            warnings.append(f"optimizer adam on mlx has no weight decay; weight_decay={wd} ignored (use adamw)")
        return optim.Adam(lr, betas=betas, eps=eps, bias_correction=True)
    if name == "sgd":
        return optim.SGD(lr, momentum=float(cfg.lr_scheduler_kwargs.get("momentum", 0.0)), weight_decay=wd)
    if name == "adafactor":  # external learning rate, like HF's Adafactor(relative_step=False)
        return optim.Adafactor(lr, relative_step=False, scale_parameter=False, warmup_init=False, weight_decay=wd)
    if name == "lion":
        return optim.Lion(lr, weight_decay=wd)
    raise ValueError(f"optimizer: {cfg.optimizer!r} is not available on mlx; choose one of {', '.join(OPTIMIZERS)}")


def clipped_update(model, opt):
    """update(grads, grad_scale, max_norm) -> the global norm: scale the accumulated gradients,
    clip their global norm (torch's formula: max_norm / (norm + 1e-6); max_norm 0: no clipping),
    step `opt` on `model`."""
    def update(grads, grad_scale, max_norm):
        grads = tree_map(lambda g: g * grad_scale, grads)
        norm = mx.sqrt(sum(mx.sum(mx.square(g.astype(mx.float32))) for _, g in tree_flatten(grads)))
        factor = mx.where(max_norm > 0, mx.minimum(max_norm / (norm + 1e-6), 1.0), 1.0)
        opt.update(model, tree_map(lambda g: (g * factor).astype(g.dtype), grads))
        return norm
    return update
