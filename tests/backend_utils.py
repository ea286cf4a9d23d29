"""Helpers for tests of the real backends: build one with an adapter on the demo task, step it,
look inside it (logits of one sequence, memory kept for backward), and start a torch adapter from
another backend's initial weights (the parity test). Not part of the Backend interface."""
from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

import numpy as np


def logits(be, ids: list[int]) -> np.ndarray:
    """float32 logits [T, V] of one unpacked sequence through the backend's current model."""
    if be.name == "mlx":
        import mlx.core as mx

        be.model.eval()
        return np.array(be.model(mx.array([ids]))[0].astype(mx.float32))
    import torch

    be.model.eval()
    with torch.no_grad():
        out = be.model(input_ids=torch.tensor([ids], device=be.device), use_cache=False)
    return out.logits[0].float().cpu().numpy()


def copy_into_trainable_adapter(torch_be, path: Path) -> None:
    """Overwrite the torch backend's trainable adapter (added with add_adapter) with the tensors
    of a saved adapter of the same shape; the optimizer keeps its parameters."""
    import torch
    from peft import set_peft_model_state_dict

    from tunerd.backends import adapter_layout as layout

    _, weights = layout.read_adapter(path, prefer="peft")
    sd = {k: torch.from_numpy(np.asarray(v, dtype=np.float32)) for k, v in layout.mlx_to_peft(weights).items()}
    res = set_peft_model_state_dict(torch_be.model, sd)
    assert sd and not res.unexpected_keys, res.unexpected_keys[:5]


class Row(NamedTuple):
    ids: list
    mask: list


def demo_rows(bundle, tokenizer) -> tuple[list, list]:
    """(train, validation) rows of the demo task as Row(ids, loss mask): prompt masked, answer +
    end of turn supervised. Built here so that backend tests depend on the batch format only."""
    import json

    def load(path):
        out = []
        for line in open(path, encoding="utf-8"):
            r = json.loads(line)
            msgs = [{"role": "user", "content": r["prompt"]}]
            p = tokenizer.apply_chat_template(msgs, add_generation_prompt=True, tokenize=True)
            full = tokenizer.apply_chat_template(msgs + [{"role": "assistant", "content": r["completion"]}],
                                                 tokenize=True)
            p, full = (list(x["input_ids"] if hasattr(x, "keys") else x) for x in (p, full))
            out.append(Row(full, [0.0] * len(p) + [1.0] * (len(full) - len(p))))
        return out

    return load(bundle["train"]), load(bundle["valid"])


def backward_bytes(be, batch) -> int:
    """Peak bytes a forward_backward holds for the backward pass beyond the model's own weights:
    the device allocator's peak on MLX; on torch, the live tensors autograd saved for backward
    (parameters excluded), tracked exactly through saved-tensor hooks (CPU has no allocator
    statistics, and RSS peaks cannot be reset)."""
    if be.name == "mlx":
        import mlx.core as mx

        mx.clear_cache()
        before = mx.get_active_memory()
        mx.reset_peak_memory()
        be.forward_backward(batch)
        return mx.get_peak_memory() - before
    import weakref

    import torch

    params = {p.untyped_storage().data_ptr() for p in be.model.parameters()}
    live: dict = {}          # storage -> [bytes, tensors saved from it that autograd still holds]
    total, peak = [0], [0]

    class Held:
        def __init__(self, t):
            self.t = t

    def pack(t):
        held = Held(t)
        key = t.untyped_storage().data_ptr()
        if key not in params:
            entry = live.setdefault(key, [t.untyped_storage().nbytes(), 0])
            entry[1] += 1
            if entry[1] == 1:
                total[0] += entry[0]
                peak[0] = max(peak[0], total[0])
            weakref.finalize(held, release, key)
        return held

    def release(key):
        live[key][1] -= 1
        if not live[key][1]:
            total[0] -= live.pop(key)[0]

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda held: held.t):
        be.forward_backward(batch)
    return peak[0]


def make(name: str, bundle, **kw):
    """(cfg, a `name` backend with a fresh adapter, (train rows, validation rows)) on the demo task."""
    from tunerd.backends.base import ModelSpec
    from tunerd.backends.registry import get_backend
    from tunerd.config.schema import DataConfig, TrainConfig

    defaults = dict(lora_r=8, lora_alpha=16, lora_target_modules="all-linear", learning_rate=5e-3, seed=0,
                    group_size=32)
    cfg = TrainConfig(model=bundle["model"], backend=name,
                      data=DataConfig(train=bundle["train"], validation=bundle["valid"]), **{**defaults, **kw})
    be = get_backend(name)
    be.load(ModelSpec.from_config(cfg))
    be.add_adapter(cfg)
    return cfg, be, demo_rows(bundle, be.tokenizer)


def batches(be, rows, n_epochs: int = 1, bs: int = 4) -> list:
    from tunerd.data.prepare import iterate_batches

    pad = be.tokenizer.pad_token_id
    return [b for e in range(n_epochs) for b in iterate_batches(rows, bs, pad, seed=0, epoch=e)]


def train_steps(be, batch_list, lr: float, steps: int) -> list[float]:
    """Per-token training losses of `steps` optimizer steps, one batch each."""
    losses = []
    for b in batch_list[:steps]:
        s, n = be.forward_backward(b)
        be.optimizer_step(lr, 1.0 / n, 1.0)
        losses.append(s / n)
    return losses
