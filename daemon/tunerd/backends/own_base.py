"""Adapters that need a base model of their own, recognised in one place.

Two kinds of saved adapter cannot sit beside others on one shared base (models/registry.py gives
them a base of their own; chat's attach refuses them):
- a full fine-tune: every weight of the model (`full_finetune_weights`);
- an adapter whose training added chat tokens to the vocabulary: their trained embedding (and
  head) rows in `added_tokens.safetensors`, with the grown tokenizer (`write_added_tokens`,
  `read_added_tokens`).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import numpy as np

from .adapter_layout import MLX_CONFIG, MLX_SUBDIR, MLX_WEIGHTS, AdapterLayoutError, write_tensors

ADDED_TOKENS = "added_tokens.safetensors"   # rows of chat special tokens the training added


def write_added_tokens(directory, embed_rows, head_rows, info: dict, tokenizer=None) -> Path:
    """Write the trained rows of added tokens (`info`: token_ids, tokens, vocab_size,
    end_of_turn) and, when given, the tokenizer (with its chat template) into `directory`."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tensors = {"embed_tokens": np.asarray(embed_rows, dtype=np.float32)}
    if head_rows is not None:
        tensors["lm_head"] = np.asarray(head_rows, dtype=np.float32)
    if len(info["token_ids"]) != tensors["embed_tokens"].shape[0]:
        raise AdapterLayoutError(f"added tokens: {len(info['token_ids'])} ids but "
                                 f"{tensors['embed_tokens'].shape[0]} rows")
    meta = {"token_ids": [int(i) for i in info["token_ids"]], "tokens": list(info.get("tokens") or []),
            "vocab_size": int(info["vocab_size"]), "end_of_turn": info.get("end_of_turn")}
    write_tensors(directory / ADDED_TOKENS, tensors, {"format": "np", "tunerd_added_tokens": json.dumps(meta)})
    if tokenizer is not None:
        tokenizer.save_pretrained(str(directory))
    return directory


def added_tokens_dir(directory) -> Optional[Path]:
    """The folder holding `added_tokens.safetensors` for an adapter path (dir or dir/mlx), if any."""
    d = Path(directory)
    for cand in (d, d.parent if d.name == MLX_SUBDIR else None):
        if cand is not None and (cand / ADDED_TOKENS).exists():
            return cand
    return None


def read_added_tokens(directory) -> Optional[dict]:
    """{token_ids, tokens, vocab_size, end_of_turn, embed_tokens, lm_head (or None), dir} or None."""
    from safetensors import safe_open

    d = added_tokens_dir(directory)
    if d is None:
        return None
    with safe_open(str(d / ADDED_TOKENS), framework="np") as f:
        meta = json.loads(f.metadata()["tunerd_added_tokens"])
        keys = set(f.keys())
        meta["embed_tokens"] = f.get_tensor("embed_tokens")
        meta["lm_head"] = f.get_tensor("lm_head") if "lm_head" in keys else None
    meta["dir"] = d
    meta["has_tokenizer"] = (d / "tokenizer_config.json").exists()
    return meta


def changes_base(directory) -> bool:
    """True for what cannot sit beside other adapters on one shared base: a full fine-tune (its
    own base weights) or an adapter that grew the vocabulary (added chat tokens, its own tokenizer).
    The model registry gives those a base of their own; every other adapter shares one."""
    return bool(full_finetune_weights(directory)) or added_tokens_dir(directory) is not None


def full_finetune_weights(directory) -> list[Path]:
    """The weight files of a full fine-tune saved in `directory`, or [] for an adapter: a
    standalone model (config.json and model*.safetensors, as save_pretrained and a full run on
    either backend write it), or mlx-lm's layout with `fine_tune_type: full` (its
    adapters.safetensors holds every weight)."""
    d = Path(directory)
    models = sorted(d.glob("model*.safetensors"))
    if (d / "config.json").exists() and models:
        return models
    for cfg in (d / MLX_SUBDIR / MLX_CONFIG, d / MLX_CONFIG):
        weights = cfg.parent / MLX_WEIGHTS
        if cfg.exists() and weights.exists():
            return [weights] if json.loads(cfg.read_text()).get("fine_tune_type") == "full" else []
    return []
