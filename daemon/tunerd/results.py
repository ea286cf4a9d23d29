"""What `Core`'s methods return, as the API layers read them (api/convert.py -> proto, api/http.py
-> JSON). The resident models are the registry's `ModelStatus` (models/registry.py); an
evaluation's stream is evaluation/runs.py's `EvalProgress`; a chat's is chat.py's `ChatDelta`.
A stream's last message is recognised by a typed field, as in the proto: `LoadProgress.loaded`,
`EvalProgress.result`, `ChatDelta.finish_reason`.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from .models.registry import ModelStatus
from .models.download import Download


@dataclass(frozen=True)
class Info:
    version: str
    api_version: str
    backends: tuple            # host.backend_status(): {"name", "available", "version", "reason"}
    devices: tuple             # host.devices(): {"name", "backend", "memory_total_bytes", ...}
    default_backend: str
    home: str
    pid: int
    uptime_seconds: float
    memory_total_bytes: int
    memory_available_bytes: int


@dataclass(frozen=True)
class LoadProgress:
    """One message of LoadModelStream: a download's progress, or (the last one) the loaded model."""
    download: Optional[Download] = None
    loaded: Optional[ModelStatus] = None


@dataclass(frozen=True)
class ModelId:
    """A name a request can use as one model id (the OpenAI-compatible /v1/models)."""
    id: str
    created: int
    kind: str                  # "base", "adapter" or "job" (a running job: its latest checkpoint)
    base: str = ""


@dataclass(frozen=True)
class AdapterInfo:
    """A finished job's adapter (ListAdapters)."""
    path: str
    job_id: str
    base_model: str
    peft_adapter: str
    lora_r: int
    created_at: float
    layouts: tuple             # "peft", "mlx"
    exports: tuple = ()        # export.progress.ExportRecord: what was exported from it, oldest first
