"""Model-side helpers for the MLX backend, on mlx-lm's building blocks.

- `load_pretrained()`: mlx-lm's `load`, with the config keys its models read that transformers 5
  no longer writes filled in from the ones it does (`legacy_config_keys`: GPT-2's `n_ctx`,
  `rope_theta`/`rope_scaling` out of `rope_parameters`, Gemma 3's sliding-window pattern).
- `quantize_base()`: QLoRA base (MLX affine quantization, `bits`/`group_size`).
- `resolve_lora_keys()`: config target names / `all-linear` -> mlx-lm per-layer keys.
- `apply_lora()` / `strip_adapters()`: add and remove LoRA/DoRA layers (mlx-lm's classes).
- `enable_grad_checkpoint()`: recompute each transformer block in backward, for this model only
  (mlx-lm's `grad_checkpoint` patches the layer *class*, i.e. every model in the process).
- `save_model()` / `mlx_weight_names()`: a standalone model (fuse, full fine-tune) that transformers
  reads too: mlx-lm's `save_model`, but GPT-2 under transformers' names and Conv1D weight layout;
  and such a model's tensors back under mlx-lm's names.
- `PackedAttention`: how packed rows get a block-diagonal causal mask through mlx-lm's models.
- `add_token_rows()` / `strip_token_rows()`: added chat special tokens: the (frozen, possibly
  quantized) embedding and lm_head are wrapped so that the rows of the new token ids come from a
  small trainable matrix (`...embed_tokens.rows`, `lm_head.rows`).
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import mlx.core as mx
import mlx.nn as nn
from mlx_lm.tuner.dora import DoRALinear
from mlx_lm.tuner.lora import LoRALinear
from mlx_lm.tuner.utils import linear_to_lora_layers
from mlx.utils import tree_flatten, tree_unflatten

# Model families whose attention is RoPE-only (no absolute position embeddings) and that take
# their mask from the cache object (see PackedAttention). Packing is exact for these.
PACKING_MODEL_TYPES = {"llama", "mistral", "qwen2", "qwen3", "gemma", "gemma2", "gemma3_text",
                       "phi3", "granite", "olmo2"}


def legacy_config_keys(config: dict) -> dict:
    """The keys of a transformers-5 `config.json` that mlx-lm (0.32) reads under their 4.x names,
    derived from what transformers 5 writes instead; only keys the config lacks. Without them
    GPT-2 fails to load (`n_ctx` is a required argument) and other families silently get mlx-lm's
    defaults (Qwen2's rope_theta 1e6 for a 1e4 checkpoint, Llama 3 without its rope scaling)."""
    out = {}
    if config.get("model_type") == "gpt2" and "n_ctx" not in config and "n_positions" in config:
        out["n_ctx"] = config["n_positions"]
    rope = config.get("rope_parameters")
    if isinstance(rope, dict):
        full, local = rope, None
        if isinstance(rope.get("full_attention"), dict):   # per layer type (Gemma 3)
            full, local = rope["full_attention"], rope.get("sliding_attention")
        if "rope_theta" not in config and "rope_theta" in full:
            out["rope_theta"] = full["rope_theta"]
        if local and "rope_local_base_freq" not in config and "rope_theta" in local:
            out["rope_local_base_freq"] = local["rope_theta"]
        if "partial_rotary_factor" not in config and "partial_rotary_factor" in full:
            out["partial_rotary_factor"] = full["partial_rotary_factor"]
        scaling = {k: v for k, v in full.items() if k not in ("rope_theta", "partial_rotary_factor")}
        if config.get("rope_scaling") is None and scaling.get("rope_type", "default") != "default":
            out["rope_scaling"] = {**scaling, "type": scaling["rope_type"]}
    types = config.get("layer_types")
    if config.get("model_type") == "gemma3_text" and "sliding_window_pattern" not in config and types \
            and "full_attention" in types:
        n = types.index("full_attention") + 1   # mlx-lm: layer i is global iff i % n == n - 1
        if all((t == "full_attention") == (i % n == n - 1) for i, t in enumerate(types)):
            out["sliding_window_pattern"] = n
    return out


def _model_classes(config: dict):
    """mlx-lm's (Model, ModelArgs) for `config`; GPT-2's Model also reads the weights of a
    `GPT2LMHeadModel.save_pretrained` (`transformer.h.0...`, what transformers writes), not only
    the original checkpoint's bare `h.0...` names."""
    from mlx_lm.utils import _get_classes

    model_class, args_class = _get_classes(config)
    if config.get("model_type") != "gpt2":
        return model_class, args_class

    class Model(model_class):
        def sanitize(self, weights):
            weights = {k.removeprefix("transformer."): v for k, v in weights.items() if k != "lm_head.weight"}
            return super().sanitize(weights)
    return Model, args_class


def load_pretrained(spec):
    """(model, tokenizer wrapper, config) of `spec.model` through mlx-lm (`mlx_lm.load`'s steps),
    the config completed by `legacy_config_keys` (and so is what a fuse writes back)."""
    from mlx_lm.utils import _download, load_config, load_model, load_tokenizer

    path = _download(spec.model, revision=spec.revision)
    model, config = load_model(path, model_config=legacy_config_keys(load_config(path)),
                               get_model_classes=_model_classes, trust_remote_code=spec.trust_remote_code)
    return model, load_tokenizer(path, eos_token_ids=config.get("eos_token_id", None)), config


_CONV1D_WEIGHTS = (".attn.c_attn.weight", ".attn.c_proj.weight", ".mlp.c_fc.weight", ".mlp.c_proj.weight")


def save_model(path, model: nn.Module, model_type: str) -> None:
    """mlx-lm's `save_model` (safetensors that transformers reads too), except for GPT-2, whose
    mlx-lm names (`model.h.0...`) and Linear layout transformers would skip with a warning, leaving
    random weights: written as `transformer.*` with Conv1D weights [in, out] (which mlx-lm reads back
    through its sanitize, and load_pretrained)."""
    from mlx_lm.utils import save_model as mlx_lm_save_model

    if model_type != "gpt2":
        return mlx_lm_save_model(path, model)
    weights = {}
    for k, v in tree_flatten(model.parameters()):
        k = "transformer." + k.removeprefix("model.")
        weights[k] = v.T if k.endswith(_CONV1D_WEIGHTS) else v
    Path(path).mkdir(parents=True, exist_ok=True)
    mx.save_safetensors(str(Path(path) / "model.safetensors"), weights, metadata={"format": "pt"})


def mlx_weight_names(weights: dict, model_type: str) -> dict:
    """The tensors of a saved standalone model under mlx-lm's names: a GPT-2 written by save_model or
    transformers (`transformer.*`, Conv1D [in, out]) back to `model.*` in Linear layout; others as is."""
    if model_type != "gpt2" or not any(k.startswith("transformer.") for k in weights):
        return weights
    return {"model." + k.removeprefix("transformer."): v.T if k.endswith(_CONV1D_WEIGHTS) else v
            for k, v in weights.items() if k != "lm_head.weight"}   # tied to wte


class PackedAttention:
    """Stands in for a KV cache during training so that mlx-lm's models use OUR mask.

    mlx-lm's model classes take no mask or position ids: they build a causal mask with
    `create_attention_mask(h, cache[0])`, which asks the cache for `make_mask(...)`, and apply
    RoPE at `offset=cache.offset`. This object answers with a block-diagonal causal mask built
    from the batch's segment ids (query t sees key s iff s <= t and both are in the same packed
    row; padding forms its own segment so no row of the mask is empty), offset 0, and passes
    keys/values through unchanged.

    Position ids are not restarted per packed row, and need not be: RoPE rotates q and k by their
    absolute positions, so q_t·k_s depends only on t - s. Within a segment (the only pairs the
    mask allows) t - s is the same whether the row starts at 0 or at its offset in the pack, so
    the attention scores, and thus logits and loss, equal the unpacked ones up to float rounding
    (tested: tests/test_backend_contract.py::test_packed_loss_equals_unpacked_and_padding_is_inert).
    That is why packing is allowed only for the RoPE families in PACKING_MODEL_TYPES.
    """

    offset = 0

    def __init__(self, mask: mx.array):
        self.mask = mask  # additive [B, 1, T, T]

    def make_mask(self, n, return_array=False, window_size=None):
        if window_size:
            t = mx.arange(n)
            return mx.where((t[:, None] - t[None, :]) < window_size, self.mask, mx.array(-mx.inf, self.mask.dtype))
        return self.mask

    def update_and_fetch(self, keys, values):
        return keys, values


def block_causal_mask(segment_ids: mx.array, dtype=mx.float32) -> mx.array:
    """Additive mask [B, 1, T, T] (0 where allowed, -inf elsewhere) in the compute dtype: on the
    CPU, SDPA with an additive mask ran ~30% faster than with a boolean one (B=3, T=512)."""
    t = segment_ids.shape[1]
    same = segment_ids[:, :, None] == segment_ids[:, None, :]
    causal = mx.tril(mx.ones((t, t), dtype=mx.bool_))
    return mx.where((same & causal)[:, None], mx.array(0.0, dtype), mx.array(-mx.inf, dtype))


def quantize_base(model: nn.Module, bits: int, group_size: int) -> int:
    """Quantize the frozen base's Linear/Embedding layers in place; returns how many."""
    count = 0

    def pred(path, module):
        nonlocal count
        ok = hasattr(module, "to_quantized") and module.weight.shape[-1] % group_size == 0
        count += int(ok)
        return ok

    nn.quantize(model, group_size=group_size, bits=bits, class_predicate=pred)
    if count == 0:
        raise ValueError(f"group_size={group_size}: no layer's input size is a multiple of it; "
                         f"nothing was quantized (try group_size 32 or 64)")
    return count


def is_quantized(model: nn.Module) -> bool:
    return any(isinstance(m, (nn.QuantizedLinear, nn.QuantizedEmbedding)) for _, m in model.named_modules())


def linear_keys(layer: nn.Module) -> list[str]:
    return sorted(k for k, m in layer.named_modules() if isinstance(m, (nn.Linear, nn.QuantizedLinear)))


def resolve_lora_keys(model: nn.Module, targets) -> list[str]:
    """PEFT-style target names (`q_proj`, `self_attn.q_proj`) or 'all-linear' -> per-layer keys."""
    available = linear_keys(model.layers[0])
    if isinstance(targets, str):
        if targets == "all-linear":
            return available
        targets = [targets]
    keys = [k for k in available if any(k == t or k.endswith("." + t) for t in targets)]
    missing = [t for t in targets if not any(k == t or k.endswith("." + t) for k in available)]
    if missing or not keys:
        names = sorted({k.rpartition(".")[2] for k in available})
        raise ValueError(f"lora_target_modules: {missing or targets} not found in the model's layers; "
                         f"available: {names} or 'all-linear'")
    return keys


def apply_lora(model: nn.Module, *, kind: str, keys: list[str], num_layers: int, r: int,
               scale: float, dropout: float) -> None:
    n = len(model.layers)
    num_layers = n if num_layers is None or num_layers < 0 else min(num_layers, n)
    linear_to_lora_layers(model, num_layers, {"rank": r, "scale": scale, "dropout": dropout, "keys": keys},
                          use_dora=(kind == "dora"))


def strip_adapters(model: nn.Module) -> None:
    """Replace LoRA/DoRA layers by their base layers (before applying another adapter)."""
    base = [(name, m.linear) for name, m in model.named_modules() if isinstance(m, (LoRALinear, DoRALinear))]
    if base:
        model.update_modules(tree_unflatten(base))


def enable_grad_checkpoint(model: nn.Module) -> None:
    """Recompute each transformer block's activations in the backward pass (this model only)."""
    for layer in model.layers:
        cls = type(layer)
        if getattr(cls, "_tunerd_checkpointed", False):
            continue
        fn = cls.__call__

        def call(self, x, *args, _fn=fn, **kwargs):
            # mask / cache objects ride in the closure: only arrays may cross mx.checkpoint
            def inner(params, x):
                self.update(params)
                return _fn(self, x, *args, **kwargs)
            return mx.checkpoint(inner)(self.trainable_parameters(), x)

        layer.__class__ = type(cls.__name__, (cls,), {"__call__": call, "_tunerd_checkpointed": True})


def dense_weight(m: nn.Module) -> mx.array:
    """The float weight of an Embedding/Linear, dequantized when quantized."""
    if isinstance(m, (nn.QuantizedEmbedding, nn.QuantizedLinear)):
        return mx.dequantize(m.weight, m.scales, m.biases, m.group_size, m.bits)
    return m.weight


class _TokenRows(nn.Module):
    """Shared part: token ids `ids` (all >= the base vocabulary, or inside it) get their rows from
    `self.rows`; `_perm` maps each id of the grown vocabulary to a column of [base | rows]."""

    def __init__(self, base: nn.Module, rows: mx.array, ids: list, vocab_size: int, old: int):
        super().__init__()
        self.base = base
        self.rows = rows
        perm = list(range(old)) + [-1] * (vocab_size - old)
        for k, i in enumerate(ids):
            perm[i] = old + k
        if -1 in perm:
            raise ValueError(f"added tokens: ids {[i for i, p in enumerate(perm) if p < 0][:5]} have no row")
        object.__setattr__(self, "_perm", mx.array(perm, dtype=mx.int32))
        object.__setattr__(self, "_old", old)
        object.__setattr__(self, "token_ids", list(ids))


class TokenRowsEmbedding(_TokenRows):
    def __call__(self, x):
        p = self._perm[x]
        new = p >= self._old
        h = self.base(mx.where(new, 0, p))
        return mx.where(new[..., None], self.rows[mx.maximum(p - self._old, 0)].astype(h.dtype), h)

    def as_linear(self, x):
        return mx.take(mx.concatenate([self.base.as_linear(x), x @ self.rows.T.astype(x.dtype)], axis=-1),
                       self._perm, axis=-1)


class TokenRowsHead(_TokenRows):
    def __call__(self, x):
        return mx.take(mx.concatenate([self.base(x), x @ self.rows.T.astype(x.dtype)], axis=-1),
                       self._perm, axis=-1)


def _inner(model: nn.Module):
    return getattr(model, "model", None) or getattr(model, "language_model", None)


def _embed_owner(model: nn.Module):
    inner = _inner(model)
    if inner is None or not hasattr(inner, "embed_tokens"):
        raise ValueError(f"added tokens: cannot find embed_tokens in the "
                         f"{getattr(model, 'model_type', type(model).__module__)} model (mlx)")
    return inner


def input_embedding(model: nn.Module) -> nn.Module:
    """The token embedding: `embed_tokens` (most families) or GPT-2's `wte`."""
    inner = _inner(model)
    for name in ("embed_tokens", "wte"):
        if inner is not None and name in inner:
            return inner[name]
    raise ValueError(f"cannot find the token embedding of the {getattr(model, 'model_type', '?')} model (mlx)")


def vocab_rows(model: nn.Module) -> int:
    """Rows of the (possibly grown) vocabulary the model computes logits for."""
    rows = token_rows(model)
    if rows:
        return int(rows["embed_tokens"]._perm.shape[0])
    return int(dense_weight(input_embedding(model)).shape[0])


def token_rows(model: nn.Module) -> dict:
    """{"embed_tokens": wrapper, "lm_head": wrapper or None} when rows were added, else {}."""
    emb = getattr(_inner(model), "embed_tokens", None)
    if not isinstance(emb, TokenRowsEmbedding):
        return {}
    head = getattr(model, "lm_head", None)
    return {"embed_tokens": emb, "lm_head": head if isinstance(head, TokenRowsHead) else None}


def strip_token_rows(model: nn.Module) -> None:
    rows = token_rows(model)
    if rows:
        _embed_owner(model).embed_tokens = rows["embed_tokens"].base
        if rows["lm_head"] is not None:
            model.lm_head = rows["lm_head"].base


def add_token_rows(model: nn.Module, vocab_size: int, ids: list, rows: Optional[dict] = None) -> int:
    """Wrap embed_tokens (and an untied lm_head) so the token ids `ids` of a vocabulary grown to
    `vocab_size` get trainable rows: `rows[...]` when given, else the mean of the base's rows (the
    torch backend's init too). Returns the new vocabulary size."""
    strip_token_rows(model)
    owner = _embed_owner(model)
    emb = owner.embed_tokens
    old = dense_weight(emb).shape[0]
    new = max(old, int(vocab_size))
    head = getattr(model, "lm_head", None)

    def init(m, name):
        if rows is not None:
            if rows.get(name) is None:
                raise ValueError(f"added tokens: the adapter has no {name} rows for this model")
            return mx.array(rows[name]).astype(mx.float32)
        mean = dense_weight(m).astype(mx.float32)[:old].mean(axis=0)
        return mx.broadcast_to(mean, (len(ids), mean.shape[0])) + 0

    dtype = dense_weight(emb).dtype if not isinstance(emb, nn.QuantizedEmbedding) else emb.scales.dtype
    owner.embed_tokens = TokenRowsEmbedding(emb, init(emb, "embed_tokens").astype(dtype), ids, new, old)
    if head is not None:
        hd = dense_weight(head).dtype if not isinstance(head, nn.QuantizedLinear) else head.scales.dtype
        model.lm_head = TokenRowsHead(head, init(head, "lm_head").astype(hd), ids, new, old)
    return new


def densify_token_rows(model: nn.Module) -> Optional[int]:
    """Replace the added-token wrappers by plain Embedding / Linear layers of the grown vocabulary
    (what a fused model is saved with); the new vocabulary size, or None when no rows were added.
    The base must be float (fuse de-quantizes first)."""
    rows = token_rows(model)
    if not rows:
        return None

    def grown(w: _TokenRows) -> mx.array:
        full = mx.concatenate([dense_weight(w.base), w.rows.astype(dense_weight(w.base).dtype)], axis=0)
        return mx.take(full, w._perm, axis=0)

    weight = grown(rows["embed_tokens"])
    emb = nn.Embedding(*weight.shape)
    emb.weight = weight
    _embed_owner(model).embed_tokens = emb
    if rows["lm_head"] is not None:
        weight = grown(rows["lm_head"])
        head = nn.Linear(weight.shape[1], weight.shape[0], bias=False)
        head.weight = weight
        model.lm_head = head
    if hasattr(getattr(model, "args", None), "vocab_size"):
        model.args.vocab_size = int(emb.weight.shape[0])
    return int(emb.weight.shape[0])
