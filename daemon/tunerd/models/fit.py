"""Does it fit in the device's free memory? The one check, before any slow work: a job at submit
(Core.submit) and a model before it is loaded to serve (models/registry.py). A refusal is a
MemoryError (RESOURCE_EXHAUSTED) saying how much is needed and how much is free; a job's also
names the settings that would fit. How much a run needs is training/memory.py's estimate.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional

from .. import host, quantization as quant
from ..backends.dtypes import checkpoint_dtype, resolve_dtype
from ..config.schema import TrainConfig
from ..model_config import read_model_config
from ..training.memory import GIB, DoesNotFit, MemoryEstimate, advise, estimate, oom_message


def check_fits(model: str, backend: str, quantization: str = "none", job: Optional[TrainConfig] = None,
               available: Optional[int] = None) -> None:
    """Refuse what cannot fit the free memory of the device `backend` would use (host.training_device),
    or `available` bytes when given:
    - with `job` (its TrainConfig, `model` its model): the worst batch the config can make, from
      the model's config.json (a local model, or one in the hub cache; others are checked by the
      loop once downloaded);
    - without: loading `model` to serve it, its weights' files (a local folder; a hub model is
      checked once fetched)."""
    if job is not None:
        model_config = read_model_config(model, job.revision)
        if model_config is None:
            return
        kind, free = host.training_device(backend)
        dtype, _ = resolve_dtype(job.dtype, kind, checkpoint_dtype(model_config))   # CPU auto: float32, the larger
        check_batch_fits(model_config, job, backend, kind, free if available is None else available, dtype)
        return
    path = Path(model).expanduser()
    if not path.is_dir():
        return
    size = sum(f.stat().st_size for f in path.glob("*.safetensors"))
    if quant.bits(quantization) == 4:
        size //= 3   # a 16-bit checkpoint quantized to 4 bits (+ scales) needs ~1/3..1/4
    avail = host.training_device(backend)[1] if available is None else available
    if size > 0.9 * avail:
        raise MemoryError(f"{model} needs about {size / GIB:.1f} GiB for its weights but only "
                          f"{avail / GIB:.1f} GiB is free")


def check_batch_fits(model_config: dict, cfg, backend: str, device_kind: str, available: int,
                     dtype: str) -> MemoryEstimate:
    """Raise DoesNotFit, naming the settings that would fit, when the worst batch the config can
    make (`per_device_train_batch_size` rows of `max_seq_length` tokens) needs more than `available`."""
    est = estimate(model_config, cfg, backend, cfg.max_seq_length, dtype, device_kind=device_kind)
    if est.to_allocate > available:   # the framework is imported already
        options = advise(model_config, cfg, backend, cfg.max_seq_length, available, dtype, device_kind)
        raise DoesNotFit(oom_message(
            f"this job will not fit: a batch of {cfg.per_device_train_batch_size} x {cfg.max_seq_length} tokens "
            f"on {backend} ({device_kind}, {dtype}) needs about {est.to_allocate / GIB:.1f} GiB and "
            f"{available / GIB:.1f} GiB is free", est, options))
    return est
