"""Fuse an adapter into its base model and write a standalone Hugging Face-format model.

    fuse(model_path, adapter_path, out_dir, dequantize=False) -> Path

The adapter may be in either layout (PEFT dir, mlx-lm dir, or our `adapter/` with both). The merge
happens in float32 (W' = W + scale * B A, DoRA rescaled per row) and the result is saved in the
base's float dtype, so `mlx_lm.load(out_dir)` and `transformers.AutoModelForCausalLM
.from_pretrained(out_dir)` both load it.

A QLoRA run quantizes the base in memory only; its base on disk is float, and the adapter is merged
into that float base. If the base *on disk* is quantized (e.g. an mlx-community 4-bit model),
merging and re-quantizing can silently wash the adapter out (mlx-lm #1172), so that is refused
unless `dequantize=True`, which writes a float model.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path


class FuseError(ValueError):
    pass


def fuse(model_path, adapter_path, out_dir, dequantize: bool = False) -> Path:
    import mlx.core as mx
    from mlx.utils import tree_flatten, tree_unflatten
    from mlx_lm.tuner.dora import DoRALinear
    from mlx_lm.tuner.lora import LoRALinear
    from mlx_lm.utils import dequantize_model, load, save_config, save_model

    from ..backends import adapter_layout as layout
    from ..backends.mlx.model import apply_lora, is_quantized, resolve_lora_keys

    out = Path(out_dir)
    model, wrapper, config = load(str(model_path), return_config=True)
    if is_quantized(model):
        if not dequantize:
            raise FuseError(f"{model_path} is quantized: fusing into it would re-quantize the merged weights and can "
                            f"silently lose the adapter (mlx-lm #1172); fuse with dequantize=True "
                            f"(--dequantize) to write a float model, or fuse into the float base")
        model = dequantize_model(model)
        config.pop("quantization", None)
        config.pop("quantization_config", None)
    dtypes = {v.dtype for _, v in tree_flatten(model.parameters())}
    save_dtype = mx.bfloat16 if mx.bfloat16 in dtypes else mx.float16 if mx.float16 in dtypes else mx.float32
    model.set_dtype(mx.float32)

    kind, where = layout.find_layout(adapter_path)
    if kind == "mlx" and json.loads((where / layout.MLX_CONFIG).read_text()).get("fine_tune_type") == "full":
        model.load_weights(str(where / layout.MLX_WEIGHTS), strict=False)
    else:
        spec, weights = layout.read_adapter(adapter_path)
        keys = spec.keys or resolve_lora_keys(model, spec.target_modules)
        n = len(model.layers)
        apply_lora(model, kind=spec.kind, keys=keys, num_layers=n - min(spec.layers) if spec.layers else spec.num_layers,
                   r=spec.r, scale=spec.scale, dropout=0.0)
        params = dict(tree_flatten(model.parameters()))
        bad = [k for k in weights if k not in params]
        if bad:
            raise FuseError(f"{adapter_path}: adapter tensors do not fit {model_path}: {bad[:5]}")
        model.load_weights([(k, mx.array(v).astype(mx.float32)) for k, v in weights.items()], strict=False)
        fused = [(name, m.fuse(dequantize=True)) for name, m in model.named_modules()
                 if isinstance(m, (LoRALinear, DoRALinear))]
        model.update_modules(tree_unflatten(fused))
    added = layout.read_added_tokens(adapter_path)
    if added is not None:  # chat special tokens the training added: grow the vocabulary, write the rows
        wrapper = _fuse_added_tokens(model, config, added, wrapper)
    model.set_dtype(save_dtype)
    mx.eval(model.parameters())

    tmp = out.parent / f".tmp-{out.name}"
    if tmp.exists():
        shutil.rmtree(tmp)
    save_model(tmp, model)
    config["torch_dtype"] = {mx.bfloat16: "bfloat16", mx.float16: "float16"}.get(save_dtype, "float32")
    save_config(dict(config), tmp / "config.json")
    wrapper._tokenizer.save_pretrained(str(tmp))
    src = Path(model_path)
    for extra in ("generation_config.json",):
        if (src / extra).exists():
            shutil.copy(src / extra, tmp / extra)
    if added is not None and added.get("end_of_turn") and (tmp / "generation_config.json").exists():
        gen = json.loads((tmp / "generation_config.json").read_text())
        eos = gen.get("eos_token_id")
        eos = [eos] if isinstance(eos, int) else list(eos or [])
        eot = int(wrapper._tokenizer.convert_tokens_to_ids(added["end_of_turn"]))
        gen["eos_token_id"] = eos + [eot] if eot not in eos else eos
        (tmp / "generation_config.json").write_text(json.dumps(gen, indent=2))
    if out.exists():
        shutil.rmtree(out)
    tmp.rename(out)
    return out


def _fuse_added_tokens(model, config: dict, added: dict, wrapper):
    """Dense embed_tokens / lm_head of the grown vocabulary with the adapter's rows; config
    vocab_size and the adapter's tokenizer (its tokens, chat template, end-of-turn stop)."""
    import mlx.core as mx
    import mlx.nn as nn
    import numpy as np
    from mlx_lm.tokenizer_utils import TokenizerWrapper
    from transformers import AutoTokenizer

    from ..backends.mlx.model import _embed_owner

    owner = _embed_owner(model)
    ids = np.asarray(added["token_ids"])

    def grown(weight, rows):
        w = np.array(weight.astype(mx.float32))
        if added["vocab_size"] > w.shape[0]:
            w = np.concatenate([w, np.zeros((added["vocab_size"] - w.shape[0], w.shape[1]), np.float32)])
        w[ids] = rows
        return mx.array(w)

    emb = nn.Embedding(added["vocab_size"], owner.embed_tokens.weight.shape[1])
    emb.weight = grown(owner.embed_tokens.weight, added["embed_tokens"])
    owner.embed_tokens = emb
    if getattr(model, "lm_head", None) is not None:
        if added["lm_head"] is None:
            raise FuseError("added tokens: the adapter has no lm_head rows but this model's head is untied")
        head = nn.Linear(model.lm_head.weight.shape[1], added["vocab_size"], bias=False)
        head.weight = grown(model.lm_head.weight, added["lm_head"])
        model.lm_head = head
    config["vocab_size"] = int(added["vocab_size"])
    if hasattr(getattr(model, "args", None), "vocab_size"):
        model.args.vocab_size = int(added["vocab_size"])
    if added["has_tokenizer"]:
        wrapper = TokenizerWrapper(AutoTokenizer.from_pretrained(str(added["dir"])))
    return wrapper
