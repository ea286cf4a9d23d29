"""`tunerctl recommend`: hyper-parameters from model size, data size and free memory."""
from __future__ import annotations

import json
from pathlib import Path

from . import host
from .config.loader import load_config


def recommend(model: str = "", config_path: str = "", train_rows: int = 0) -> dict:
    """DESIGN.md §3: adapter and rank from model size, lr/epochs from data size, batch from memory."""
    reasons = []
    if config_path:
        cfg = load_config(config_path)
        model = model or cfg.model
        if not train_rows and isinstance(cfg.data.train, str) and Path(cfg.data.train).is_file():
            with open(cfg.data.train, "rb") as f:
                train_rows = sum(1 for line in f if line.strip())
    if not model:
        raise ValueError("model: required")
    params = _estimate_params(model)
    out: dict = {"model": model}
    if params < 1e9:
        out.update(peft_adapter="lora", quantization="none", lora_r=32, lora_alpha=64.0)
        reasons.append(f"{params / 1e6:.1f}M parameters (< 1B): LoRA r 32 on the full-precision base")
    elif params <= 7.5e9:
        out.update(peft_adapter="lora", quantization="4bit", lora_r=16, lora_alpha=32.0)
        reasons.append(f"{params / 1e9:.1f}B parameters (1-7B): QLoRA (4-bit base) r 16")
    else:
        out.update(peft_adapter="lora", quantization="4bit", lora_r=8, lora_alpha=16.0)
        reasons.append(f"{params / 1e9:.1f}B parameters (> 7B): QLoRA (4-bit base) r 8")
    if train_rows and train_rows < 1000:
        out.update(learning_rate=1e-4, num_epochs=10.0)
    elif train_rows and train_rows <= 10000:
        out.update(learning_rate=5e-5, num_epochs=5.0)
    elif train_rows:
        out.update(learning_rate=2e-5, num_epochs=3.0)
    if train_rows:
        reasons.append(f"{train_rows} training rows: learning_rate {out['learning_rate']}, "
                       f"{out['num_epochs']:.0f} epochs")
    _, avail = host.memory()
    weight_bytes = params * (0.6 if out["quantization"] == "4bit" else 4)
    spare = max(avail - weight_bytes * 1.3, 0)
    batch = 8 if spare > 16e9 else 4 if spare > 8e9 else 2 if spare > 3e9 else 1
    out.update(per_device_train_batch_size=batch, gradient_checkpointing=spare < 8e9,
               max_seq_length=2048 if spare > 8e9 else 1024)
    reasons.append(f"{avail / 2**30:.1f} GiB free, weights ~{weight_bytes / 2**30:.1f} GiB: batch {batch}, "
                   f"max_seq_length {out['max_seq_length']}, gradient_checkpointing "
                   f"{'on' if out['gradient_checkpointing'] else 'off'}")
    return {"config": out, "reasons": reasons}


def _estimate_params(model: str) -> float:
    cfg_path = Path(model).expanduser() / "config.json"
    if not cfg_path.exists():
        from huggingface_hub import hf_hub_download
        cfg_path = Path(hf_hub_download(model, "config.json"))
    c = json.loads(cfg_path.read_text())
    c = c.get("text_config", c)
    h, layers = c.get("hidden_size", 0), c.get("num_hidden_layers", 0)
    inter, vocab = c.get("intermediate_size", 4 * h), c.get("vocab_size", 0)
    embed = vocab * h * (1 if c.get("tie_word_embeddings") else 2)
    return float(layers * (4 * h * h + 3 * h * inter) + embed)
