"""Training FLOPs per token: the numerator of TFLOP/s and MFU (the device's peak is the denominator).

MFU (model FLOPs utilisation, PaLM appendix B / nanoGPT) = model FLOPs per second / device peak.
Model FLOPs per token, for a decoder with N matmul parameters (every linear layer of the blocks and
the LM head; embedding lookups are free), L layers, attention width d and sequence length T:

    forward                     2 N + 4 L d T          (QK^T and AV: 2 L d T each, no causal discount)
    backward, input gradients   2 N + 8 L d T          (attention backward ~ 2x its forward)
    backward, weight gradients  2 N_trainable          (LoRA: the adapter only; full: all N)

so full fine-tuning is the familiar 6 N + 12 L d T and LoRA is 4 N + 2 N_trainable + 12 L d T: a frozen
base has no weight-gradient matmuls, and counting them would flatter LoRA's MFU by 1.5x. Work a
backend skips (the LM head on prompt positions) is not subtracted: MFU is a model figure.

The device's peak is the backend's (`Backend.peak_flops()`: measured once per device and dtype, and
cached, backends/peak.py); `backends.registry.peak_flops(device, dtype)` picks one for scripts.
"""
from __future__ import annotations


def matmul_params(model_config: dict) -> tuple[int, int, int]:
    """(matmul parameters N incl. the LM head, layers L, attention width d) from an HF config.json;
    (0, 0, 0) for a config without the usual architecture keys (MFU then reads 0)."""
    c = model_config.get("text_config", model_config)
    try:
        d = int(c.get("hidden_size") or c.get("n_embd") or c.get("d_model"))
        layers = int(c.get("num_hidden_layers") or c.get("n_layer"))
        heads = int(c.get("num_attention_heads") or c.get("n_head"))
        vocab = int(c.get("vocab_size"))
    except (TypeError, ValueError):
        return 0, 0, 0
    head_dim = int(c.get("head_dim") or d // heads)
    kv = int(c.get("num_key_value_heads") or heads)
    ff = int(c.get("intermediate_size") or c.get("n_inner") or 4 * d)
    gated = c.get("model_type") not in ("gpt2", "gpt_neox", "phi", "opt", "bloom", "falcon", "starcoder2")
    attn = d * heads * head_dim * 2 + d * kv * head_dim * 2          # q, o and k, v
    mlp = d * ff * (3 if gated else 2)
    return layers * (attn + mlp) + d * vocab, layers, heads * head_dim


def flops_per_token(model_config: dict, seq_len: float, trainable_fraction: float = 0.0,
                    full: bool = False) -> float:
    """Training FLOPs per token (forward + backward) at mean sequence length `seq_len`.
    `trainable_fraction` is trainable / total parameters (the adapter's share); `full` counts
    weight gradients for every matmul."""
    n, layers, d = matmul_params(model_config)
    trainable = n if full else trainable_fraction * n
    return 4 * n + 2 * trainable + 12 * layers * d * float(seq_len)
