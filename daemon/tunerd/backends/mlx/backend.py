"""The MLX backend: mlx-lm models, LoRA/DoRA layers and sampling behind `Backend`, composed of

    model.py      the model families: LoRA layers, packing, quantizing the base, added-token rows
    device.py     dtypes, the device kind, memory limits and statistics
    loss.py       the summed cross-entropy over supervised positions, a batch as its arrays
    optim.py      the optimizers and the clipped update
    generate.py   streamed generation and sampling
    batch.py      batched decoding: mlx-lm's BatchGenerator behind generation.BatchDecoder
    adapters.py   save/load adapters, fuse, and several adapters on one base for chat
    backend.py    this class: load, add the adapter, the compiled steps, checkpoints

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
import numpy as np
from mlx.utils import tree_flatten, tree_map, tree_map_with_path

from ... import quantization
from ...config.schema import TrainConfig
from ...data.batch import Batch
from ...host import blas_hint
from .. import own_base
from ..base import TRAINING, Backend, MemoryStats, ModelInfo, ModelSpec, ParamStats, ce_chunk_rows
from ..dtypes import checkpoint_dtype, resolve_dtype
from ..generation import GenerationChunk, Sampling
from .adapters import MLXAdapters
from .device import DTYPES, device_kind, memory_bytes, set_memory_limits
from .batch import MlxBatch
from .generate import prompt_cache, stream
from .loss import PLAIN_HEAD, batch_arrays, row_losses, summed_loss
from .model import (PACKING_MODEL_TYPES, add_token_rows, apply_lora, enable_grad_checkpoint, is_quantized,
                    load_pretrained, quantize_base, resolve_lora_keys, token_rows)
from .optim import clipped_update, make_optimizer
from .peak import peak_flops

log = logging.getLogger("tunerd.mlx")


class MLXBackend(MLXAdapters, Backend):
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
        self._prompt_cache = prompt_cache()   # per adapter, across turns

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
        bits = quantization.mlx_bits(spec.quantization, spec.bits)
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
            self._attached, self._active, self._stash = {}, TRAINING, {}
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
            vg = nn.value_and_grad(model, summed_loss)

            def fb(inputs, idx, targets, weights, segment_ids, acc):
                (loss, ntok), grads = vg(model, inputs, idx, targets, weights,
                                         segment_ids if name == "fb_packed" else None, dtype, plain, chunk)
                return loss, ntok, tree_map(lambda a, g: a + g, acc, grads)
            # value_and_grad writes traced params into the model: model.state must be an output too
            fn = wrap(fb, [model.state, mx.random.state], [model.state, mx.random.state])
        elif name in ("eval", "eval_packed"):
            def ev(inputs, idx, targets, weights, segment_ids):
                return summed_loss(model, inputs, idx, targets, weights,
                                   segment_ids if name == "eval_packed" else None, dtype, plain, chunk)
            fn = wrap(ev, [model.state], [])
        elif name in ("rows", "rows_packed"):   # per-row summed losses, no gradient
            def rl(inputs, idx, targets, weights, segment_ids):
                return row_losses(model, inputs, idx, targets, weights,
                                  segment_ids if name == "rows_packed" else None, dtype, plain, chunk)
            fn = wrap(rl, [model.state, mx.random.state], [mx.random.state])
        elif name in ("rows_fb", "rows_fb_packed"):   # the gradient of sum_i w_i * log p(row i)
            def objective(model, inputs, idx, targets, weights, segment_ids, w):
                return -(w * row_losses(model, inputs, idx, targets, weights, segment_ids, dtype, plain, chunk)).sum()
            vg = nn.value_and_grad(model, objective)

            def rfb(inputs, idx, targets, weights, segment_ids, w, acc):
                value, grads = vg(model, inputs, idx, targets, weights,
                                  segment_ids if name == "rows_fb_packed" else None, w)
                return value, tree_map(lambda a, g: a + g, acc, grads)
            fn = wrap(rfb, [model.state, mx.random.state], [model.state, mx.random.state])
        elif name == "update":
            fn = wrap(clipped_update(model, opt), [model.state, opt.state], [model.state, opt.state])
        else:  # pragma: no cover
            raise KeyError(name)
        self._fns[name] = fn
        return fn

    # ---- training -----------------------------------------------------------------------------
    def forward_backward(self, batch: Batch) -> tuple[float, int]:
        if self.optimizer is None:
            raise RuntimeError("mlx backend: add_adapter(cfg) before training")
        self.model.train()
        if self.cfg.lora_dropout > 0:
            mx.random.seed((self.cfg.seed * 1_000_003 + self._micro) % (2 ** 63))
        self._micro += 1
        packed, arrays = batch_arrays(batch, self.model_type, self.compile)
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

    def eval_loss(self, batch: Batch, adapter: Optional[str] = None) -> tuple[float, int]:
        self._require_model()
        with self._selected(self._target(adapter)):
            self.model.eval()
            packed, arrays = batch_arrays(batch, self.model_type, self.compile)
            loss, ntok = self._fn("eval_packed" if packed else "eval")(*arrays)
            mx.eval(loss, ntok)
        mx.clear_cache()
        return float(loss), int(ntok)

    # ---- per-sequence log-probs (preference tasks: tunerd/tasks) --------------------------------
    def sequence_logps(self, batch: Batch, reference: bool = False) -> np.ndarray:
        self._require_model()
        with self._selected(None if reference else self._target(None)):
            self.model.eval()
            packed, arrays = batch_arrays(batch, self.model_type, self.compile)
            nll = self._fn("rows_packed" if packed else "rows")(*arrays)
            out = -np.array(nll.astype(mx.float32)).astype(np.float64)[:batch.inputs.shape[0]]
        mx.clear_cache()
        return out

    def forward_backward_sequences(self, batch: Batch, loss_fn):
        """Two passes: the log-probs (the dropout masks of this micro-batch), `loss_fn`'s weights,
        then the gradient of sum_i w_i * log p(row i) with the same masks; MLX takes no gradient
        of a value its caller computes after the forward pass."""
        if self.optimizer is None:
            raise RuntimeError("mlx backend: add_adapter(cfg) before training")
        self.model.train()
        seed = (self.cfg.seed * 1_000_003 + self._micro) % (2 ** 63)
        self._micro += 1
        packed, arrays = batch_arrays(batch, self.model_type, self.compile)
        if self.cfg.lora_dropout > 0:
            mx.random.seed(seed)
        nll = self._fn("rows_packed" if packed else "rows")(*arrays)
        logps = -np.array(nll.astype(mx.float32)).astype(np.float64)[:batch.inputs.shape[0]]
        value, weights, extra = loss_fn(logps)
        if self.cfg.lora_dropout > 0:
            mx.random.seed(seed)
        if self._acc is None:
            self._acc = tree_map(mx.zeros_like, self.model.trainable_parameters())
        w = mx.array(np.pad(np.asarray(weights, dtype=np.float32), (0, arrays[0].shape[0] - len(weights))))
        _, self._acc = self._fn("rows_fb_packed" if packed else "rows_fb")(*arrays, w, self._acc)
        mx.eval(self._acc)
        return value, extra

    # ---- checkpoints --------------------------------------------------------------------------
    def save_checkpoint(self, path: Path) -> None:
        path = Path(path)
        self.save_adapter(path)
        mx.save_safetensors(str(path / "optimizer.safetensors"), dict(tree_flatten(self.optimizer.state)))
        (path / "backend_state.json").write_text(json.dumps({"backend": "mlx", "micro_batches": self._micro}))

    def load_checkpoint(self, path: Path) -> None:
        path = Path(path)
        self._load_weights(self._read_weights(path), trainable_only=True)
        if self._added:
            added = own_base.read_added_tokens(path)
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

    # ---- generation and the device ------------------------------------------------------------
    def _generate(self, prompt_ids: list[int], sampling: Sampling, should_stop: Callable[[], bool],
                  key: Optional[str]) -> Iterator[GenerationChunk]:
        self._require_model()
        return stream(self.model, self._wrapper, prompt_ids, sampling, should_stop, self._prompt_cache, key)

    def _decoder(self, key: Optional[str]) -> MlxBatch:
        self._require_model()
        return MlxBatch(self.model, self._wrapper, self._prompt_cache, key)

    def memory(self) -> MemoryStats:
        active, peak = memory_bytes()
        return MemoryStats(active_bytes=active, peak_bytes=peak)

    def peak_flops(self) -> float:
        return peak_flops(str(mx.default_device()), {v: k for k, v in DTYPES.items()}[self.dtype])
