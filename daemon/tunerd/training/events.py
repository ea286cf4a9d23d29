"""Typed training events: what the loop emits, the job store persists and `watch` streams.

Plain dataclasses (no gRPC here); `tunerd.api.convert` turns them into the proto's oneof. A job's
other event, `Download` (fetching a hub model before the loop runs), is the download's own
(models/download.py); the job runner emits it, and `to_record` stores it like these.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Optional


@dataclass
class Started:
    backend: str
    device: str
    model: str
    total_steps: int
    num_epochs: float
    train_rows: int
    eval_rows: int
    total_params: int
    trainable_params: int
    trainable_percent: float
    estimated_peak_memory_bytes: int = 0
    output_dir: str = ""
    resumed_from_step: int = 0
    dtype: str = ""               # the resolved dtype, and why (dtype: auto)
    dtype_reason: str = ""
    packing: bool = False         # the resolved packing, and why (packing: auto)
    packing_reason: str = ""
    peak_tflops: float = 0.0      # the device's measured matmul peak in that dtype (MFU's denominator)
    warnings: list = field(default_factory=list)   # e.g. trust_remote_code: the model's own code runs
    world_size: int = 1           # processes training together (tunerd.distributed)
    global_batch_size: int = 0    # rows per optimizer step: per-device batch x accumulation x world_size
    distributed_backend: str = ""   # ddp | mlx when world_size > 1


@dataclass
class Log:
    level: str   # info | warning
    message: str


@dataclass
class Step:
    step: int
    total_steps: int
    epoch: float
    loss: float
    learning_rate: float
    grad_norm: float
    tokens_per_second: float
    trained_tokens: int
    peak_memory_bytes: int
    eta_seconds: float
    elapsed_seconds: float
    tflops: float = 0.0           # achieved model TFLOP/s over the logging window (training/flops.py)
    mfu: float = 0.0              # tflops / the device's measured peak
    metrics: dict = field(default_factory=dict)   # the task's own (dpo/orpo: rewards/chosen, ...), window means


@dataclass
class Eval:
    step: int
    epoch: float
    eval_loss: float
    perplexity: float
    metrics: dict = field(default_factory=dict)


@dataclass
class CheckpointSaved:
    step: int
    path: str
    is_best: bool = False


@dataclass
class Finished:
    adapter_path: str
    output_dir: str
    steps: int
    final_loss: float
    best_checkpoint: str = ""
    best_metric: Optional[float] = None
    peak_memory_bytes: int = 0
    stopped_early: bool = False


@dataclass
class Failed:
    reason: str
    step: int = 0


@dataclass
class Cancelled:
    step: int
    checkpoint: str = ""


EVENT_TYPES = {cls.__name__: cls for cls in (Started, Log, Step, Eval, CheckpointSaved, Finished, Failed, Cancelled)}


def to_record(event) -> tuple[str, dict]:
    return type(event).__name__, asdict(event)


def from_record(kind: str, payload: dict):
    return EVENT_TYPES[kind](**payload)
