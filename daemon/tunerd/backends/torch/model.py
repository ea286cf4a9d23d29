"""Loading a Hugging Face causal LM (optionally bitsandbytes-quantized) and adding adapters.

- QLoRA: `quantization` 4bit/nf4/int4 (or fp4) -> bitsandbytes 4-bit with the config's quant type,
  double quant and compute dtype = the resolved `dtype` (norms, embeddings and activations stay in it); 8bit/int8 -> LLM.int8(). The whole model is placed on
  the chosen device with `device_map={"": device}` (transformers' default map sends bnb models to
  the CPU, DESIGN.md §3).
- Adapters: PEFT LoRA / DoRA (`use_dora`) with PEFT's own names; `num_layers: N` adapts the last N
  layers (`layers_to_transform`); `lora_bias` maps to PEFT's `bias` (none | all | lora_only).
"""
from __future__ import annotations

import logging

import torch

from ... import quantization

log = logging.getLogger("tunerd.torch")

def quant_mode(spec) -> str | None:
    """bitsandbytes' "4bit" | "8bit" | None for the spec's `quantization` (tunerd.quantization)."""
    return quantization.torch_mode(spec.quantization)


def bnb_config(spec, dtype: torch.dtype, device: torch.device):
    from transformers import BitsAndBytesConfig

    mode = quant_mode(spec)
    if device.type == "mps":
        log.warning("bitsandbytes on MPS is new and partial; 4-bit on a Mac is best done on the mlx backend")
    if mode == "4bit":
        qt = quantization.bnb_4bit_type(spec.quantization, spec.bnb_4bit_quant_type)
        if qt not in ("nf4", "fp4"):
            raise ValueError(f"bnb_4bit_quant_type: {qt!r} is not one of nf4, fp4")
        return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type=qt,
                                  bnb_4bit_use_double_quant=spec.bnb_4bit_use_double_quant,
                                  bnb_4bit_compute_dtype=dtype)
    return BitsAndBytesConfig(load_in_8bit=True)


def load_model(spec, device: torch.device, dtype: torch.dtype):
    from transformers import AutoModelForCausalLM

    kw = dict(revision=spec.revision, trust_remote_code=spec.trust_remote_code, dtype=dtype)
    if quant_mode(spec):
        try:
            import bitsandbytes  # noqa: F401
        except ImportError as e:
            raise ValueError(f"quantization: {spec.quantization} on torch needs bitsandbytes "
                             f"(pip install bitsandbytes): {e}") from None
        kw.update(quantization_config=bnb_config(spec, dtype, device), device_map={"": str(device)})
    try:
        model = AutoModelForCausalLM.from_pretrained(spec.model, attn_implementation="sdpa", **kw)
    except (ValueError, ImportError) as e:  # an architecture without SDPA support (Gemma 2: soft-capping)
        if not no_sdpa(e):
            raise
        log.info("%s: no SDPA attention for this architecture; using eager", spec.model)
        model = AutoModelForCausalLM.from_pretrained(spec.model, attn_implementation="eager", **kw)
    if not quant_mode(spec):
        model.to(device)
    elif device.type == "cpu":
        keep_4bit_trainable_on_cpu(model)
    model.config.use_cache = False
    return model


def no_sdpa(e: Exception) -> bool:
    """transformers' refusal of `attn_implementation="sdpa"` for an architecture that lacks it:
    "... does not support an attention implementation through
    torch.nn.functional.scaled_dot_product_attention yet" (5.x), or naming `sdpa` (older)."""
    msg = str(e).lower()
    return "sdpa" in msg or "scaled_dot_product_attention" in msg


def keep_4bit_trainable_on_cpu(model) -> None:
    """bitsandbytes 0.50 on an AVX512-BF16 CPU repacks a Linear4bit weight for a fast inference
    kernel the first time it runs in eval mode without grad, and keeps it packed; later training
    forwards then go through `gemv_4bit`, which has no autograd: the gradient graph is cut and the
    LoRA weights below get no gradient (measured: every LoRA grad None after one eval pass).
    Turning that repacking off keeps train/eval/train interleaving correct."""
    for module in model.modules():
        if hasattr(module, "support_avx512bf16_for_cpu"):
            module.support_avx512bf16_for_cpu = False


def n_layers(model) -> int:
    cfg = model.config
    n = getattr(cfg, "num_hidden_layers", None) or getattr(cfg, "n_layer", None)
    if n is None:
        raise ValueError(f"num_layers: cannot tell how many layers {type(model).__name__} has")
    return int(n)


def lora_config(cfg, model, token_ids=None):
    from peft import LoraConfig

    targets = cfg.lora_target_modules
    if isinstance(targets, str) and targets != "all-linear":
        targets = [t.strip() for t in targets.split(",") if t.strip()]
    if cfg.lora_bias not in ("none", "all", "lora_only"):
        raise ValueError(f"lora_bias: {cfg.lora_bias!r} is not one of none, all, lora_only")
    total = n_layers(model)
    layers = None
    if 0 < cfg.num_layers < total:
        layers = list(range(total - cfg.num_layers, total))
    elif cfg.num_layers == 0 or cfg.num_layers < -1:
        raise ValueError(f"num_layers: {cfg.num_layers} must be -1 (all) or 1..{total}")
    extra = {}
    if token_ids:  # rows of added chat tokens: PEFT trainable tokens on the input (and untied output) embedding
        extra["trainable_token_indices"] = {module_leaf_name(model, model.get_input_embeddings()): list(token_ids)}
        if not tied_head(model):
            extra["trainable_token_indices"][module_leaf_name(model, model.get_output_embeddings())] = list(token_ids)
    return LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
                      target_modules=targets, bias=cfg.lora_bias, use_rslora=cfg.use_rslora,
                      use_dora=cfg.peft_adapter.lower() == "dora", layers_to_transform=layers,
                      fan_in_fan_out=has_conv1d(model), task_type="CAUSAL_LM", **extra)


def has_conv1d(model) -> bool:
    """GPT-2-style layers (transformers' Conv1D, weight [in, out]): PEFT's `fan_in_fan_out`."""
    from transformers.pytorch_utils import Conv1D

    return any(isinstance(m, Conv1D) for m in model.modules())


def module_leaf_name(model, module) -> str:
    return next(n for n, m in model.named_modules() if m is module).rpartition(".")[2]


def tied_head(model) -> bool:
    out = model.get_output_embeddings()
    return out is None or out.weight is model.get_input_embeddings().weight


@torch.no_grad()
def resize_vocab(model, vocab_size: int, token_ids, rows: dict | None = None) -> int:
    """Grow the embeddings (and an untied lm_head) to `vocab_size` rows (never shrink) and set the
    rows `token_ids`: to `rows["embed_tokens"]` / `rows["lm_head"]` when given, else to the mean of
    the original rows (the same deterministic init as the mlx backend). Returns the new size."""
    old = model.get_input_embeddings().weight.shape[0]
    new = max(old, int(vocab_size))
    if new > old:
        model.resize_token_embeddings(new, mean_resizing=False)
    idx = torch.tensor(list(token_ids), dtype=torch.long)
    layers = [("embed_tokens", model.get_input_embeddings())]
    if not tied_head(model):
        layers.append(("lm_head", model.get_output_embeddings()))
    for name, layer in layers:
        w = layer.weight
        if rows is not None and rows.get(name) is not None:
            src = torch.as_tensor(rows[name])
        elif rows is not None and name == "lm_head":
            raise ValueError("added tokens: the adapter has no lm_head rows but this model's head is untied")
        else:
            src = w[:old].float().mean(0, keepdim=True).expand(len(idx), -1)
        w.index_copy_(0, idx.to(w.device), src.to(w.device, w.dtype))
    model.config.vocab_size = new
    return new


def is_quantized(model) -> bool:
    """Loaded with bitsandbytes (quantization in the ModelSpec, or a quantized checkpoint)."""
    return bool(getattr(model, "is_quantized", False) or getattr(model, "hf_quantizer", None))


def add_adapter(model, cfg, token_ids=None):
    """Wrap `model` for training: PEFT LoRA/DoRA, or every (unquantized) weight for `full`."""
    kind = cfg.peft_adapter.lower()
    if kind not in ("lora", "dora", "full"):
        raise ValueError(f"peft_adapter: {cfg.peft_adapter!r} is not one of lora, dora, full")
    quantized = is_quantized(model)
    torch.manual_seed(cfg.seed)
    gc = bool(cfg.gradient_checkpointing)
    if kind == "full":
        if quantized:
            raise ValueError("peft_adapter full needs an unquantized base; set quantization: none "
                             "or use lora/dora for QLoRA")
        for p in model.parameters():
            p.requires_grad_(True)
    else:
        from peft import get_peft_model

        # QLoRA as TRL does it: no `prepare_model_for_kbit_training`, whose float32 norms and
        # embeddings made every activation float32 (2.8x TRL's peak on a 1B model, DESIGN.md §2);
        # norms and embeddings stay in the compute dtype, and under bfloat16 the LoRA weights are
        # cast to it too (the QLoRA paper's recipe; float16 keeps float32 adapters for GradScaler).
        model = get_peft_model(model, lora_config(cfg, model, token_ids))
        compute = model.get_input_embeddings().weight.dtype
        if quantized and compute == torch.bfloat16:
            for p in model.parameters():
                if p.requires_grad:
                    p.data = p.data.to(compute)
    if gc:
        # `activation_checkpointing_enable` since transformers 5.2x; the old name goes in v6
        if hasattr(model, "activation_checkpointing_enable"):
            model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        else:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        if hasattr(model, "enable_input_require_grads"):
            model.enable_input_require_grads()
    return model


def count_params(model) -> tuple[int, int]:
    """(trainable, total); 4-bit weights count as their unpacked size (PEFT's convention)."""
    if hasattr(model, "get_nb_trainable_parameters"):
        return tuple(int(x) for x in model.get_nb_trainable_parameters())
    trainable = total = 0
    for p in model.parameters():
        n = p.numel() * (2 if p.__class__.__name__ == "Params4bit" else 1)
        total += n
        trainable += n if p.requires_grad else 0
    return trainable, total
