"""A job's config as it ran, for the requests that name a job instead of a config:

    job_config(store, job_id) -> (config, backend, base_dir)

the resolved output_dir/config.json the run wrote (model, backend, dtype, data block, ...), else
the config submitted (a job that has not started). Evaluate (`--job ID`, `--adapter job:ID`:
evaluation/plan.py is handed this function) and inspect (`--job ID`) read a job through it.
"""
from __future__ import annotations

import json
from pathlib import Path

from ..config.loader import load_config
from ..config.schema import TrainConfig
from .store import JobStore


def job_config(store: JobStore, job_id: str) -> tuple[TrainConfig, str, str]:
    """(config, backend, base_dir) of a job: the resolved config.json the run wrote, else the submitted one."""
    rec = store.get(job_id)
    resolved = Path(rec.output_dir) / "config.json" if rec.output_dir else None
    doc = json.loads(resolved.read_text()) if resolved and resolved.exists() else dict(rec.config)
    doc.pop("resume_from_checkpoint", None)
    cfg = load_config(doc=doc)
    return cfg, rec.backend or cfg.backend, rec.base_dir
