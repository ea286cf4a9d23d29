"""The torch backend: transformers models, PEFT LoRA/DoRA, bitsandbytes QLoRA behind `Backend`.

Training math (what the loop relies on; the MLX backend computes the same):
- `forward_backward` returns the *summed* cross-entropy over `loss_mask` and adds the gradient of
  that sum to `.grad`; `optimizer_step` multiplies the grads by `grad_scale`, clips the global
  norm (`clip_grad_norm_`: max_norm / (norm + 1e-6)), sets the lr, steps and zeroes.
- The LM head runs only on supervised positions (hidden states are gathered first) for the model
  families in `PLAIN_HEAD`, in chunks whose logits are recomputed in backward when their float32
  logits would pass 256 MiB (loss.py): same loss, far less memory and time with large vocabularies.
- Packing: position ids restart per packed row and no `attention_mask` is passed
  (`use_cache=False`); transformers (>= 5) then derives a block-diagonal causal mask from the
  position-id resets (`masking_utils.find_packed_sequence_indices`) for sdpa/eager attention.
  The first packed batch verifies that rows do not see each other on this model; if they do (an
  architecture that builds its own mask), the backend switches to an explicit 4D block mask.
  Padding is trailing and gets continuing position ids, so unpacked batches keep SDPA's causal
  fast path and padding never changes real-token results.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Callable, Iterator, Optional

import numpy as np
import torch
import torch.nn.functional as F

from ...config.schema import TrainConfig
from ...data.batch import Batch
from ...files import atomic_write_file
from .. import adapter_layout as layout
from ..base import (TRAINING, Backend, CannotShare, FuseError, GenerationChunk, MemoryStats, ModelInfo, ModelSpec,
                    ParamStats, PromptCache, Sampling, adapter_spec)
from . import model as tmodel
from .device import memory_bytes, pick_device, pick_dtype
from .generate import stream
from .loss import head_cross_entropy
from .optim import build_optimizer
from .peak import peak_flops

log = logging.getLogger("tunerd.torch")

# model types whose logits are exactly lm_head(final hidden state): no softcap or logit scaling
PLAIN_HEAD = {"llama", "mistral", "qwen2", "qwen3", "qwen2_moe", "qwen3_moe", "phi3", "gemma", "gpt2",
              "smollm3", "olmo", "olmo2", "phi", "starcoder2", "stablelm"}
STATE_FILE = "torch_state.pt"
TRAINABLE_FILE = "trainable.safetensors"


class TorchBackend(Backend):
    name = "torch"
    supports_added_tokens = True

    def __init__(self):
        self.cfg: TrainConfig | None = None
        self.model = None          # the trained/inference model (a PeftModel once an adapter exists)
        self.base = None           # the transformers model without adapter
        self.optimizer = None
        self.device: torch.device | None = None
        self.dtype: torch.dtype | None = None
        self._warnings: list[str] = []
        self.packing_mode: str | None = None   # "position_ids" | "mask", decided on the first packed batch
        self.packing_check_diff: float | None = None
        self._tok = None
        self._kind = "lora"
        self._params: list = []
        self._scaler = None
        self._eos: set = set()
        self._added: dict | None = None   # chat special tokens added for this run (resize_token_embeddings)
        self._slots: dict[str, str] = {}   # attached adapter name -> PEFT adapter name (attach_adapter)
        self._active: str | None = None    # the attached adapter in use (None: the bare base)
        self._next_slot = 0
        self._prompt_cache = PromptCache(lambda c: c.get_seq_length(), _crop)   # per adapter, across turns

    # ---- load ---------------------------------------------------------------------------------
    @property
    def tokenizer(self):
        return self._tok

    @property
    def warnings(self) -> list[str]:
        return self._warnings

    def load(self, spec: ModelSpec) -> ModelInfo:
        from transformers import AutoTokenizer

        self.cfg = None
        self.device = pick_device(spec.device)
        self._ckpt_dtype = self._checkpoint_dtype(spec)
        self.dtype, dtype_name, dtype_reason = pick_dtype(spec.dtype, self.device, self._ckpt_dtype)
        if tmodel.quant_mode(spec) and self.device.type == "mps":
            self._warnings.append("4-bit/8-bit on MPS through bitsandbytes is experimental; "
                                  "the mlx backend is the tested QLoRA path on a Mac")
        self._tok = AutoTokenizer.from_pretrained(spec.model, revision=spec.revision,
                                                  trust_remote_code=spec.trust_remote_code)
        self.base = self.model = tmodel.load_model(spec, self.device, self.dtype)
        self.optimizer, self.packing_mode, self._added = None, None, None
        self._slots, self._active = {}, None
        self._prompt_cache.clear()
        eos = self.base.generation_config.eos_token_id if self.base.generation_config else None
        eos = [eos] if isinstance(eos, int) else list(eos or [])
        if self._tok.eos_token_id is not None:
            eos.append(self._tok.eos_token_id)
        self._eos = set(int(e) for e in eos)
        _, total = tmodel.count_params(self.base)
        q = tmodel.quant_mode(spec) or "none"
        if q == "4bit":
            q = "fp4" if spec.quantization.lower() == "fp4" else spec.bnb_4bit_quant_type
        return ModelInfo(model=spec.model, backend="torch", device=str(self.device), dtype=dtype_name,
                         dtype_reason=dtype_reason, device_kind=self.device.type, config=self.base.config.to_dict(),
                         quantization=q, total_params=int(total),
                         vocab_size=int(self.base.config.vocab_size), eos_token_ids=sorted(self._eos))

    @staticmethod
    def _checkpoint_dtype(spec: ModelSpec) -> str:
        from transformers import AutoConfig

        from ..dtypes import checkpoint_dtype, read_checkpoint_dtype

        local = read_checkpoint_dtype(spec.model)
        if local is not None:
            return local
        return checkpoint_dtype(AutoConfig.from_pretrained(spec.model, revision=spec.revision,
                                                           trust_remote_code=spec.trust_remote_code).to_dict())

    def resize_token_embeddings(self, vocab_size: int, token_ids=None, end_of_turn=None,
                                chat_template=None) -> int:
        """Grow the base's vocabulary for chat special tokens the data pipeline added (before
        add_adapter): new rows start at the mean embedding and are trained as PEFT trainable tokens
        (`trainable_token_indices`), saved with the adapter (adapter_layout: added tokens)."""
        self._require_model()
        old = self.base.get_input_embeddings().weight.shape[0]
        ids = sorted(int(i) for i in token_ids) if token_ids is not None else list(range(old, vocab_size))
        new = tmodel.resize_vocab(self.base, vocab_size, ids)
        if end_of_turn:
            self._eos.add(int(self._tok.convert_tokens_to_ids(end_of_turn)))
        if chat_template:  # what the adapter was trained with: saved with its tokenizer, used by chat
            self._tok.chat_template = chat_template
        self._added = {"token_ids": ids, "tokens": self._tok.convert_ids_to_tokens(ids), "vocab_size": new,
                       "end_of_turn": end_of_turn, "tied": tmodel.tied_head(self.base),
                       "names": {"embed_tokens": tmodel.module_leaf_name(self.base, self.base.get_input_embeddings()),
                                 "lm_head": tmodel.module_leaf_name(self.base, self.base.get_output_embeddings())
                                 if self.base.get_output_embeddings() is not None else None}}
        return new

    def add_adapter(self, cfg: TrainConfig) -> ParamStats:
        self._require_model()
        self.cfg, self._kind = cfg, cfg.peft_adapter.lower()
        token_ids = self._added["token_ids"] if self._added and self._kind != "full" else None
        self.model = tmodel.add_adapter(self.base, cfg, token_ids)
        self._params = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizer = build_optimizer(cfg, self._params, self.device)
        self._scaler = torch.amp.GradScaler(self.device.type) if self.dtype == torch.float16 else None
        self.model.train()
        self._active = TRAINING if self._kind != "full" else None
        trainable, total = tmodel.count_params(self.model)
        return ParamStats(total=total, trainable=trainable)

    def can_share_base(self) -> bool:
        """A LoRA/DoRA run on the checkpoint's own vocabulary: chat adapters can sit beside its
        trainable adapter (PEFT named adapters) on this one base while it trains."""
        return self.optimizer is not None and self._kind != "full" and not self._added

    def _train_mode(self) -> None:
        """Training's own adapter active and trainable again after a chat used another one."""
        if self.optimizer is None or self._active == TRAINING or self._kind == "full":
            return
        self.model.base_model.enable_adapter_layers()
        self.model.set_adapter("default")
        self.model.requires_grad_(False)
        for p in self._params:
            p.requires_grad_(True)
        self._active = TRAINING

    def _require_model(self):
        if self.base is None:
            raise RuntimeError("torch backend: load(spec) first")

    def _underlying(self):
        return self.model.get_base_model() if hasattr(self.model, "get_base_model") else self.model

    # ---- batches ------------------------------------------------------------------------------
    def _model_inputs(self, batch: Batch) -> dict:
        seg, pos = batch.segment_ids, batch.position_ids.astype(np.int64)
        real = seg > 0
        n = real.sum(axis=1)
        t = np.arange(seg.shape[1])[None, :]
        last = pos[np.arange(len(n)), np.maximum(n - 1, 0)]
        pos = np.where(real, pos, last[:, None] + 1 + t - n[:, None])  # padding continues the last row
        kw = dict(input_ids=torch.from_numpy(batch.inputs.astype(np.int64)).to(self.device),
                  position_ids=torch.from_numpy(pos).to(self.device), use_cache=False)
        if batch.is_packed:
            if self.packing_mode is None:
                self._check_packing()
            if self.packing_mode == "mask":
                kw["attention_mask"] = self._block_mask(seg)
        return kw

    def _block_mask(self, seg: np.ndarray) -> torch.Tensor:
        """[B, 1, T, T] block-diagonal causal mask: bool for sdpa, additive float for eager.
        Trailing padding joins the last row (it is never a key for a real token, and every query
        keeps at least itself: no all-masked softmax rows)."""
        seg = np.where(seg > 0, seg, seg.max(axis=1, keepdims=True))
        s = torch.from_numpy(seg).to(self.device)
        allowed = (s[:, :, None] == s[:, None, :]) & torch.ones(
            seg.shape[1], seg.shape[1], dtype=torch.bool, device=self.device).tril()
        if self.base.config._attn_implementation == "sdpa":
            return allowed[:, None]
        dtype = self.base.get_input_embeddings().weight.dtype
        mask = torch.zeros(allowed.shape, dtype=dtype, device=self.device)
        return mask.masked_fill(~allowed, torch.finfo(dtype).min)[:, None]

    @torch.no_grad()
    def _check_packing(self) -> None:
        """Two copies of a short sequence packed in one row must give the same logits twice."""
        was_training = self.model.training
        self.model.eval()
        ids = torch.tensor([[1, 2, 3, 4, 1, 2, 3, 4]], device=self.device) % self.base.config.vocab_size
        pos = torch.tensor([[0, 1, 2, 3, 0, 1, 2, 3]], device=self.device)
        logits = self.model(input_ids=ids, position_ids=pos, use_cache=False).logits.float()[0]
        diff = float((logits[:4] - logits[4:]).abs().max())
        tol = (1e-4 if self.dtype == torch.float32 else 2e-2) * max(1.0, float(logits.abs().max()))
        self.packing_check_diff = diff
        self.packing_mode = "position_ids" if diff <= tol else "mask"
        if self.packing_mode == "mask":
            log.info("packing: position-id resets do not isolate rows on %s (diff %.3g); using a 4D block mask",
                     self.base.config.model_type, diff)
        self.model.train(was_training)

    def _loss(self, batch: Batch) -> tuple[torch.Tensor, int]:
        kw = self._model_inputs(batch)
        mask = torch.from_numpy(batch.loss_mask).to(self.device)
        sel = mask > 0
        targets = torch.from_numpy(batch.targets.astype(np.int64)).to(self.device)[sel]
        m = self._underlying()
        decoder = getattr(m, getattr(m, "base_model_prefix", ""), None)
        head = m.get_output_embeddings()
        if m.config.model_type in PLAIN_HEAD and decoder is not None and head is not None:
            hidden = decoder(**kw).last_hidden_state[sel]
            loss = head_cross_entropy(hidden, head, targets, mask[sel], vocab=head.weight.shape[0])
        else:
            logits = self.model(**kw).logits[sel].float()
            loss = (F.cross_entropy(logits, targets, reduction="none") * mask[sel]).sum()
        return loss, int(batch.loss_mask.sum())

    # ---- training -----------------------------------------------------------------------------
    def forward_backward(self, batch: Batch) -> tuple[float, int]:
        if self.optimizer is None:
            raise RuntimeError("torch backend: add_adapter(cfg) before training")
        self._train_mode()
        self.model.train()
        loss, n = self._loss(batch)
        (self._scaler.scale(loss) if self._scaler else loss).backward()
        return float(loss.detach()), n

    def optimizer_step(self, lr: float, grad_scale: float, max_grad_norm: float) -> float:
        if self._scaler:
            self._scaler.unscale_(self.optimizer)
        grads = [p.grad for p in self._params if p.grad is not None]
        if not grads:
            raise RuntimeError("optimizer_step without forward_backward")
        torch._foreach_mul_(grads, grad_scale)
        norm = torch.nn.utils.clip_grad_norm_(self._params, max_grad_norm if max_grad_norm and max_grad_norm > 0
                                              else float("inf"))
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        if self._scaler:
            self._scaler.step(self.optimizer)
            self._scaler.update()
        else:
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return float(norm)

    @torch.no_grad()
    def eval_loss(self, batch: Batch) -> tuple[float, int]:
        self._require_model()
        self._train_mode()
        self.model.eval()
        loss, n = self._loss(batch)
        return float(loss), n

    # ---- checkpoints --------------------------------------------------------------------------
    def _trainable(self) -> dict:
        return {n: p for n, p in self.model.named_parameters() if p.requires_grad}

    def save_checkpoint(self, path: Path) -> None:
        """Adapter (both layouts, so chat can use a checkpoint), exact trainable tensors, optimizer
        and GradScaler state, torch RNG. Each file is written atomically."""
        from safetensors.torch import save_file

        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        self._train_mode()
        if self._kind != "full":
            self.save_adapter(path)
        tensors = {n: p.detach().cpu().contiguous() for n, p in self._trainable().items()}
        atomic_write_file(path / TRAINABLE_FILE, lambda tmp: save_file(tensors, tmp, metadata={"format": "pt"}))
        state = {"backend": "torch", "kind": self._kind, "optimizer": self.optimizer.state_dict(),
                 "scaler": self._scaler.state_dict() if self._scaler else None,
                 "rng_cpu": torch.get_rng_state(),
                 "rng_cuda": torch.cuda.get_rng_state_all() if self.device.type == "cuda" else None}
        atomic_write_file(path / STATE_FILE, lambda tmp: torch.save(state, tmp))

    def load_checkpoint(self, path: Path) -> None:
        from safetensors.torch import load_file

        path = Path(path)
        if not (path / STATE_FILE).exists():
            raise FileNotFoundError(f"{path}: not a torch checkpoint (no {STATE_FILE}); "
                                    f"a checkpoint resumes on the backend that wrote it")
        saved = load_file(str(path / TRAINABLE_FILE))
        self._train_mode()
        params = self._trainable()
        if set(saved) != set(params):
            missing, extra = sorted(set(params) - set(saved)), sorted(set(saved) - set(params))
            raise ValueError(f"{path}: checkpoint does not match this adapter (missing {missing[:3]}, "
                             f"unexpected {extra[:3]})")
        with torch.no_grad():
            for n, p in params.items():
                p.copy_(saved[n].to(p.device, p.dtype))
        state = torch.load(path / STATE_FILE, map_location="cpu", weights_only=True)
        self.optimizer.load_state_dict(state["optimizer"])
        if self._scaler and state.get("scaler"):
            self._scaler.load_state_dict(state["scaler"])
        torch.set_rng_state(state["rng_cpu"])
        if state.get("rng_cuda") is not None and self.device.type == "cuda":
            torch.cuda.set_rng_state_all(state["rng_cuda"])
        self.optimizer.zero_grad(set_to_none=True)

    # ---- adapters -----------------------------------------------------------------------------
    def save_adapter(self, path: Path) -> None:
        """`path/` PEFT layout + `path/mlx/` mlx-lm layout (adapter_layout). Full fine-tuning writes
        a standalone Hugging Face model directory (which mlx_lm.load also reads). Adapters that
        mlx-lm cannot express (lora_bias other than none) are written in PEFT layout only."""
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        self._train_mode()
        if self._kind == "full":
            self._underlying().save_pretrained(path, safe_serialization=True)
            self._tok.save_pretrained(path)
            return
        from peft import get_peft_model_state_dict

        sd = get_peft_model_state_dict(self.model, save_embedding_layers=False)
        tokens = {k: v for k, v in sd.items() if "trainable_tokens_delta" in k}
        if self._added:
            self._write_added_tokens(path, tokens)
        if self.cfg.lora_bias != "none":
            self.model.save_pretrained(path, save_embedding_layers=False)
            return
        weights = {k: v.detach().float().cpu().numpy() for k, v in sd.items() if k not in tokens}
        layout.write_adapter(path, weights, adapter_spec(self.cfg, self._kind), layout="peft",
                             n_model_layers=tmodel.n_layers(self.base), model_type=self.base.config.model_type)

    def _write_added_tokens(self, path: Path, deltas: dict) -> None:
        """The added tokens' rows + tokenizer. While training, the rows are PEFT's trainable-token
        parameters (`...embed_tokens.token_adapter.trainable_tokens_delta`: the rows' values, not
        differences); with an adapter loaded for inference they sit in the resized base."""
        def rows(which: str):
            leaf = self._added.get("names", {}).get(which) or which   # the module's own name (embed_tokens, wte, ...)
            hit = [v for k, v in deltas.items() if k.split(".token_adapter")[0].rpartition(".")[2] == leaf]
            if hit:
                return hit[0].detach().float().cpu().numpy()
            layer = self.base.get_input_embeddings() if which == "embed_tokens" else self.base.get_output_embeddings()
            w = getattr(layer, "base_layer", layer).weight
            return w[self._added["token_ids"]].detach().float().cpu().numpy()
        head = None if self._added["tied"] else rows("lm_head")
        layout.write_added_tokens(path, rows("embed_tokens"), head, self._added, tokenizer=self._tok)

    def _strip_adapter(self):
        from peft import PeftModel

        if isinstance(self.model, PeftModel):
            self.base = self.model.unload()
        self.model = self.base
        self._slots, self._active = {}, None
        self._prompt_cache.clear()
        return self.base

    def load_adapter(self, path: Path) -> None:
        """Apply an adapter in either layout (or a full fine-tune) for inference."""
        from peft import get_peft_model, set_peft_model_state_dict

        self._require_model()
        self._prompt_cache.clear()
        path = Path(path)
        if (path / "config.json").exists() and list(path.glob("model*.safetensors")):  # a full fine-tune
            return self._load_full(sorted(path.glob("model*.safetensors")))
        kind, where = layout.find_layout(path)
        if kind == "mlx" and json.loads((where / layout.MLX_CONFIG).read_text()).get("fine_tune_type") == "full":
            return self._load_full([where / layout.MLX_WEIGHTS])
        added = layout.read_added_tokens(path)
        mt = self.base.config.model_type
        spec, mlx_weights = layout.read_adapter(path, prefer="peft", model_type=mt)
        sd = {k: torch.from_numpy(np.asarray(v, dtype=np.float32))
              for k, v in layout.mlx_to_peft(mlx_weights, mt).items()}
        base = self._strip_adapter()
        if added is not None:
            self._apply_added_tokens(base, added)
        self.model = get_peft_model(base, _lora_config(spec, base))
        res = set_peft_model_state_dict(self.model, sd)
        if res.unexpected_keys:
            raise ValueError(f"{path}: adapter tensors do not fit this model: {res.unexpected_keys[:5]}")
        self.model.to(self.device).eval()
        self.optimizer = None

    def _apply_added_tokens(self, base, added: dict) -> None:
        """Resize `base` to the adapter's vocabulary, write the trained rows in, switch to the
        adapter's tokenizer (its tokens and chat template) and stop at its end-of-turn token."""
        from transformers import AutoTokenizer

        tmodel.resize_vocab(base, added["vocab_size"], added["token_ids"],
                            rows={"embed_tokens": added["embed_tokens"], "lm_head": added["lm_head"]})
        if added["has_tokenizer"]:
            self._tok = AutoTokenizer.from_pretrained(str(added["dir"]))
        if added.get("end_of_turn"):
            self._eos.add(int(self._tok.convert_tokens_to_ids(added["end_of_turn"])))
        self._added = {k: added[k] for k in ("token_ids", "tokens", "vocab_size", "end_of_turn")}
        self._added["tied"] = tmodel.tied_head(base)

    @torch.no_grad()
    def _load_full(self, weights_files: list) -> None:
        from safetensors.torch import load_file

        base = self._strip_adapter()
        saved = {}
        for f in weights_files:
            saved.update(load_file(str(f)))
        res = base.load_state_dict(saved, strict=False)
        if res.unexpected_keys:
            raise ValueError(f"{weights_files[0]}: tensors not in this model: {res.unexpected_keys[:5]}")
        base.eval()

    @torch.no_grad()
    def fuse(self, adapter_path: Path, out_dir: Path, dequantize: bool = False) -> None:
        """PEFT's `merge_and_unload` on the loaded base (load it in float32: the merge happens
        there), saved with `save_pretrained` in the checkpoint's dtype with the adapter's tokenizer
        (added tokens: the grown vocabulary). A bitsandbytes-quantized base is refused unless
        `dequantize`, which de-quantizes it first and writes a float model."""
        from peft import PeftModel

        self._require_model()
        if tmodel.is_quantized(self.base):
            if not dequantize:
                raise FuseError(f"{self.base.name_or_path} is quantized: merging into it would re-quantize the "
                                f"merged weights and can silently lose the adapter (mlx-lm #1172); fuse with "
                                f"dequantize=True (--dequantize) to write a float model, or fuse into the float base")
            self._strip_adapter()
            self.base = self.model = self.base.dequantize().to(self.device)
        self.load_adapter(adapter_path)
        merged = self.model.merge_and_unload() if isinstance(self.model, PeftModel) else self.model
        self.base = self.model = merged
        self._slots, self._active = {}, None
        merged.to(getattr(torch, self._ckpt_dtype))
        merged.config.use_cache = True   # load_model turns it off for training
        merged.save_pretrained(out_dir, safe_serialization=True)
        self._tok.save_pretrained(str(out_dir))
        self._added = None

    # ---- several adapters on one base (chat) ---------------------------------------------------
    def attach_adapter(self, name: str, path: Path) -> int:
        """PEFT named adapters on the one base: `add_adapter` + `set_peft_model_state_dict(adapter_name=)`;
        `use_adapter` switches with `set_adapter` / `disable_adapter_layers`."""
        from peft import PeftModel, get_peft_model, set_peft_model_state_dict

        self._require_model()
        if layout.changes_base(path):
            raise ValueError(f"{path}: a full fine-tune or an adapter with added tokens changes the base; "
                             "load it alone (load_adapter)")
        if self.optimizer is not None and not self.can_share_base():
            raise CannotShare("this training run changes its base (full fine-tune or added tokens)")
        mt = self.base.config.model_type
        spec, mlx_weights = layout.read_adapter(path, prefer="peft", model_type=mt)
        sd = {k: torch.from_numpy(np.asarray(v, dtype=np.float32))
              for k, v in layout.mlx_to_peft(mlx_weights, mt).items()}
        if name in self._slots:
            self.detach_adapter(name)
        self._prompt_cache.clear()
        self._next_slot += 1
        slot = f"tunerd_{self._next_slot}"
        if isinstance(self.model, PeftModel):
            self.model.add_adapter(slot, _lora_config(spec, self.base))
        else:
            self.model = get_peft_model(self.base, _lora_config(spec, self.base), adapter_name=slot)
        self._slots[name] = slot
        res = set_peft_model_state_dict(self.model, sd, adapter_name=slot)
        if res.unexpected_keys:
            self.detach_adapter(name)
            raise ValueError(f"{path}: adapter tensors do not fit this model: {res.unexpected_keys[:5]}")
        self.model.to(self.device).eval()
        self._active = "?"   # PEFT may have switched: set it again
        self.use_adapter(name)
        return self.weight_bytes()[1][name]

    def use_adapter(self, name: Optional[str]) -> None:
        from peft import PeftModel

        name = name or None
        if name == self._active:
            return
        if name is not None and name not in self._slots:
            raise ValueError(f"adapter {name!r} is not attached to this model")
        if isinstance(self.model, PeftModel):
            if name is None:
                self.model.base_model.disable_adapter_layers()
            else:
                self.model.base_model.enable_adapter_layers()
                self.model.set_adapter(self._slots[name])
                self.model.requires_grad_(False)   # set_adapter marks the adapter trainable
        self._active = name

    def detach_adapter(self, name: str) -> None:
        slot = self._slots.pop(name, None)
        if slot is None:
            return
        self._prompt_cache.clear()
        if not self._slots and self.optimizer is None:
            self._strip_adapter()   # the last one: back to the bare base module
            return
        self.model.delete_adapter(slot)
        self._active = "?"

    def weight_bytes(self) -> tuple[int, dict]:
        import itertools
        slot_to_name = {slot: name for name, slot in self._slots.items()}
        if self.can_share_base():
            slot_to_name["default"] = TRAINING   # the training run's own adapter
        base, adapters = 0, {name: 0 for name in slot_to_name.values()}
        model = self.model if self.model is not None else self.base
        for n, t in itertools.chain(model.named_parameters(), model.named_buffers()):
            size = t.numel() * t.element_size()
            owner = next((slot_to_name[part] for part in n.split(".") if part in slot_to_name), None)
            if owner is None:
                base += size
            else:
                adapters[owner] += size
        return base, adapters

    # ---- generation and memory ----------------------------------------------------------------
    def generate(self, prompt_ids: list[int], sampling: Sampling,
                 should_stop: Callable[[], bool] = lambda: False) -> Iterator[GenerationChunk]:
        self._require_model()
        self.model.eval()
        key = self._active
        past, reused = self._prompt_cache.take(key, list(prompt_ids))
        return stream(self.model, self._tok, list(prompt_ids), sampling, self._eos, self.device, should_stop,
                      past=past, reused=reused, keep=lambda tokens, c: self._prompt_cache.put(key, tokens, c))

    def memory(self) -> MemoryStats:
        active, peak = memory_bytes(self.device or torch.device("cpu"))
        return MemoryStats(active_bytes=int(active), peak_bytes=int(peak))

    def peak_flops(self) -> float:
        self._require_model()
        return peak_flops(str(self.device), str(self.dtype).replace("torch.", ""))


def _lora_config(spec: layout.AdapterSpec, base):
    """The PEFT config of a saved adapter on `base`, for inference (no dropout)."""
    from peft import LoraConfig

    return LoraConfig(r=spec.r, lora_alpha=spec.lora_alpha, lora_dropout=0.0, use_rslora=spec.use_rslora,
                      use_dora=spec.kind == "dora", target_modules=spec.target_modules,
                      layers_to_transform=spec.layers, fan_in_fan_out=tmodel.has_conv1d(base),
                      task_type="CAUSAL_LM")


def _crop(cache, n: int):
    """Drop the last n tokens of a transformers cache; None when it cannot (sliding windows)."""
    try:
        if n:
            cache.crop(cache.get_seq_length() - n)
        return cache
    except Exception:  # noqa: BLE001 - a cache type without crop: read the prompt again
        return None
