"""The torch backend: transformers models, PEFT LoRA/DoRA, bitsandbytes QLoRA behind `Backend`,
composed of

    model.py      loading a model (quantized with bitsandbytes), adding PEFT adapters, vocabulary
    device.py     device and dtype selection, memory statistics
    loss.py       a batch as the model's inputs (packing) and its summed loss on supervised positions
    optim.py      the optimizers and the clipped step
    generate.py   streamed generation and sampling
    batch.py      batched decoding: many replies in one forward per step (left-padded DynamicCache)
    adapters.py   save/load adapters, fuse, and several adapters on one base for chat
    backend.py    this class: load, add the adapter, the training step, checkpoints

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

from pathlib import Path
from typing import Callable, Iterator, Optional

import numpy as np
import torch

from ... import quantization
from ...config.schema import TrainConfig
from ...data.batch import Batch
from ...files import atomic_write_file
from ..base import TRAINING, Backend, MemoryStats, ModelInfo, ModelSpec, ParamStats
from ..generation import GenerationChunk, Sampling
from . import model as tmodel
from .adapters import TorchAdapters
from .device import memory_bytes, pick_device, pick_dtype
from .batch import TorchBatch
from .generate import prompt_cache, stream
from .loss import BatchLoss
from .optim import build_optimizer, clipped_step
from .peak import peak_flops

STATE_FILE = "torch_state.pt"
TRAINABLE_FILE = "trainable.safetensors"


class TorchBackend(TorchAdapters, BatchLoss, Backend):
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
        self._prompt_cache = prompt_cache()   # per adapter, across turns

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
            q = quantization.bnb_4bit_type(spec.quantization, spec.bnb_4bit_quant_type)
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

    def _require_model(self):
        if self.base is None:
            raise RuntimeError("torch backend: load(spec) first")

    def _underlying(self):
        return self.model.get_base_model() if hasattr(self.model, "get_base_model") else self.model

    # ---- training -----------------------------------------------------------------------------
    def forward_backward(self, batch: Batch) -> tuple[float, int]:
        if self.optimizer is None:
            raise RuntimeError("torch backend: add_adapter(cfg) before training")
        self.model.train()
        loss, n = self._loss(batch)
        (self._scaler.scale(loss) if self._scaler else loss).backward()
        return float(loss.detach()), n

    def optimizer_step(self, lr: float, grad_scale: float, max_grad_norm: float) -> float:
        return clipped_step(self.optimizer, self._params, self._scaler, lr, grad_scale, max_grad_norm)

    @torch.no_grad()
    def eval_loss(self, batch: Batch, adapter: Optional[str] = None) -> tuple[float, int]:
        self._require_model()
        with self._selected(self._target(adapter)):
            self.model.eval()
            loss, n = self._loss(batch)
        return float(loss), n

    # ---- per-sequence log-probs (preference tasks: tunerd/tasks) --------------------------------
    @torch.no_grad()
    def sequence_logps(self, batch: Batch, reference: bool = False) -> np.ndarray:
        self._require_model()
        with self._selected(None if reference else self._target(None)):
            was = self.model.training
            self.model.eval()
            nll, _ = self._loss(batch, per_row=True)
            self.model.train(was)
        return -nll.double().cpu().numpy()

    def forward_backward_sequences(self, batch: Batch, loss_fn):
        if self.optimizer is None:
            raise RuntimeError("torch backend: add_adapter(cfg) before training")
        self.model.train()
        nll, _ = self._loss(batch, per_row=True)
        value, weights, extra = loss_fn(-nll.detach().double().cpu().numpy())
        objective = (nll * torch.from_numpy(-np.asarray(weights, dtype=np.float32)).to(nll.device)).sum()
        (self._scaler.scale(objective) if self._scaler else objective).backward()
        return value, extra

    # ---- checkpoints --------------------------------------------------------------------------
    def _trainable(self) -> dict:
        return {n: p for n, p in self.model.named_parameters() if p.requires_grad}

    def save_checkpoint(self, path: Path) -> None:
        """Adapter (both layouts, so chat can use a checkpoint), exact trainable tensors, optimizer
        and GradScaler state, torch RNG. Each file is written atomically."""
        from safetensors.torch import save_file

        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
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

    # ---- generation and memory ----------------------------------------------------------------
    def _generate(self, prompt_ids: list[int], sampling: Sampling, should_stop: Callable[[], bool],
                  key: Optional[str]) -> Iterator[GenerationChunk]:
        self._require_model()
        self.model.eval()
        past, reused = self._prompt_cache.take(key, prompt_ids)
        return stream(self.model, self._tok, prompt_ids, sampling, self._eos, self.device, should_stop,
                      past=past, reused=reused, keep=lambda tokens, c: self._prompt_cache.put(key, tokens, c))

    def _decoder(self, key: Optional[str]) -> TorchBatch:
        self._require_model()
        self.model.eval()
        return TorchBatch(self.model, self._tok, self._eos, self.device, self._prompt_cache, key)

    def memory(self) -> MemoryStats:
        active, peak = memory_bytes(self.device or torch.device("cpu"))
        return MemoryStats(active_bytes=int(active), peak_bytes=int(peak))

    def peak_flops(self) -> float:
        self._require_model()
        return peak_flops(str(self.device), str(self.dtype).replace("torch.", ""))
