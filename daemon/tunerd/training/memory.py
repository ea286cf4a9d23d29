"""Peak training memory, estimated before a model is loaded, and advice when it will not fit.

`estimate(model_config, cfg, backend, seq_len)` adds up, from config.json alone:
- weights: every parameter in the resolved dtype; quantized linear layers at their packed size
  (bitsandbytes nf4 + double quant ~0.51 B/param, leaving embeddings and the head in 16 bits; MLX
  affine 4-bit: 0.5 B + a scale and bias per group, embeddings and head included);
- adapter + gradients + AdamW state for the trainable parameters (LoRA in float32, or in the compute
  dtype for torch QLoRA under bfloat16, as the backends keep them; full fine-tuning in the dtype);
- activations saved for the backward pass, per token and layer (the norms, q/k/v/o, the gated MLP,
  the float32 copies a LoRA layer makes of a 16-bit input, and on MLX the attention scores), or
  one layer's worth plus each layer's input with gradient checkpointing;
- the loss: float32 logits of the supervised positions only; on torch at most one chunk at a time
  (TORCH_CE_CHUNK_BYTES); on MLX all of them: its chunks (backends/base.ce_chunk_rows) are
  evaluated in one graph, so their backward pass holds every chunk at once (measured: 32k vocab,
  8 x 512 rows all supervised, 2,991 MiB peak against 1,548 estimated with the chunk as the bound);
- torch on a CPU: the framework, since what the backend reports there (and the user sees in `Step`)
  is the process's peak RSS: the imports (torch, transformers, peft: ~400 MiB) and the kernels
  and workspaces the first step initialises.
`seq_len` is the longest batch: `max_seq_length` at submit (the worst batch the data could make),
the real longest batch once the data is tokenized. What it leaves out: the framework itself
on CUDA/MPS/MLX (their allocators' peaks do not count it) and allocator slack; its constants were
checked against measured peaks of the scale benchmark's mid shape and of the real SmolLM2-135M
(tests/test_memory_estimate.py, bench/bench_torch.py --real).

`advise(...)` lists the changes that would fit (smaller batch, gradient checkpointing, 4-bit,
shorter max_seq_length) for a RESOURCE_EXHAUSTED at submit and for an OOM that still happens.
"""
from __future__ import annotations

import dataclasses
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable, Optional

from .. import quantization
from ..backends.base import CE_CHUNK_BYTES, TORCH_CE_CHUNK_BYTES, ce_chunk_rows

BYTES = {"float32": 4, "float16": 2, "bfloat16": 2}
LINEAR_NAMES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
GIB = 2 ** 30
# Each trainable parameter is held 4 times, all in the adapter's dtype: the weight, its gradient and
# AdamW's two moments (exp_avg, exp_avg_sq); so 16 bytes a parameter for a float32 LoRA. AdamW is the
# default and the largest of the optimizers we map: SGD with momentum and Lion keep one moment,
# Adafactor a factored one and the 8-bit optimizers quantized ones, so for them this is an upper bound.
COPIES_PER_TRAINABLE = 4
# torch on a CPU: kernels and workspaces initialised by the first training step, seen as RSS growth
# (measured 0.25-0.35 GiB on the scale benchmark's mid shape, fp32 and bf16)
TORCH_CPU_WORKSPACE = 256 * 2 ** 20
# torch on a CPU: the process's RSS after importing torch, transformers and peft (measured 398 MiB,
# torch 2.13, transformers 5.23, peft 0.21), which its peak RSS includes
TORCH_CPU_FRAMEWORK = 400 * 2 ** 20


class DoesNotFit(MemoryError):
    """A run that needs more memory than the device has: the message carries the estimate and the
    settings that would fit (RESOURCE_EXHAUSTED at submit; the job's failure reason after an OOM)."""


@dataclass
class Shape:
    d: int
    ff: int
    layers: int
    heads: int
    kv_dim: int
    vocab: int
    tied: bool

    @classmethod
    def known(cls, c: dict) -> bool:
        try:
            cls.of(c)
            return True
        except (TypeError, ValueError, ZeroDivisionError):
            return False

    @classmethod
    def of(cls, c: dict) -> "Shape":
        c = c.get("text_config", c)
        d = int(c.get("hidden_size") or c.get("n_embd"))
        heads = int(c.get("num_attention_heads") or c.get("n_head"))
        head_dim = int(c.get("head_dim") or d // heads)
        return cls(d=d, ff=int(c.get("intermediate_size") or c.get("n_inner") or 4 * d),
                   layers=int(c.get("num_hidden_layers") or c.get("n_layer")), heads=heads,
                   kv_dim=int(c.get("num_key_value_heads") or heads) * head_dim,
                   vocab=int(c.get("vocab_size")), tied=bool(c.get("tie_word_embeddings", False)))

    def linear_shapes(self) -> dict:
        """(in, out) of each linear layer of one block."""
        d, f, kv = self.d, self.ff, self.kv_dim
        return {"q_proj": (d, d), "k_proj": (d, kv), "v_proj": (d, kv), "o_proj": (d, d),
                "gate_proj": (d, f), "up_proj": (d, f), "down_proj": (f, d)}


@dataclass
class MemoryEstimate:
    weights: int
    adapter_and_optimizer: int
    activations: int
    logits: int
    framework: int = 0        # torch on a CPU: the imports, counted in its RSS

    @property
    def total(self) -> int:
        return self.weights + self.adapter_and_optimizer + self.activations + self.logits + self.framework

    @property
    def to_allocate(self) -> int:
        """What the run adds to a process that has imported the framework already (the daemon's):
        what must fit in the free memory."""
        return self.total - self.framework

    def describe(self) -> str:
        return (f"{self.total / GIB:.1f} GiB (weights {self.weights / GIB:.2f}, adapter+optimizer "
                f"{self.adapter_and_optimizer / GIB:.2f}, activations {self.activations / GIB:.2f}, "
                f"loss {self.logits / GIB:.2f}" + (f", framework {self.framework / GIB:.2f}" if self.framework else "")
                + ")")


def _targets(cfg, shape: Shape) -> list[str]:
    t = cfg.lora_target_modules
    if t == "all-linear":
        return list(shape.linear_shapes())
    names = [t] if isinstance(t, str) else list(t)
    return [n for n in shape.linear_shapes() if any(n == x or x.endswith("." + n) or n.endswith(x) for x in names)]


def sequences_per_row(cfg) -> int:
    """Sequences one data row becomes in a batch (a preference pair: its two answers)."""
    from ..tasks import TASKS
    task = TASKS.get(getattr(cfg, "task", "sft"))
    return task.sequences_per_row if task else 1


def estimate(model_config: dict, cfg, backend: str, seq_len: int, dtype: Optional[str] = None,
             batch_size: Optional[int] = None, supervised_fraction: float = 0.5,
             device_kind: str = "cpu") -> MemoryEstimate:
    """Peak bytes of training `cfg` on `backend` ('mlx' | 'torch') on `device_kind` with batches of
    `batch_size` (default: the config's) rows of `seq_len` tokens; `dtype` is the resolved one."""
    s = Shape.of(model_config)
    b = BYTES.get(dtype or cfg.dtype, 4)
    bits = quantization.bits(cfg.quantization)
    rows = batch_size or cfg.per_device_train_batch_size * sequences_per_row(cfg)
    tokens = rows * seq_len
    block = sum(i * o for i, o in s.linear_shapes().values())
    embed = s.vocab * s.d * (1 if s.tied else 2)
    # -- weights
    if bits and backend == "mlx":
        g = max(int(cfg.group_size), 1)
        weights = (block * s.layers + embed) * (bits / 8 + 2 * b / g)
    elif bits:
        weights = block * s.layers * (bits / 8 + (0.01 if bits == 4 else 0.03)) + embed * b
    else:
        weights = (block * s.layers + embed) * b
    # -- adapter, gradients, optimizer
    full = cfg.full_finetune
    if full:
        trainable, pb = block * s.layers + embed, b
    else:
        n = s.layers if cfg.num_layers is None or cfg.num_layers < 0 else min(cfg.num_layers, s.layers)
        shapes = s.linear_shapes()
        trainable = n * sum(cfg.lora_r * (shapes[t][0] + shapes[t][1]) for t in _targets(cfg, s))
        pb = 2 if bits and backend == "torch" and b == 2 else 4
    adapter = trainable * pb * COPIES_PER_TRAINABLE
    # -- activations saved for backward, per token and layer
    lora_copies = 0
    if not full and pb == 4 and b == 2:          # a 16-bit input cast to float32 for each LoRA layer
        lora_copies = 4 * sum(s.linear_shapes()[t][0] for t in _targets(cfg, s))
    # attention probabilities kept for backward: MLX's (float32) and torch's CPU SDPA (in the dtype)
    # hold [heads, T] per token; CUDA's flash / memory-efficient kernels keep only a log-sum-exp
    attention = (s.heads * seq_len * 4 if backend == "mlx" else
                 s.heads * seq_len * b if device_kind == "cpu" else 0)
    per_layer = b * (10 * s.d + 4 * s.ff + 2 * s.kv_dim) + lora_copies + attention
    if cfg.gradient_checkpointing:
        activations = tokens * (s.layers * s.d * b + per_layer)
    else:
        activations = tokens * s.layers * per_layer
    activations += tokens * 2 * s.ff * b            # the largest transient of a layer's backward
    # -- the loss over supervised positions (chunked float32 logits)
    supervised = max(1, int(tokens * supervised_fraction))
    if backend == "torch":
        logits = min(supervised, ce_chunk_rows(s.vocab, TORCH_CE_CHUNK_BYTES)) * s.vocab * (b + 12)
    else:   # every chunk at once (see above); ~4 bytes more per logit once there are several
        several = supervised > ce_chunk_rows(s.vocab, CE_CHUNK_BYTES)
        logits = supervised * s.vocab * (b + (16 if several else 12))
    logits += supervised * s.d * 4
    framework = 0
    if backend == "torch" and device_kind == "cpu":
        activations += TORCH_CPU_WORKSPACE
        framework = TORCH_CPU_FRAMEWORK
    return MemoryEstimate(weights=int(weights), adapter_and_optimizer=int(adapter),
                          activations=int(activations), logits=int(logits), framework=framework)


def advise(model_config: dict, cfg, backend: str, seq_len: int, available: int, dtype: Optional[str] = None,
           device_kind: str = "cpu") -> list[str]:
    """Changes to `cfg` under which the estimate fits in `available` bytes, as config settings."""
    options = []
    if cfg.per_device_train_batch_size > 1:
        for bs in (cfg.per_device_train_batch_size // 2, cfg.per_device_train_batch_size // 4, 1):
            if bs >= 1 and estimate(model_config, cfg, backend, seq_len, dtype, batch_size=bs, device_kind=device_kind).to_allocate <= available:
                acc = cfg.gradient_accumulation_steps * cfg.per_device_train_batch_size // bs
                options.append(f"per_device_train_batch_size: {bs} with gradient_accumulation_steps: {acc} "
                               f"(same effective batch)")
                break
    trials = [("gradient_checkpointing: true", dict(gradient_checkpointing=True))]
    if not quantization.bits(cfg.quantization) and not cfg.full_finetune:
        trials.append(("quantization: 4bit (QLoRA)", dict(quantization="4bit")))
    for text, change in trials:
        if estimate(model_config, dataclasses.replace(cfg, **change), backend, seq_len, dtype, device_kind=device_kind).to_allocate <= available:
            options.append(text)
    for n in (seq_len // 2, seq_len // 4):
        if n >= 64 and estimate(model_config, cfg, backend, n, dtype, device_kind=device_kind).to_allocate <= available:
            options.append(f"max_seq_length: {n}")
            break
    return options


def oom_message(cause: str, est: Optional[MemoryEstimate], options: list[str]) -> str:
    text = cause
    if est is not None:
        text += f" [estimate: {est.describe()}]"
    if options:
        text += "; it would fit with " + ", or ".join(options)
    else:
        text += "; unload other models (`tunerctl models unload`), or use a smaller model"
    return text


@contextmanager
def explain_oom(describe: Callable[[str], str]):
    """Turn an allocator's out-of-memory error inside the block into DoesNotFit(describe(error))."""
    try:
        yield
    except DoesNotFit:
        raise
    except Exception as e:  # noqa: BLE001 - only OOMs are translated
        if is_oom(e):
            raise DoesNotFit(describe(str(e) or type(e).__name__)) from e
        raise


def is_oom(e: BaseException) -> bool:
    """An allocator's out-of-memory error from any backend (torch CUDA/MPS, MLX Metal/CUDA, malloc)."""
    if isinstance(e, MemoryError) or type(e).__name__ == "OutOfMemoryError":
        return True
    text = str(e).lower()
    return isinstance(e, RuntimeError) and any(k in text for k in (
        "out of memory", "insufficient memory", "failed to allocate", "[metal::malloc]", "cudaerrormemoryallocation"))
