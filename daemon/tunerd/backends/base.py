"""The backend interface: everything that touches a model lives behind it.

The training loop, chat, the model registry, evaluation and fuse drive a `Backend` and never import
mlx or torch. A backend is built by name with `tunerd.backends.registry.get_backend`.

Two parts (a `Backend` is both):
  TrainingBackend: what training needs
    name                                        "mlx" | "torch"
    tokenizer                                   the loaded model's Hugging Face tokenizer
    warnings -> list[str]                       set-up warnings for the user (default none); the loop
                                                emits each as a Log(warning) event
    load(spec: ModelSpec) -> ModelInfo          load base model + tokenizer (quantize if asked)
    supports_added_tokens: bool                 whether resize_token_embeddings works (default False)
    resize_token_embeddings(vocab_size, token_ids=None, end_of_turn=None, chat_template=None) -> int
                                                before add_adapter when the data pipeline added chat
                                                special tokens: grow the vocabulary, train the new
                                                rows, save them with the adapter (adapter_layout:
                                                added tokens); the default raises NotImplementedError
    add_adapter(cfg: TrainConfig) -> ParamStats add LoRA/DoRA (or unfreeze for full), build optimizer
    forward_backward(batch) -> (loss_sum, n)    accumulate gradients of the *summed* token loss
    optimizer_step(lr, grad_scale, max_grad_norm) -> grad_norm
                                                scale accumulated grads by grad_scale (1/n_targets
                                                over all micro-batches), clip, step, zero grads
    eval_loss(batch, adapter=None) -> (loss_sum, n)  no gradients (adapter: as generate's, evaluation)
    sequence_logps(batch, reference=False) -> float64 [rows]
                                                per batch row, the summed log-probs of its supervised
                                                targets, no gradients; `reference`: with the adapter
                                                off (the base: DPO's reference, no second model copy)
    forward_backward_sequences(batch, loss_fn) -> (value, extra)
                                                the same log-probs with the adapter on (training mode);
                                                loss_fn(logps) -> (value, weights = d value / d logps,
                                                extra); accumulates the gradient of value, i.e. of
                                                sum_i weights_i * logp_i (a task's loss: tunerd/tasks)
    save_checkpoint(dir) / load_checkpoint(dir) adapter + optimizer state + backend RNG
    save_adapter(dir)                           final adapter: native layout AND PEFT layout
    load_adapter(dir)                           apply a saved adapter (either layout) for inference
    memory() -> MemoryStats                     the device's (process-wide) active and peak bytes
    peak_flops() -> float                       measured matmul FLOP/s of the device in the model's dtype
    fuse(adapter_dir, out_dir, dequantize=False)
                                                merge an adapter into the loaded base and write a
                                                standalone Hugging Face model dir (export/fuse.py)
  ServingBackend: what serving adapters needs -- several adapters on one loaded base (one copy of
  its weights), each selected only for the duration of a call:
    generate(prompt_ids, sampling, should_stop, adapter=None) -> iterator[GenerationChunk]
                                                adapter: an attached name, "" the bare base, None
                                                the model's own (training's adapter / as loaded)
    decoder(adapter=None) -> generation.BatchDecoder
                                                many replies decoded together with that adapter
                                                (selected around each step), sequences joining
                                                and leaving between steps (issue 21)
    attach_adapter(name, path) -> bytes         load a saved adapter beside the others (PEFT named
                                                adapters on torch; named weight sets on mlx)
    detach_adapter(name)
    check_serves(name | None)                   raise CannotShare/ValueError if generate cannot use it
    weight_bytes() -> (base, {name: bytes})     bytes of this model's own weights and of each adapter
    can_share_base() -> bool                    a training run lends its base to chat (attach beside
                                                its trainable adapter, TRAINING; default False)
Losses are sums over supervised target tokens so that the loop can normalise across gradient
accumulation by the total supervised token count (transformers #34191).
A backend instance is owned by one thread (MLX streams are thread-local, DESIGN.md §6).
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from contextlib import contextmanager
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Callable, Iterator, Optional

from ..config.schema import TrainConfig
from ..data.batch import Batch
from .adapter_layout import AdapterSpec
from .generation import BatchDecoder, GenerationChunk, Sampling


class BackendUnavailable(RuntimeError):
    """The backend's packages are not installed or the device is missing."""


class CannotShare(ValueError):
    """A training model cannot serve this chat request beside its run (the adapter's shape differs
    from the run's on mlx, a bare base under DoRA, a run that changes its base): the caller loads
    a base of its own instead."""


TRAINING = "(training)"   # the name a training run's own adapter has among attached adapters


class FuseError(ValueError):
    """An adapter cannot be fused into this base (e.g. a quantized base without dequantize)."""


def _default(name: str):
    return TrainConfig.__dataclass_fields__[name].default


@dataclass(frozen=True)
class ModelSpec:
    """What `Backend.load` needs to load a base model: the model fields of a TrainConfig (same
    names, same defaults, same meaning; see config/schema.py), nothing about training."""
    model: str
    revision: Optional[str] = None
    backend: str = _default("backend")                # auto | mlx | torch (registry.resolve_backend)
    dtype: str = _default("dtype")
    quantization: str = _default("quantization")
    device: str = _default("device")                  # torch: auto | cuda | mps | cpu
    trust_remote_code: bool = _default("trust_remote_code")
    bits: int = _default("bits")                      # mlx: bits under a 4-bit request
    group_size: int = _default("group_size")          # mlx: quantization group size
    bnb_4bit_quant_type: str = _default("bnb_4bit_quant_type")            # torch: nf4 | fp4
    bnb_4bit_use_double_quant: bool = _default("bnb_4bit_use_double_quant")

    @classmethod
    def from_config(cls, cfg: TrainConfig) -> ModelSpec:
        return cls(**{f.name: getattr(cfg, f.name) for f in fields(cls)})


@dataclass
class ModelInfo:
    model: str
    backend: str
    device: str
    dtype: str                  # the resolved dtype (never "auto")
    quantization: str
    total_params: int
    vocab_size: int
    eos_token_ids: list = field(default_factory=list)
    dtype_reason: str = ""      # why that dtype (backends/dtypes.py)
    device_kind: str = "cpu"    # cpu | cuda | mps | metal | gpu: what `dtype: auto` and `packing: auto` go by
    packing_supported: bool = True   # rows of this model can be packed exactly on this backend
    config: dict = field(default_factory=dict)   # the model's config.json (FLOPs per token, memory estimate)


@dataclass
class ParamStats:
    total: int
    trainable: int

    @property
    def trainable_percent(self) -> float:
        return 100.0 * self.trainable / max(self.total, 1)


@dataclass
class MemoryStats:
    active_bytes: int = 0
    peak_bytes: int = 0


CE_CHUNK_BYTES = 256 * 2 ** 20   # float32 logits held at once by a backend's cross-entropy
# torch's: its cross-entropy holds ~4 chunk-sized float32 tensors at once in backward (the logits,
# their log-softmax, its gradient, the 16-bit head output's); 64 MiB cut the mid shape's step peak
# by 325-400 MiB for one more head matmul per chunk (bench/bench_scale.py --shape mid)
TORCH_CE_CHUNK_BYTES = 64 * 2 ** 20


def ce_chunk_rows(vocab: int, chunk_bytes: int = CE_CHUNK_BYTES) -> int:
    """Supervised positions per cross-entropy chunk: their float32 logits stay under `chunk_bytes`."""
    return max(64, chunk_bytes // (4 * max(int(vocab), 1)))


class TrainingBackend(ABC):
    """What training needs (the loop, checkpoints, fuse, evaluation's loss): the methods here always
    run on the training run's own adapter (or, without a run, on the model as loaded, with
    `load_adapter`'s adapter). A chat's adapter is selected only inside a serving call
    (`ServingBackend`), never between calls, so no method here has to select anything first."""
    name: str = "base"
    supports_added_tokens: bool = False   # resize_token_embeddings works (the loop asks before calling it)

    @property
    @abstractmethod
    def tokenizer(self):
        """A Hugging Face tokenizer (PreTrainedTokenizer[Fast]) for the loaded model."""

    @property
    def warnings(self) -> list[str]:
        """Set-up warnings a person should see (e.g. MLX on a reference BLAS); none by default."""
        return []

    @abstractmethod
    def load(self, spec: ModelSpec) -> ModelInfo:
        """Load the base model and tokenizer described by `spec` (quantized if it asks)."""

    def resize_token_embeddings(self, vocab_size: int, token_ids: Optional[list] = None,
                                end_of_turn: Optional[str] = None, chat_template: Optional[str] = None) -> int:
        """Grow the vocabulary to `vocab_size` for the chat special tokens `token_ids` the data
        pipeline added (before add_adapter); their rows are trained and saved with the adapter.
        `end_of_turn` also stops generation; `chat_template` is saved with the adapter's tokenizer.
        Returns the new vocabulary size. Only where `supports_added_tokens`."""
        raise NotImplementedError(f"the {self.name} backend cannot add tokens to a model's vocabulary")

    @abstractmethod
    def add_adapter(self, cfg: TrainConfig) -> ParamStats:
        """Add the adapter `cfg` asks for (LoRA/DoRA, or unfreeze for full) and build the optimizer."""

    @abstractmethod
    def forward_backward(self, batch: Batch) -> tuple[float, int]: ...

    @abstractmethod
    def optimizer_step(self, lr: float, grad_scale: float, max_grad_norm: float) -> float: ...

    @abstractmethod
    def eval_loss(self, batch: Batch, adapter: Optional[str] = None) -> tuple[float, int]:
        """Summed loss without gradients. `adapter` (evaluation of an attached adapter; "" the bare
        base) is selected for this call only, as `ServingBackend.generate` does; None: training's."""

    def sequence_logps(self, batch: Batch, reference: bool = False):
        """Per row of `batch`, the summed log-probs of its supervised targets (numpy float64 [rows]),
        without gradients; `reference`: of the base with the adapter switched off."""
        raise NotImplementedError(f"the {self.name} backend has no per-sequence log-probs")

    def forward_backward_sequences(self, batch: Batch, loss_fn: Callable):
        """The per-row log-probs with the training adapter on; `loss_fn(logps)` returns (value,
        d value / d logps, extra); the gradient of value is added to the accumulated gradients
        (optimizer_step scales and applies it). Returns (value, extra)."""
        raise NotImplementedError(f"the {self.name} backend has no per-sequence log-probs")

    @abstractmethod
    def save_checkpoint(self, path: Path) -> None: ...

    @abstractmethod
    def load_checkpoint(self, path: Path) -> None: ...

    @abstractmethod
    def save_adapter(self, path: Path) -> None: ...

    @abstractmethod
    def load_adapter(self, path: Path) -> None:
        """Apply a saved adapter (either layout) to the loaded base for inference."""

    @abstractmethod
    def memory(self) -> MemoryStats: ...

    @abstractmethod
    def peak_flops(self) -> float:
        """The device's matmul FLOP/s in the loaded model's dtype: measured once per device and
        dtype, then cached (backends/peak.py); the denominator of MFU."""

    def fuse(self, adapter_path: Path, out_dir: Path, dequantize: bool = False) -> None:
        """Merge the adapter at `adapter_path` (either layout, or a full fine-tune) into the loaded
        base and write a standalone Hugging Face model to the existing folder `out_dir`, in the
        checkpoint's float dtype (load the base with dtype float32: the merge happens there). A
        quantized base raises FuseError unless `dequantize` (then the output is float)."""
        raise NotImplementedError(f"the {self.name} backend cannot fuse adapters")


class ServingBackend(ABC):
    """What serving adapters needs (chat, evaluation): several adapters attached by name to one
    loaded base (one copy of its weights), and generation with one of them.

    An adapter is selected only for the duration of a serving call: `generate(..., adapter=name)`
    selects it each time the generator is resumed and, before it yields, selects what training uses
    again (the run's own adapter, TRAINING), so a training step between two chunks of a reply sees
    exactly its own model. A backend implements `_select(name)` (None: the bare base, TRAINING: the
    run's own adapter), `_training()` and `_generate`. Not abstract: a backend (or a test fake) that
    does not serve chat need not have them."""

    def generate(self, prompt_ids: list[int], sampling: Sampling, should_stop: Callable[[], bool] = lambda: False,
                 adapter: Optional[str] = None) -> Iterator[GenerationChunk]:
        """Stream a reply to `prompt_ids`. `adapter`: an attached adapter's name, "" the bare base,
        None the backend's own model (the training run's adapter, or the model as loaded)."""
        target = self._target(adapter)
        with self._selected(target):
            gen = self._generate(list(prompt_ids), sampling, should_stop, target)
        return _scoped(gen, lambda: self._selected(target))

    def decoder(self, adapter: Optional[str] = None) -> BatchDecoder:
        """A batch decoder whose steps use `adapter` (as generate's): the adapter is selected
        around each call, so a training step between two steps sees exactly its own model."""
        target = self._target(adapter)
        with self._selected(target):
            return _ScopedDecoder(self._decoder(target), lambda: self._selected(target))

    def _decoder(self, key: Optional[str]) -> BatchDecoder:
        raise NotImplementedError(f"the {self.name} backend does not decode in batches")

    def attach_adapter(self, name: str, path: Path) -> int:
        """Load the adapter at `path` as `name` beside the others, sharing the one base; return its
        bytes. Adapters that change the base (own_base.changes_base) go through load_adapter
        on a base of their own instead."""
        raise NotImplementedError(f"the {self.name} backend holds one adapter at a time")

    def detach_adapter(self, name: str) -> None:
        raise NotImplementedError(f"the {self.name} backend holds one adapter at a time")

    def check_serves(self, adapter: Optional[str]) -> None:
        """Raise if `generate(..., adapter=adapter)` cannot run here (CannotShare: e.g. the bare
        base of a DoRA run; ValueError: not attached)."""
        if adapter:
            raise ValueError(f"adapter {adapter!r} is not attached to this model")

    def weight_bytes(self) -> tuple[int, dict]:
        """(bytes of the base's weights and buffers, {attached adapter name: bytes})."""
        return 0, {}

    def can_share_base(self) -> bool:
        """True while a LoRA/DoRA run trains on the checkpoint's own weights: chat may attach
        adapters to this model and generate with them between training steps (`attach_adapter`
        raises CannotShare for an adapter it cannot serve); the run's math is untouched."""
        return False

    # ---- the selection, private to the backends ------------------------------------------------
    def _training(self) -> bool:
        """A training run owns this model: between serving calls its adapter is selected."""
        return False

    def _select(self, name: Optional[str]) -> None:
        """Make `name` the adapter the next forward passes use (None: the bare base; TRAINING: the
        run's own). Only `_selected` calls it."""
        if name not in (None, TRAINING):
            raise NotImplementedError(f"the {self.name} backend holds one adapter at a time")

    def _generate(self, prompt_ids: list[int], sampling: Sampling, should_stop: Callable[[], bool],
                  key: Optional[str]) -> Iterator[GenerationChunk]:
        """The reply with the adapter `key` already selected (its prompt cache is kept under `key`)."""
        raise NotImplementedError(f"the {self.name} backend does not generate")

    def using(self, adapter: Optional[str]):
        """A context in which the model (`self.model`) is the one `generate(..., adapter=adapter)`
        would use: for reading it directly (tests, logits); training's adapter again after it."""
        return self._selected(self._target(adapter))

    def _target(self, adapter: Optional[str]) -> Optional[str]:
        if adapter is None:
            return TRAINING if self._training() else None
        return adapter or None

    @contextmanager
    def _selected(self, target: Optional[str]):
        """`target` selected for the body; after it, the training run's adapter again."""
        try:
            self._select(target)
            yield
        finally:
            if self._training():
                self._select(TRAINING)


def _scoped(gen: Iterator, scope: Callable) -> Iterator:
    """`gen`, resumed (and closed) only inside `scope()`: the adapter is selected while a chunk is
    made, not while the caller holds the generator between chunks."""
    done = False
    try:
        while True:
            with scope():
                try:
                    chunk = next(gen)
                except StopIteration:
                    done = True
                    return
            yield chunk
    finally:
        if not done:
            with scope():
                gen.close()


class _ScopedDecoder(BatchDecoder):
    """A backend's batch decoder, each call inside `scope()` (its adapter selected)."""

    def __init__(self, inner: BatchDecoder, scope: Callable):
        self.inner, self.scope = inner, scope

    def add(self, prompt_ids, sampling):
        with self.scope():
            return self.inner.add(list(prompt_ids), sampling)

    def remove(self, uid):
        with self.scope():
            return self.inner.remove(uid)

    def step(self):
        with self.scope():
            return self.inner.step()

    def __len__(self):
        return len(self.inner)

    def close(self):
        with self.scope():
            self.inner.close()


class Backend(TrainingBackend, ServingBackend):
    """A backend serves both: `tunerd.backends.registry.get_backend(name)` builds one."""


def adapter_spec(cfg: TrainConfig, kind: str) -> AdapterSpec:
    """The adapter_layout.AdapterSpec of an adapter trained with `cfg` (both backends save it)."""
    return AdapterSpec(kind=kind, r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
                       use_rslora=cfg.use_rslora, num_layers=cfg.num_layers, base_model=cfg.model)
