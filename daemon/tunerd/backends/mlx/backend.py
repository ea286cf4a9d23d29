"""The MLX backend: mlx-lm models, LoRA/DoRA layers and sampling behind `Backend`.

Training math (what the loop relies on):
- `forward_backward` returns the *summed* cross-entropy over `loss_mask` and adds the gradient of
  that sum to an accumulator; `optimizer_step` multiplies the accumulated gradient by
  `grad_scale` (1 / supervised tokens of the whole accumulation group), clips the global norm
  (torch's formula: max_norm / (norm + 1e-6)), and steps. Both are compiled once per shape.
- Packed rows: block-diagonal causal mask through `PackedAttention` (see model.py for why
  position ids need no reset with RoPE).
- LoRA scale = lora_alpha / r (alpha / sqrt(r) with use_rslora), PEFT's scaling; Adam/AdamW use
  `bias_correction=True`, as torch does (DESIGN.md §2).
- Dropout randomness is seeded per micro-batch from (seed, micro-batch index), so a resumed run
  draws the same masks as an uninterrupted one.
"""
from __future__ import annotations

import json
import logging
import math
from functools import partial
from pathlib import Path
from typing import Callable, Iterator, Optional

import mlx.core as mx
import mlx.nn as nn
import mlx.optimizers as optim
import numpy as np
from mlx.utils import tree_flatten, tree_map, tree_map_with_path

from ...config.schema import TrainConfig
from ...data.batch import Batch
from ...host import blas_hint
from .. import adapter_layout as layout
from .. import base
from ..base import (Backend, FuseError, GenerationChunk, MemoryStats, ModelInfo, ModelSpec, ParamStats, Sampling,
                    adapter_spec, ce_chunk_rows)
from ..dtypes import checkpoint_dtype, resolve_dtype
from .model import (PACKING_MODEL_TYPES, PackedAttention, add_token_rows, apply_lora, block_causal_mask,
                    densify_token_rows, enable_grad_checkpoint, is_quantized, load_pretrained, mlx_weight_names,
                    quantize_base, resolve_lora_keys, save_model, strip_adapters, strip_token_rows, token_rows)
from .peak import peak_flops

log = logging.getLogger("tunerd.mlx")

DTYPES = {"float32": mx.float32, "float16": mx.float16, "bfloat16": mx.bfloat16}
QUANT_BITS = {"none": 0, "": 0, "4bit": 4, "nf4": 4, "int4": 4, "8bit": 8, "int8": 8}
OPTIMIZERS = ("adamw", "adam", "sgd", "adafactor", "lion")


def quant_bits(spec: ModelSpec) -> int:
    """0 (no quantization), 8 for 8bit/int8, else `spec.bits` (default 4) for 4bit/nf4/int4: the
    mlx-only `bits` key picks another MLX affine width (2, 3, 5, 6) under a 4-bit request."""
    q = (spec.quantization or "none").lower()
    if q not in QUANT_BITS:
        raise ValueError(f"quantization: {spec.quantization!r} is not one of none, 4bit, nf4, int4, 8bit")
    bits = QUANT_BITS[q]
    return spec.bits if bits == 4 and spec.bits in (2, 3, 4, 5, 6, 8) else bits


def make_optimizer(cfg: TrainConfig, warnings: list) -> optim.Optimizer:
    name = cfg.optimizer.lower()
    lr, betas, eps, wd = cfg.learning_rate, [cfg.adam_beta1, cfg.adam_beta2], cfg.adam_epsilon, cfg.weight_decay
    if name.startswith("adamw") or name.startswith("paged_adamw"):
        return optim.AdamW(lr, betas=betas, eps=eps, weight_decay=wd, bias_correction=True)
    if name == "adam":
        if wd:
            warnings.append(f"optimizer adam on mlx has no weight decay; weight_decay={wd} ignored (use adamw)")
        return optim.Adam(lr, betas=betas, eps=eps, bias_correction=True)
    if name == "sgd":
        return optim.SGD(lr, momentum=float(cfg.lr_scheduler_kwargs.get("momentum", 0.0)), weight_decay=wd)
    if name == "adafactor":  # external learning rate, like HF's Adafactor(relative_step=False)
        return optim.Adafactor(lr, relative_step=False, scale_parameter=False, warmup_init=False, weight_decay=wd)
    if name == "lion":
        return optim.Lion(lr, weight_decay=wd)
    raise ValueError(f"optimizer: {cfg.optimizer!r} is not available on mlx; choose one of {', '.join(OPTIMIZERS)}")


# families whose logits are exactly lm_head(final hidden) (or the tied embedding's as_linear): no
# logit scaling or soft-capping, so the head can run on the supervised positions alone
PLAIN_HEAD = {"llama", "mistral", "qwen2", "qwen3", "phi3", "olmo2"}


def _loss(model, inputs, idx, targets, weights, segment_ids=None, mask_dtype=mx.float32,
          plain=True, chunk=0):
    """Summed cross-entropy over the supervised positions `idx` (flat indices into [B*T]).

    The LM head runs on the gathered positions only (`plain` families), so no [B, T, vocab] logits
    exist, and float32 logits exist only for the supervised positions -- in chunks of `chunk` rows
    recomputed in the backward pass (mx.checkpoint) when a frozen head's would be large
    (base.ce_chunk_rows). Other families compute full logits and gather before the float32 cast."""
    cache = None
    if segment_ids is not None:
        cache = [PackedAttention(block_causal_mask(segment_ids, mask_dtype))] * len(model.layers)
    if not plain:
        logits = model(inputs, cache=cache)
        logits = logits.reshape(-1, logits.shape[-1])[idx].astype(mx.float32)
        return (nn.losses.cross_entropy(logits, targets, reduction="none") * weights).sum(), weights.sum()
    h = model.model(inputs, cache=cache)
    h = h.reshape(-1, h.shape[-1])[idx]
    head = model.lm_head if "lm_head" in model else model.model.embed_tokens.as_linear

    def ce(h, t, w):
        return (nn.losses.cross_entropy(head(h).astype(mx.float32), t, reduction="none") * w).sum()
    if chunk and h.shape[0] > chunk:   # only h crosses mx.checkpoint: no gradient for ids and weights
        loss = sum(mx.checkpoint(lambda x, t=targets[i:i + chunk], w=weights[i:i + chunk]: ce(x, t, w))(h[i:i + chunk])
                   for i in range(0, h.shape[0], chunk))
    else:
        loss = ce(h, targets, weights)
    return loss, weights.sum()


def device_kind() -> str:
    """cpu | metal | gpu (MLX's CUDA build)."""
    if mx.default_device().type == mx.cpu:
        return "cpu"
    return "metal" if mx.metal.is_available() else "gpu"


def set_memory_limits() -> None:
    """On Metal, wire up to the recommended working set as mlx-lm does (fewer page-outs of model
    weights under memory pressure). The buffer cache is bounded by clearing it after every step,
    eval batch and reply (`clear_cache`), as mlx-lm's trainer does: with a new sequence length almost
    every step, freed buffers of old shapes otherwise pile up until the device is full (DESIGN.md §2)."""
    if device_kind() != "metal":
        return
    info = mx.device_info() if hasattr(mx, "device_info") else mx.metal.device_info()
    limit = info.get("max_recommended_working_set_size")
    if limit:
        mx.set_wired_limit(int(limit))


class MLXBackend(Backend):
    name = "mlx"
    supports_added_tokens = True

    def __init__(self, compile: bool | None = None):
        # mx.compile retraces for every new sequence length; on the CPU that costs more than the
        # fusion saves (measured: tiny model, 0.5 s per new shape vs 5 ms steps). Default: compile
        # on Metal/GPU, not on the CPU. Compiled steps pad rows to a multiple of 32 (fewer shapes).
        self.compile = (mx.default_device().type != mx.cpu) if compile is None else compile
        self.model = None
        self.cfg: TrainConfig | None = None
        self.optimizer = None
        self.model_type = ""
        self._warnings: list[str] = []
        self._wrapper = None
        self._acc = None
        self._fns: dict = {}
        self._micro = 0
        self._base_params = 0
        self._kind = "lora"
        self._loaded_spec = None
        self._added: dict | None = None   # chat special tokens added (resize_token_embeddings / load_adapter)
        self._attached: dict = {}   # attach_adapter: name -> (LoRA structure, {param path: mx.array})
        self._active: str | None = None
        self._structure = None      # the LoRA layers now wrapping the base (kind, keys, layers, r, scale)
        self._stash: dict = {}      # a training run's own LoRA tensors while a chat uses another adapter
        self._prompt_cache = base.PromptCache(lambda c: c[0].offset if c else 0, _trim)   # per adapter, across turns

    # ---- load ---------------------------------------------------------------------------------
    @property
    def tokenizer(self):
        return self._wrapper._tokenizer

    @property
    def warnings(self) -> list[str]:
        return self._warnings

    def load(self, spec: ModelSpec) -> ModelInfo:
        from mlx_lm.utils import get_total_parameters

        if (w := blas_hint()) and w not in self._warnings:
            log.warning(w)
            self._warnings.append(w)
        bits = quant_bits(spec)
        self.cfg = None
        set_memory_limits()
        model, wrapper, config = load_pretrained(spec)
        device, kind = str(mx.default_device()), device_kind()
        dtype_name, dtype_reason = resolve_dtype(spec.dtype, kind, checkpoint_dtype(config),
                                                 lambda dt: peak_flops(device, dt))
        model.set_dtype(DTYPES[dtype_name])
        self.dtype = DTYPES[dtype_name]
        if bits:
            if is_quantized(model):
                self._warnings.append(f"{spec.model} is already quantized; quantization={spec.quantization} "
                                      f"keeps its own bits/group size")
            else:
                quantize_base(model, bits, spec.group_size)
        model.freeze()
        mx.eval(model.parameters())
        self.model, self._wrapper, self.model_type = model, wrapper, config.get("model_type", "")
        self._config, self._model_path = config, spec.model
        self.optimizer, self._kind, self._added = None, "lora", None
        self._attached, self._active, self._structure = {}, None, None
        self._prompt_cache.clear()
        self._base_params = get_total_parameters(model)
        self._fns, self._acc = {}, None
        q = ("none" if not is_quantized(model) else
             f"{bits}bit/g{spec.group_size}" if bits and "quantization" not in config else "pre-quantized")
        return ModelInfo(model=spec.model, backend="mlx", device=device, dtype=dtype_name,
                         dtype_reason=dtype_reason, quantization=q, config=dict(config),
                         device_kind=kind,
                         packing_supported=self.model_type in PACKING_MODEL_TYPES, total_params=self._base_params,
                         vocab_size=int(config.get("vocab_size", 0)),
                         eos_token_ids=sorted(int(i) for i in wrapper.eos_token_ids))

    def resize_token_embeddings(self, vocab_size: int, token_ids=None, end_of_turn=None,
                                chat_template=None) -> int:
        """Grow the vocabulary for chat special tokens the data pipeline added (before add_adapter):
        the rows of the new ids come from small trainable matrices next to the frozen (possibly
        quantized) embedding and lm_head (model.add_token_rows), initialised at the mean row and
        saved with the adapter (adapter_layout: added tokens)."""
        self._require_model()
        old = self._vocab_rows()
        ids = sorted(int(i) for i in token_ids) if token_ids is not None else list(range(old, vocab_size))
        new = add_token_rows(self.model, vocab_size, ids)
        tok = self.tokenizer
        if chat_template:  # what the adapter was trained with: saved with its tokenizer, used by chat
            tok.chat_template = chat_template
        self._set_tokenizer(tok, end_of_turn)
        self._added = {"token_ids": ids, "tokens": tok.convert_ids_to_tokens(ids), "vocab_size": new,
                       "end_of_turn": end_of_turn}
        self._fns, self._acc = {}, None
        mx.eval(self.model.parameters())
        return new

    def _vocab_rows(self) -> int:
        from .model import vocab_rows
        return vocab_rows(self.model)

    def _set_tokenizer(self, hf_tokenizer, end_of_turn=None) -> None:
        """Re-wrap the (grown) tokenizer: the streaming detokenizer maps the new ids, and the
        end-of-turn token stops generation."""
        from mlx_lm.tokenizer_utils import TokenizerWrapper

        old = self._wrapper
        eos = set(old.eos_token_ids)
        if end_of_turn:
            eos.add(int(hf_tokenizer.convert_tokens_to_ids(end_of_turn)))
        self._wrapper = TokenizerWrapper(hf_tokenizer, type(old._detokenizer), eos_token_ids=eos)

    def add_adapter(self, cfg: TrainConfig) -> ParamStats:
        self._require_model()
        model = self.model
        kind = cfg.peft_adapter.lower()
        if kind not in ("lora", "dora", "full"):
            raise ValueError(f"peft_adapter: {cfg.peft_adapter!r} is not one of lora, dora, full")
        if kind == "full" and self._added:
            raise ValueError("peft_adapter full with added chat tokens is not supported on mlx yet; "
                             "use lora/dora, the torch backend, or a model whose tokenizer has the tokens")
        if cfg.lora_bias != "none":
            raise ValueError(f"lora_bias: {cfg.lora_bias!r} is not supported by the mlx backend; use none")
        mx.random.seed(cfg.seed)
        if kind == "full":
            if is_quantized(model):
                raise ValueError("peft_adapter full needs an unquantized base; set quantization: none "
                                 "or use lora/dora for QLoRA")
            model.unfreeze()
        else:
            keys = resolve_lora_keys(model, cfg.lora_target_modules)
            apply_lora(model, kind=kind, keys=keys, num_layers=cfg.num_layers, r=cfg.lora_r,
                       scale=self._scale(cfg), dropout=cfg.lora_dropout)
            self._structure = self._shape(kind, keys, cfg.num_layers, cfg.lora_r, self._scale(cfg))
            self._attached, self._active, self._stash = {}, base.TRAINING, {}
        if cfg.gradient_checkpointing:
            enable_grad_checkpoint(model)
        self.cfg, self._kind, self._loaded_spec = cfg, kind, None
        self.optimizer = make_optimizer(cfg, self._warnings)
        self.optimizer.init(model.trainable_parameters())
        self._fns, self._acc, self._micro = {}, None, 0
        model.train()
        mx.eval(model.parameters(), self.optimizer.state)
        trainable = sum(v.size for _, v in tree_flatten(model.trainable_parameters()))
        total = self._base_params if kind == "full" else self._base_params + trainable
        return ParamStats(total=int(total), trainable=int(trainable))

    def can_share_base(self) -> bool:
        """A LoRA/DoRA run on the checkpoint's own vocabulary: chat adapters of the run's LoRA shape
        swap their tensors into its LoRA layers between steps (the run's own are kept aside)."""
        return self.optimizer is not None and self._kind != "full" and not self._added

    def _train_mode(self) -> None:
        """The run's own LoRA tensors back in place after a chat used another adapter."""
        if self.optimizer is None or self._kind == "full" or self._active == base.TRAINING:
            return
        self.model.load_weights(list(self._stash.items()), strict=False)
        self._stash, self._active = {}, base.TRAINING

    @staticmethod
    def _scale(cfg: TrainConfig) -> float:
        return cfg.lora_alpha / (math.sqrt(cfg.lora_r) if cfg.use_rslora else cfg.lora_r)

    def _require_model(self):
        if self.model is None:
            raise RuntimeError("mlx backend: load(spec) first")

    # ---- compiled functions -------------------------------------------------------------------
    def _fn(self, name: str):
        if name in self._fns:
            return self._fns[name]
        model, opt = self.model, self.optimizer
        dtype, plain = self.dtype, self.model_type in PLAIN_HEAD
        # chunk the float32 logits only under a frozen head (mx.checkpoint passes no gradient to it)
        chunk = ce_chunk_rows(self._vocab_rows()) if self._kind != "full" and not self._added else 0
        wrap = (lambda f, i, o: partial(mx.compile, inputs=i, outputs=o)(f)) if self.compile else (lambda f, i, o: f)
        if name in ("fb", "fb_packed"):
            vg = nn.value_and_grad(model, _loss)

            def fb(inputs, idx, targets, weights, segment_ids, acc):
                (loss, ntok), grads = vg(model, inputs, idx, targets, weights,
                                         segment_ids if name == "fb_packed" else None, dtype, plain, chunk)
                return loss, ntok, tree_map(lambda a, g: a + g, acc, grads)
            # value_and_grad writes traced params into the model: model.state must be an output too
            fn = wrap(fb, [model.state, mx.random.state], [model.state, mx.random.state])
        elif name in ("eval", "eval_packed"):
            def ev(inputs, idx, targets, weights, segment_ids):
                return _loss(model, inputs, idx, targets, weights, segment_ids if name == "eval_packed" else None,
                             dtype, plain, chunk)
            fn = wrap(ev, [model.state], [])
        elif name == "update":
            def update(grads, grad_scale, max_norm):
                grads = tree_map(lambda g: g * grad_scale, grads)
                norm = mx.sqrt(sum(mx.sum(mx.square(g.astype(mx.float32))) for _, g in tree_flatten(grads)))
                factor = mx.where(max_norm > 0, mx.minimum(max_norm / (norm + 1e-6), 1.0), 1.0)
                opt.update(model, tree_map(lambda g: (g * factor).astype(g.dtype), grads))
                return norm
            fn = wrap(update, [model.state, opt.state], [model.state, opt.state])
        else:  # pragma: no cover
            raise KeyError(name)
        self._fns[name] = fn
        return fn

    def _arrays(self, batch: Batch):
        packed = batch.is_packed
        if packed and self.model_type not in PACKING_MODEL_TYPES:
            raise ValueError(f"packing: model type {self.model_type!r} is not supported for packing on mlx "
                             f"(RoPE families only: {', '.join(sorted(PACKING_MODEL_TYPES))}); set packing: false")
        inputs, seg = batch.inputs, batch.segment_ids
        pad = (-inputs.shape[1]) % 32 if self.compile else 0
        if pad:  # padding: its own segment 0, after every real token (causal), never supervised: no effect
            inputs, seg = (np.pad(a, ((0, 0), (0, pad))) for a in (inputs, seg))
        width = inputs.shape[1]
        rows, cols = np.nonzero(batch.loss_mask)        # the supervised positions, gathered before the head
        idx = (rows * width + cols).astype(np.int32)
        targets = batch.targets[rows, cols].astype(np.int32)
        weights = batch.loss_mask[rows, cols].astype(np.float32)
        extra = (-len(idx)) % 64 if self.compile else 0   # fewer distinct shapes to compile
        if extra or not len(idx):
            extra = extra or 1
            idx, targets, weights = (np.pad(a, (0, extra)) for a in (idx, targets, weights))
        return packed, tuple(mx.array(a) for a in (inputs, idx, targets, weights, seg))

    # ---- training -----------------------------------------------------------------------------
    def forward_backward(self, batch: Batch) -> tuple[float, int]:
        if self.optimizer is None:
            raise RuntimeError("mlx backend: add_adapter(cfg) before training")
        self._train_mode()
        self.model.train()
        if self.cfg.lora_dropout > 0:
            mx.random.seed((self.cfg.seed * 1_000_003 + self._micro) % (2 ** 63))
        self._micro += 1
        packed, arrays = self._arrays(batch)
        if self._acc is None:
            self._acc = tree_map(mx.zeros_like, self.model.trainable_parameters())
        loss, ntok, self._acc = self._fn("fb_packed" if packed else "fb")(*arrays, self._acc)
        mx.eval(loss, ntok, self._acc)
        return float(loss), int(ntok)

    def optimizer_step(self, lr: float, grad_scale: float, max_grad_norm: float) -> float:
        if self._acc is None:
            raise RuntimeError("optimizer_step without forward_backward")
        self.optimizer.learning_rate = lr
        norm = self._fn("update")(self._acc, mx.array(grad_scale, mx.float32),
                                  mx.array(max_grad_norm or 0.0, mx.float32))
        mx.eval(norm, self.model.state, self.optimizer.state)
        self._acc = None
        mx.clear_cache()
        return float(norm)

    def eval_loss(self, batch: Batch) -> tuple[float, int]:
        self._require_model()
        self._train_mode()
        self.model.eval()
        packed, arrays = self._arrays(batch)
        loss, ntok = self._fn("eval_packed" if packed else "eval")(*arrays)
        mx.eval(loss, ntok)
        mx.clear_cache()
        return float(loss), int(ntok)

    # ---- checkpoints and adapters -------------------------------------------------------------
    def save_checkpoint(self, path: Path) -> None:
        path = Path(path)
        self._train_mode()
        self.save_adapter(path)
        mx.save_safetensors(str(path / "optimizer.safetensors"), dict(tree_flatten(self.optimizer.state)))
        (path / "backend_state.json").write_text(json.dumps({"backend": "mlx", "micro_batches": self._micro}))

    def load_checkpoint(self, path: Path) -> None:
        path = Path(path)
        self._train_mode()
        self._load_weights(self._read_weights(path), trainable_only=True)
        if self._added:
            added = layout.read_added_tokens(path)
            for name, w in token_rows(self.model).items():
                if w is not None:
                    w.rows = mx.array(added[name]).astype(w.rows.dtype)
        saved = mx.load(str(path / "optimizer.safetensors"))
        missing = [k for k, _ in tree_flatten(self.optimizer.state) if k not in saved]
        if missing:
            raise ValueError(f"{path}: optimizer state does not match this run's optimizer/adapter "
                             f"(missing {missing[:3]}...)")
        self.optimizer.state = tree_map_with_path(lambda k, v: saved[k], self.optimizer.state)
        state = json.loads((path / "backend_state.json").read_text())
        self._micro = int(state.get("micro_batches", 0))
        self._fns, self._acc = {}, None  # compiled functions captured the old optimizer state
        mx.eval(self.model.parameters(), self.optimizer.state)

    def _read_weights(self, path: Path) -> dict:
        """Adapter tensors (mlx layout) of a checkpoint, or every tensor of a full-model dir."""
        if (path / layout.MLX_SUBDIR / layout.MLX_WEIGHTS).exists():
            return mx.load(str(path / layout.MLX_SUBDIR / layout.MLX_WEIGHTS))
        weights = {}
        for f in sorted(path.glob("model*.safetensors")):
            weights.update(mx.load(str(f)))
        if not weights:
            raise FileNotFoundError(f"{path}: no adapter or model weights")
        return mlx_weight_names(weights, self.model_type)

    def _load_weights(self, weights: dict, trainable_only: bool) -> None:
        params = dict(tree_flatten(self.model.trainable_parameters() if trainable_only else self.model.parameters()))
        bad = [k for k, v in weights.items() if k not in params or tuple(params[k].shape) != tuple(v.shape)]
        if bad:
            raise ValueError(f"adapter tensors do not fit this model: {bad[:5]}")
        self.model.load_weights([(k, v.astype(params[k].dtype)) for k, v in weights.items()], strict=False)

    def _spec(self) -> layout.AdapterSpec:
        if self._loaded_spec is not None:  # an adapter applied with load_adapter
            return self._loaded_spec
        return adapter_spec(self.cfg, self._kind)

    def save_adapter(self, path: Path) -> None:
        """`path/` PEFT layout + `path/mlx/` mlx-lm layout (see adapter_layout); full fine-tuning
        writes a standalone model (model.safetensors, config.json, tokenizer) that both
        mlx_lm.load and transformers load."""
        path = Path(path)
        self._require_model()
        self._train_mode()
        trained = dict(tree_flatten(self.model.trainable_parameters()))
        if not trained:
            raise RuntimeError("mlx backend: no adapter to save (add_adapter or load_adapter first)")
        if self._kind == "full":  # the "adapter" is the whole model: a standalone HF/mlx-lm model dir
            from mlx_lm.utils import save_config

            save_model(path, self.model, self.model_type)
            save_config(dict(self._config), path / "config.json")
            self.tokenizer.save_pretrained(str(path))
            return
        weights = {k: np.array(v.astype(mx.float32)) for k, v in trained.items()}
        rows = {k: weights.pop(k) for k in [k for k in weights if k.endswith(".rows")]}
        layout.write_adapter(path, weights, self._spec(), n_model_layers=len(self.model.layers),
                             model_type=self.model_type)
        if self._added:
            head = [v for k, v in rows.items() if k.startswith("lm_head.")]
            embed = [v for k, v in rows.items() if k.endswith("embed_tokens.rows")]
            layout.write_added_tokens(path, embed[0], head[0] if head else None, self._added,
                                      tokenizer=self.tokenizer)

    def load_adapter(self, path: Path) -> None:
        self._require_model()
        path = Path(path)
        if (path / "config.json").exists() and list(path.glob("model*.safetensors")):  # full fine-tune
            strip_adapters(self.model)
            self._load_weights(self._read_weights(path), trainable_only=False)
            self.model.eval()
            return
        kind, where = layout.find_layout(path)
        if kind == "mlx":
            mcfg = json.loads((where / layout.MLX_CONFIG).read_text())
            if mcfg.get("fine_tune_type") == "full":
                self._load_weights(mx.load(str(where / layout.MLX_WEIGHTS)), trainable_only=False)
                self.model.eval()
                return
        spec, weights = layout.read_adapter(path, model_type=self.model_type)
        model = self.model
        strip_adapters(model)
        self._attached, self._active, self._structure = {}, None, None
        self._prompt_cache.clear()
        added = layout.read_added_tokens(path)
        if added is not None:
            self._apply_added_tokens(added)
        elif self._added:  # a previous adapter's token rows: back to the base vocabulary's rows
            strip_token_rows(model)
            self._added = None
        keys = spec.keys or resolve_lora_keys(model, spec.target_modules)
        n = len(model.layers)
        num_layers = n - min(spec.layers) if spec.layers else spec.num_layers
        apply_lora(model, kind=spec.kind, keys=keys, num_layers=num_layers, r=spec.r, scale=spec.scale, dropout=0.0)
        params = dict(tree_flatten(model.parameters()))
        bad = [k for k, v in weights.items() if k not in params or tuple(params[k].shape) != tuple(v.shape)]
        if bad:
            raise ValueError(f"{path}: adapter tensors do not fit this model: {bad[:5]}")
        model.load_weights([(k, mx.array(v).astype(params[k].dtype)) for k, v in weights.items()], strict=False)
        model.eval()
        self._fns, self._kind, self._loaded_spec = {}, spec.kind, spec
        mx.eval(model.parameters())

    def _apply_added_tokens(self, added: dict) -> None:
        """Grow the vocabulary to the adapter's, with its trained rows; use its tokenizer (tokens,
        chat template) and stop at its end-of-turn token."""
        from transformers import AutoTokenizer

        add_token_rows(self.model, added["vocab_size"], added["token_ids"],
                       rows={"embed_tokens": added["embed_tokens"], "lm_head": added["lm_head"]})
        tok = AutoTokenizer.from_pretrained(str(added["dir"])) if added["has_tokenizer"] else self.tokenizer
        self._set_tokenizer(tok, added.get("end_of_turn"))
        self._added = {k: added[k] for k in ("token_ids", "tokens", "vocab_size", "end_of_turn")}

    def fuse(self, adapter_path: Path, out_dir: Path, dequantize: bool = False) -> None:
        """mlx-lm's LoRA/DoRA `fuse` on the loaded base (load it in float32: the merge happens
        there), added-token rows made dense, saved in the checkpoint's dtype with mlx-lm's
        `save_model` (safetensors that transformers reads too) and the adapter's tokenizer. A
        quantized base on disk is refused unless `dequantize`: merging and re-quantizing can
        silently wash the adapter out (mlx-lm #1172)."""
        from mlx.utils import tree_unflatten
        from mlx_lm.tuner.dora import DoRALinear
        from mlx_lm.tuner.lora import LoRALinear
        from mlx_lm.utils import dequantize_model, save_config

        self._require_model()
        config = dict(self._config)
        if is_quantized(self.model):
            if not dequantize:
                raise FuseError(f"{self._model_path} is quantized: fusing into it "
                                f"would re-quantize the merged weights and can silently lose the adapter (mlx-lm "
                                f"#1172); fuse with dequantize=True (--dequantize) to write a float model, or fuse "
                                f"into the float base")
            self.model = dequantize_model(self.model)
            config.pop("quantization", None)
            config.pop("quantization_config", None)
        self.load_adapter(adapter_path)
        model = self.model
        fused = [(name, m.fuse(dequantize=True)) for name, m in model.named_modules()
                 if isinstance(m, (LoRALinear, DoRALinear))]
        if fused:
            model.update_modules(tree_unflatten(fused))
        self._structure, self._loaded_spec, self._added, self._fns = None, None, None, {}   # all in the weights now
        if (vocab := densify_token_rows(model)) is not None:
            config["vocab_size"] = vocab
        save_dtype = checkpoint_dtype(self._config)
        model.set_dtype(DTYPES[save_dtype])
        mx.eval(model.parameters())
        out = Path(out_dir)
        save_model(out, model, self.model_type)
        config["torch_dtype"] = save_dtype
        save_config(config, out / "config.json")
        self.tokenizer.save_pretrained(str(out))

    # ---- several adapters on one base (chat) ---------------------------------------------------
    # One copy of the base: each attached adapter is a named set of LoRA tensors; using one wraps
    # the base's linear layers in LoRA layers of its shape (kept when the next has the same shape)
    # and points them at its tensors. Wrapping never copies the base's arrays.
    def _structure_of(self, spec: layout.AdapterSpec) -> tuple:
        keys = spec.keys or resolve_lora_keys(self.model, spec.target_modules)
        n = len(self.model.layers)
        num_layers = n - min(spec.layers) if spec.layers else spec.num_layers
        return self._shape(spec.kind, keys, num_layers, spec.r, spec.scale)

    def _shape(self, kind, keys, num_layers, r, scale) -> tuple:
        """What makes two adapters' LoRA layers the same layers (one form for a run and a saved adapter)."""
        n = len(self.model.layers)
        num_layers = n if num_layers is None or num_layers < 0 else min(num_layers, n)
        return kind, tuple(sorted(keys)), num_layers, int(r), round(float(scale), 6)

    def _wrap(self, structure) -> None:
        if structure == self._structure:
            return
        strip_adapters(self.model)
        if structure is not None:
            kind, keys, num_layers, r, scale = structure
            apply_lora(self.model, kind=kind, keys=list(keys), num_layers=num_layers, r=r, scale=scale, dropout=0.0)
        self._structure, self._fns = structure, {}

    def attach_adapter(self, name: str, path: Path) -> int:
        self._require_model()
        if layout.changes_base(path):
            raise ValueError(f"{path}: a full fine-tune or an adapter with added tokens changes the base; "
                             "load it alone (load_adapter)")
        spec, weights = layout.read_adapter(path, model_type=self.model_type)
        structure = self._structure_of(spec)
        training = self.optimizer is not None
        if training and (not self.can_share_base() or structure != self._structure):
            raise base.CannotShare(f"{path}: its LoRA layers {structure[::2]} differ from the training run's "
                                   f"{(self._structure or ())[::2]}")
        if not training:
            self._wrap(structure)
            self._active = None
        params = dict(tree_flatten(self.model.parameters()))
        bad = [k for k, v in weights.items() if k not in params or tuple(params[k].shape) != tuple(v.shape)]
        if bad:
            raise ValueError(f"{path}: adapter tensors do not fit this model: {bad[:5]}")
        arrays = {k: mx.array(v).astype(params[k].dtype) for k, v in weights.items()}
        mx.eval(list(arrays.values()))
        self._prompt_cache.clear()
        self._attached[name] = (structure, arrays)
        self.use_adapter(name)
        return sum(int(a.nbytes) for a in arrays.values())

    def use_adapter(self, name: Optional[str]) -> None:
        name = name or None
        if name == self._active:
            return
        if name is not None and name not in self._attached:
            raise ValueError(f"adapter {name!r} is not attached to this model")
        if self.optimizer is not None:   # a training run: swap tensors, never the layers
            if name is None and self._kind != "lora":
                raise base.CannotShare("the bare base of a DoRA run is not its layers with zero B")
            if self._active == base.TRAINING:
                self._stash = dict(tree_flatten(self.model.trainable_parameters()))
            arrays = self._attached[name][1] if name else \
                {k: mx.zeros_like(v) for k, v in self._stash.items() if k.endswith(".lora_b")}
            self.model.load_weights(list(arrays.items()), strict=False)
        elif name is None:
            self._wrap(None)
        else:
            structure, arrays = self._attached[name]
            self._wrap(structure)
            self.model.load_weights(list(arrays.items()), strict=False)
        self.model.eval()
        self._active = name

    def detach_adapter(self, name: str) -> None:
        self._prompt_cache.clear()
        if self._attached.pop(name, None) is not None and self._active == name:
            self._train_mode() if self.optimizer is not None else self.use_adapter(None)

    def weight_bytes(self) -> tuple[int, dict]:
        lora = (".lora_a", ".lora_b", ".m")
        base_bytes = sum(int(v.nbytes) for k, v in tree_flatten(self.model.parameters()) if not k.endswith(lora))
        adapters = {name: sum(int(a.nbytes) for a in arrays.values()) for name, (_, arrays) in self._attached.items()}
        if self.can_share_base():   # the run's own tensors: in the layers, or kept aside while a chat runs
            own = self._stash if self._active != base.TRAINING else dict(tree_flatten(self.model.trainable_parameters()))
            adapters[base.TRAINING] = sum(int(a.nbytes) for a in own.values())
        return base_bytes, adapters

    # ---- generation ---------------------------------------------------------------------------
    def generate(self, prompt_ids: list[int], sampling: Sampling,
                 should_stop: Callable[[], bool] = lambda: False) -> Iterator[GenerationChunk]:
        from mlx_lm.generate import stream_generate
        from mlx_lm.models.cache import make_prompt_cache
        from mlx_lm.sample_utils import make_logits_processors

        self._require_model()
        self.model.eval()
        sampler = _own_key_sampler(sampling)
        processors = make_logits_processors(
            repetition_penalty=sampling.repetition_penalty if sampling.repetition_penalty != 1.0 else None)
        reply, text = base.ReplyText(sampling.stop), ""
        key, tokens = self._active, list(prompt_ids)
        # a previous turn's cache: read only the rest (not with a repetition penalty, whose
        # context mlx-lm takes from the tokens it is given)
        cache, reused = self._prompt_cache.take(key, tokens) if processors == [] else (None, 0)
        cache = cache if cache is not None else make_prompt_cache(self.model)
        try:
            prompt = tokens[reused:]
            plan = base.PrefillPlan(len(prompt))   # a long prompt in chunks of about PREFILL_SECONDS each
            while plan.total - plan.pos > plan.size():   # the last chunk: stream_generate reads it
                n = plan.next()
                with plan.timed(n):
                    self.model(mx.array(prompt[plan.pos - n:plan.pos])[None], cache=cache)
                    mx.eval([c.state for c in cache])
                yield GenerationChunk("", -1)
                if should_stop():
                    yield GenerationChunk("", -1, "cancelled")
                    return
            prompt = prompt[plan.pos:]
            for resp in stream_generate(self.model, self._wrapper, prompt, max_tokens=sampling.max_tokens,
                                        sampler=sampler, logits_processors=processors, prompt_cache=cache):
                tokens.append(int(resp.token))
                if should_stop():
                    yield GenerationChunk(reply.rest(), int(resp.token), "cancelled")
                    return
                text += resp.text
                delta, stopped = reply.update(text)
                if stopped or resp.finish_reason:
                    yield GenerationChunk(delta + ("" if stopped else reply.rest()), int(resp.token),
                                          "stop" if stopped else resp.finish_reason)
                    return
                yield GenerationChunk(delta, int(resp.token))  # one chunk per token (usage counts them)
        finally:
            self._prompt_cache.put(key, tokens, cache)
            mx.clear_cache()   # freed buffers go back (set_memory_limits); the kept KV cache stays

    def memory(self) -> MemoryStats:
        return MemoryStats(active_bytes=int(mx.get_active_memory()), peak_bytes=int(mx.get_peak_memory()))

    def peak_flops(self) -> float:
        return peak_flops(str(mx.default_device()), {v: k for k, v in DTYPES.items()}[self.dtype])


def _own_key_sampler(s: Sampling):
    """mlx_lm's sampler chain (top-p, min-p, top-k, then temperature), drawing from its own key
    instead of the global mx.random state that a training job's dropout uses."""
    import secrets

    from mlx_lm.sample_utils import apply_min_p, apply_top_k, apply_top_p

    if s.temperature <= 0:
        return lambda logprobs: mx.argmax(logprobs, axis=-1)
    key = [mx.random.key(s.seed if s.seed is not None else secrets.randbits(62))]

    def sampler(logprobs):
        if 0 < s.top_p < 1.0:
            logprobs = apply_top_p(logprobs, s.top_p)
        if s.min_p:
            logprobs = apply_min_p(logprobs, s.min_p, 1)
        if s.top_k > 0:
            logprobs = apply_top_k(logprobs, s.top_k)
        key[0], sub = mx.random.split(key[0])
        return mx.random.categorical(logprobs * (1.0 / s.temperature), key=sub)
    return sampler


def _trim(cache, n: int):
    """Drop the last n tokens of an mlx-lm prompt cache; None when it cannot (rotating caches)."""
    from mlx_lm.models.cache import can_trim_prompt_cache, trim_prompt_cache

    if not can_trim_prompt_cache(cache):
        return None
    if n:
        trim_prompt_cache(cache, n)
    return cache
