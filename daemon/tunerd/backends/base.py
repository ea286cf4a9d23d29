"""The backend interface: everything that touches a model lives behind it.

The training loop, chat, the model registry, evaluation and fuse drive a `Backend` and never import
mlx or torch. A backend is built by name with `tunerd.backends.registry.get_backend`.

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
    eval_loss(batch) -> (loss_sum, n)           no gradients
    save_checkpoint(dir) / load_checkpoint(dir) adapter + optimizer state + backend RNG
    save_adapter(dir)                           final adapter: native layout AND PEFT layout
    load_adapter(dir)                           apply a saved adapter (either layout) for inference
    generate(prompt_ids, sampling, should_stop) -> iterator[GenerationChunk]
    memory() -> MemoryStats                     the device's (process-wide) active and peak bytes
    peak_flops() -> float                       measured matmul FLOP/s of the device in the model's dtype
    fuse(adapter_dir, out_dir, dequantize=False)
                                                merge an adapter into the loaded base and write a
                                                standalone Hugging Face model dir (export/fuse.py)
  For chat, several adapters on one loaded base (one copy of its weights):
    attach_adapter(name, path) -> bytes         load a saved adapter beside the others (PEFT named
                                                adapters on torch; named weight sets on mlx)
    use_adapter(name | None)                    the adapter the next forward passes use (None: the base)
    detach_adapter(name)
    weight_bytes() -> (base, {name: bytes})     bytes of this model's own weights and of each adapter
    can_share_base() -> bool                    a training run lends its base to chat (attach/use
                                                beside its trainable adapter, TRAINING; default False)
Losses are sums over supervised target tokens so that the loop can normalise across gradient
accumulation by the total supervised token count (transformers #34191).
A backend instance is owned by one thread (MLX streams are thread-local, DESIGN.md §6).
"""
from __future__ import annotations

import math
import time
from abc import ABC, abstractmethod
from contextlib import contextmanager
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Callable, Iterator, Optional

from ..config.schema import TrainConfig
from ..data.batch import Batch
from .adapter_layout import AdapterSpec


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


@dataclass
class Sampling:
    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 0
    min_p: float = 0.0
    repetition_penalty: float = 1.0
    seed: Optional[int] = None
    max_tokens: int = 256
    stop: list = field(default_factory=list)

    def check(self) -> "Sampling":
        """The allowed ranges, one place for gRPC and HTTP: a ValueError naming the field."""
        def bad(name: str, allowed: str) -> ValueError:
            return ValueError(f"{name}: must be {allowed}, got {getattr(self, name)!r}")

        if not math.isfinite(self.temperature) or self.temperature < 0:
            raise bad("temperature", "a finite number >= 0")
        if not 0 < self.top_p <= 1:
            raise bad("top_p", "in (0, 1]")
        if self.top_k < 0:
            raise bad("top_k", "an integer >= 0")
        if not 0 <= self.min_p <= 1:
            raise bad("min_p", "in [0, 1]")
        if not math.isfinite(self.repetition_penalty) or self.repetition_penalty <= 0:
            raise bad("repetition_penalty", "a finite number > 0")
        if self.seed is not None and not -2 ** 63 <= self.seed < 2 ** 63:
            raise bad("seed", "a signed 64-bit integer")
        if self.max_tokens < 0:
            raise bad("max_tokens", "an integer >= 0")
        if not all(isinstance(x, str) for x in self.stop):
            raise ValueError(f"stop: must be a string or a list of strings, got {self.stop!r}")
        return self


@dataclass
class GenerationChunk:
    """One new token's text (maybe empty while held back), or with token_id -1 and no
    finish_reason: a chunk of a long prompt was read (the caller may let others use the device)."""
    text: str
    token_id: int
    finish_reason: Optional[str] = None  # "stop" | "length" | "cancelled" on the last chunk


CE_CHUNK_BYTES = 256 * 2 ** 20   # float32 logits held at once by a backend's cross-entropy


def ce_chunk_rows(vocab: int, chunk_bytes: int = CE_CHUNK_BYTES) -> int:
    """Supervised positions per cross-entropy chunk: their float32 logits stay under `chunk_bytes`."""
    return max(64, chunk_bytes // (4 * max(int(vocab), 1)))


PREFILL_SECONDS = 0.1   # each chunk of a long prompt takes about this long (half a chat slice of 0.2 s)
PREFILL_FIRST = 32      # tokens in the first chunk, before any time per token is known
PREFILL_MIN, PREFILL_MAX = 16, 4096   # bounds on a chunk, however fast or slow the model is


class PrefillPlan:
    """A long prompt read in chunks sized by time, not a fixed count (issue 16, finding 5): the
    first is small; each next one is sized from the time per token the last one took so it takes
    about PREFILL_SECONDS (within PREFILL_MIN..PREFILL_MAX), so a long-context model does not hold
    the device for seconds per chunk and a small one is not read in needlessly many. The device can
    be yielded between chunks; the tokens produced are those of an unchunked read.

        plan = PrefillPlan(len(ids))
        while (n := plan.next()):
            with plan.timed(n):
                model(ids[plan.pos - n: plan.pos])   # read (and wait for) the chunk
    """

    def __init__(self, total: int, seconds: Optional[float] = None):
        self.total, self.pos = total, 0
        self.seconds = PREFILL_SECONDS if seconds is None else seconds
        self.per_token: Optional[float] = None
        self.sizes: list[int] = []

    def size(self) -> int:
        """Tokens in the next chunk (0: the prompt is read)."""
        left = self.total - self.pos
        if left <= 0:
            return 0
        if self.per_token is None:
            want = PREFILL_FIRST
        else:
            want = int(self.seconds / max(self.per_token, 1e-9))
        return min(left, max(PREFILL_MIN, min(PREFILL_MAX, want)))

    def next(self) -> int:
        """The next chunk's size, the position moved past it."""
        n = self.size()
        self.pos += n
        if n:
            self.sizes.append(n)
        return n

    def took(self, n: int, seconds: float) -> None:
        """The last chunk of n tokens took this long (attention grows with the position: the
        latest chunk is the best guess for the next)."""
        if n > 0:
            self.per_token = max(seconds, 0.0) / n

    @contextmanager
    def timed(self, n: int):
        t0 = time.perf_counter()
        yield
        self.took(n, time.perf_counter() - t0)


class ReplyText:
    """The text of one streamed reply, written once for both backends: `update(text so far)` gives
    the part that is safe to send (a possible start of a stop string and an incomplete UTF-8
    character, U+FFFD until its next bytes come, are held back) and whether a stop string ended the
    reply (the text before the first one found is sent); `rest()` is what is left when the reply
    ends otherwise (eos, max_tokens, cancel), without a character cut off at its end."""

    def __init__(self, stops: list[str]):
        self.stops = [x for x in stops if x]
        self.text, self.sent = "", 0

    def update(self, text: str) -> tuple[str, bool]:
        self.text = text
        hits = [j for j in (text.find(x, max(0, self.sent - len(x))) for x in self.stops) if j >= 0]
        if hits:
            return self._upto(min(hits)), True
        safe = len(text) - partial_stop_len(text, self.stops)
        while safe > self.sent and text[safe - 1] == "\ufffd":
            safe -= 1
        return self._upto(safe), False

    def rest(self) -> str:
        return self._upto(len(self.text) - self.text.endswith("\ufffd"))

    def _upto(self, end: int) -> str:
        out = self.text[self.sent:end]
        self.sent = max(self.sent, end)
        return out


def partial_stop_len(text: str, stops: list[str]) -> int:
    """Length of the longest suffix of `text` that is a proper prefix of a stop string: the
    part of a streamed reply both backends hold back until it is known not to start a stop."""
    best = 0
    for stop in stops:
        for n in range(min(len(stop) - 1, len(text)), best, -1):
            if text.endswith(stop[:n]):
                best = n
                break
    return best


class PromptCache:
    """The KV caches of recent replies, one per adapter, reused by the next request whose prompt
    starts with the same tokens (the next turn of a conversation re-sends the whole history): only
    the new tokens are read. A cache is taken out while a reply uses it and put back after, so two
    chats never share one. The backend gives `length(cache)` and `trim(cache, n)` (drop the last n
    tokens; None when the cache cannot be trimmed, e.g. a sliding window)."""

    def __init__(self, length: Callable, trim: Callable, slots: int = 4):
        self._length, self._trim, self._slots = length, trim, slots
        self._kept: dict = {}   # adapter name -> (tokens in the cache, cache)

    def take(self, key, prompt: list[int]):
        """(a cache holding prompt[:n], n) with n < len(prompt), or (None, 0)."""
        kept = self._kept.pop(key, None)
        if kept is None:
            return None, 0
        tokens, cache = kept
        n = 0
        for a, b in zip(tokens, prompt):
            if a != b:
                break
            n += 1
        n = min(n, len(prompt) - 1)   # at least one token to read: it gives the first logits
        if n <= 0 or self._trim(cache, len(tokens) - n) is None:
            return None, 0
        return cache, n

    def put(self, key, tokens: list[int], cache) -> None:
        """Keep `cache`, which holds the first `length(cache)` of `tokens`."""
        n = self._length(cache)
        if n <= 0 or n > len(tokens):
            return
        self._kept.pop(key, None)
        self._kept[key] = (list(tokens[:n]), cache)
        while len(self._kept) > self._slots:
            self._kept.pop(next(iter(self._kept)))

    def clear(self) -> None:
        self._kept.clear()


class Backend(ABC):
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
    def eval_loss(self, batch: Batch) -> tuple[float, int]: ...

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
    def generate(self, prompt_ids: list[int], sampling: Sampling,
                 should_stop: Callable[[], bool] = lambda: False) -> Iterator[GenerationChunk]: ...

    @abstractmethod
    def memory(self) -> MemoryStats: ...

    @abstractmethod
    def peak_flops(self) -> float:
        """The device's matmul FLOP/s in the loaded model's dtype: measured once per device and
        dtype, then cached (training/flops.py); the denominator of MFU."""

    def fuse(self, adapter_path: Path, out_dir: Path, dequantize: bool = False) -> None:
        """Merge the adapter at `adapter_path` (either layout, or a full fine-tune) into the loaded
        base and write a standalone Hugging Face model to the existing folder `out_dir`, in the
        checkpoint's float dtype (load the base with dtype float32: the merge happens there). A
        quantized base raises FuseError unless `dequantize` (then the output is float)."""
        raise NotImplementedError(f"the {self.name} backend cannot fuse adapters")

    # Several adapters on one base, for chat. Not abstract: a backend (or a test fake) that does
    # not serve chat need not have them.
    def attach_adapter(self, name: str, path: Path) -> int:
        """Load the adapter at `path` as `name` beside the others, sharing the one base; make it
        active; return its bytes. Adapters that change the base (adapter_layout.changes_base) go
        through load_adapter on a base of their own instead."""
        raise NotImplementedError(f"the {self.name} backend holds one adapter at a time")

    def use_adapter(self, name: Optional[str]) -> None:
        """Select an attached adapter for the next forward passes (None or "": the bare base)."""
        if name:
            raise NotImplementedError(f"the {self.name} backend holds one adapter at a time")

    def detach_adapter(self, name: str) -> None:
        raise NotImplementedError(f"the {self.name} backend holds one adapter at a time")

    def weight_bytes(self) -> tuple[int, dict]:
        """(bytes of the base's weights and buffers, {attached adapter name: bytes})."""
        return 0, {}

    def can_share_base(self) -> bool:
        """True while a LoRA/DoRA run trains on the checkpoint's own weights: chat may attach
        adapters to this model and use them between training steps (`attach_adapter`/`use_adapter`
        raise CannotShare for a request it cannot serve); every training method selects the run's
        own adapter (TRAINING) again first, so the run's math is untouched."""
        return False

def adapter_spec(cfg: TrainConfig, kind: str) -> AdapterSpec:
    """The adapter_layout.AdapterSpec of an adapter trained with `cfg` (both backends save it)."""
    return AdapterSpec(kind=kind, r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
                       use_rslora=cfg.use_rslora, num_layers=cfg.num_layers, base_model=cfg.model)
