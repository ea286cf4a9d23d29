"""Looking inside a real backend from a test: logits of one sequence, and starting a torch adapter
from another backend's initial weights (the parity test). Not part of the Backend interface."""
from __future__ import annotations

from pathlib import Path

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
