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
    if out.exists():
        shutil.rmtree(out)
    tmp.rename(out)
    return out
