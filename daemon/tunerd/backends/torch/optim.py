"""Config optimizer names -> torch / transformers / bitsandbytes optimizers.

The loop sets the learning rate every step (`optimizer_step(lr, ...)`), so the lr given here is
only the initial value. Adam-family optimizers use the config's betas, epsilon and weight decay;
torch's Adam/AdamW always apply bias correction (HF behaviour; the MLX backend matches it).
"""
from __future__ import annotations

import torch

# config name -> canonical name; HF TrainingArguments spellings are accepted too
_ALIASES = {
    "adamw": "adamw", "adamw_torch": "adamw", "adamw_torch_fused": "adamw", "adamw_hf": "adamw",
    "adam": "adam", "sgd": "sgd", "adafactor": "adafactor", "lion": "lion", "lion_32bit": "lion",
    "rmsprop": "rmsprop", "adagrad": "adagrad",
    "adamw_8bit": "adamw_8bit", "adamw_bnb_8bit": "adamw_8bit", "paged_adamw_8bit": "paged_adamw_8bit",
    "paged_adamw": "paged_adamw_32bit", "paged_adamw_32bit": "paged_adamw_32bit",
    "lion_8bit": "lion_8bit", "paged_lion_8bit": "paged_lion_8bit", "paged_lion_32bit": "paged_lion_32bit",
}
BNB_ONLY = {"adamw_8bit", "paged_adamw_8bit", "paged_adamw_32bit", "lion_8bit", "paged_lion_8bit",
            "paged_lion_32bit"}


class Lion(torch.optim.Optimizer):
    """Lion (Chen et al. 2023): sign of an interpolated momentum, decoupled weight decay."""

    def __init__(self, params, lr=1e-4, betas=(0.9, 0.99), weight_decay=0.0):
        super().__init__(params, dict(lr=lr, betas=betas, weight_decay=weight_decay))

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            b1, b2 = group["betas"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if "exp_avg" not in state:
                    state["exp_avg"] = torch.zeros_like(p)
                m = state["exp_avg"]
                p.mul_(1 - group["lr"] * group["weight_decay"])
                p.add_(torch.sign(m * b1 + p.grad * (1 - b1)), alpha=-group["lr"])
                m.mul_(b2).add_(p.grad, alpha=1 - b2)


def build_optimizer(cfg, params: list, device: torch.device) -> torch.optim.Optimizer:
    name = _ALIASES.get(cfg.optimizer.lower())
    if name is None:
        raise ValueError(f"optimizer: unknown optimizer {cfg.optimizer!r} for the torch backend; "
                         f"choose one of {sorted(_ALIASES)}")
    lr, wd = cfg.learning_rate, cfg.weight_decay
    betas, eps = (cfg.adam_beta1, cfg.adam_beta2), cfg.adam_epsilon
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr, betas=betas, eps=eps, weight_decay=wd)
    if name == "adam":  # torch semantics: weight_decay is an L2 term in the gradient
        return torch.optim.Adam(params, lr=lr, betas=betas, eps=eps, weight_decay=wd)
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, weight_decay=wd)
    if name == "rmsprop":
        return torch.optim.RMSprop(params, lr=lr, eps=eps, weight_decay=wd)
    if name == "adagrad":
        return torch.optim.Adagrad(params, lr=lr, eps=eps, weight_decay=wd)
    if name == "lion":
        return Lion(params, lr=lr, betas=(cfg.adam_beta1, 0.99), weight_decay=wd)
    if name == "adafactor":
        from transformers.optimization import Adafactor

        return Adafactor(params, lr=lr, weight_decay=wd, scale_parameter=False, relative_step=False,
                         warmup_init=False)
    # bitsandbytes optimizers: their home is CUDA; 8-bit state and paging need it
    if device.type != "cuda":
        raise ValueError(f"optimizer: {cfg.optimizer!r} (bitsandbytes 8-bit/paged) needs a CUDA device, "
                         f"not {device.type}; use adamw")
    import bitsandbytes as bnb

    cls = {"adamw_8bit": bnb.optim.AdamW8bit, "paged_adamw_8bit": bnb.optim.PagedAdamW8bit,
           "paged_adamw_32bit": bnb.optim.PagedAdamW32bit, "lion_8bit": bnb.optim.Lion8bit,
           "paged_lion_8bit": bnb.optim.PagedLion8bit, "paged_lion_32bit": bnb.optim.PagedLion32bit}[name]
    if "lion" in name:
        return cls(params, lr=lr, betas=(cfg.adam_beta1, 0.99), weight_decay=wd)
    return cls(params, lr=lr, betas=betas, eps=eps, weight_decay=wd)


def clipped_step(optimizer, params: list, scaler, lr: float, grad_scale: float, max_grad_norm: float) -> float:
    """Scale the accumulated grads by `grad_scale`, clip their global norm (`clip_grad_norm_`;
    max_grad_norm 0: no clipping), set the lr, step (through the GradScaler under float16), zero
    the grads; the norm before clipping."""
    if scaler:
        scaler.unscale_(optimizer)
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        raise RuntimeError("optimizer_step without forward_backward")
    torch._foreach_mul_(grads, grad_scale)
    norm = torch.nn.utils.clip_grad_norm_(params, max_grad_norm if max_grad_norm and max_grad_norm > 0
                                          else float("inf"))
    for group in optimizer.param_groups:
        group["lr"] = lr
    if scaler:
        scaler.step(optimizer)
        scaler.update()
    else:
        optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return float(norm)
