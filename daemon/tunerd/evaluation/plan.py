"""What an Evaluate request means: which config (model, data, max_seq_length), which runs.

    --job ID / --adapter job:ID   the job's resolved config (output_dir/config.json: model, backend,
                                  dtype, data block, max_seq_length, eval batch size) and its adapter;
                                  split: data.test when the job has one, else its validation split
    --config C                    that config's model and data
    --data FILE                   these rows (with the job's/config's format settings when given)
    --retain FILE|general         a retain set next to the rows (default: the job's/config's data.retain)
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Callable, Optional

from ..config.loader import load_config
from ..config.schema import TrainConfig
from ..backends.adapter_base import adapter_base
from .runs import EvalPlan

JobConfig = Callable[[str], tuple[TrainConfig, str, str]]   # job id -> (config, backend, base_dir)


def resolve(job_config: JobConfig, resolve_adapter: Callable[[str], str], *, model: str = "", adapter: str = "",
            backend: str = "", data_path: str = "", config_path: str = "", job_id: str = "",
            adapters: Optional[list] = None, compare_base: bool = False, base_dir: str = "",
            split: str = "", retain: str = "", **plan_kw) -> tuple[EvalPlan, str, str]:
    """-> (plan, model, backend). `job_config(job_id)` reads a job's config (the caller's:
    jobs/job_config.py), `resolve_adapter(ref)` turns an adapter reference into its folder."""
    if not job_id and adapter.startswith("job:"):
        job_id = adapter.split(":", 1)[1]
    cfg, where = None, Path(base_dir) if base_dir else None
    if job_id:
        cfg, job_backend, job_base = job_config(job_id)
        backend = backend or job_backend
        where = Path(job_base) if job_base else where
        adapter = adapter or f"job:{job_id}"
    if config_path:
        path = Path(base_dir or ".", config_path) if not Path(config_path).is_absolute() else Path(config_path)
        cfg = load_config(path)
        where = where or path.resolve().parent   # its data: the request's base dir, as at submit
    model = model or (cfg.model if cfg else "") or adapter_base(resolve_adapter(adapter) if adapter else "")
    if not model:
        raise ValueError("evaluate needs a model: --model, --job ID, --adapter job:ID or --config C")
    if data_path:
        data = str(Path(base_dir or ".", data_path)) if base_dir and Path(base_dir, data_path).exists() else data_path
        if cfg is None:
            cfg = load_config(doc={"model": model, "data": {"train": data, "validation": data}})
        cfg = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, train=data, validation=data, test=None))
        split = split or "validation"
    if cfg is None or cfg.data.train is None:
        raise ValueError("evaluate needs data: --data FILE, a --config with a data block, or --job ID")
    cfg = dataclasses.replace(cfg, model=model)
    if retain:   # --retain FILE|general: instead of the job's/config's data.retain
        cfg = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, retain=retain))
    runs = [("base", "")] if compare_base else []
    for ref in ([adapter] if adapter else []) + list(adapters or []):
        runs.append((ref if ref.startswith("job:") else _short(ref), resolve_adapter(ref)))
    if not runs:
        runs = [("base", "")]
    return EvalPlan(cfg, runs, where, split, **plan_kw), model, backend or "auto"


def _short(path: str) -> str:
    p = Path(path)
    return "/".join(p.parts[-2:]) if p.name in ("adapter",) or p.name.startswith("checkpoint-") else p.name
