"""An export's progress: what each exporter (gguf.py, hub.py, layout copies) reports, and how.

    report = Reporter(send)           send(ExportProgress) is called for every update
    report("convert", done, total)    bytes done of total in this stage; ETA from this stage's rate
    report("upload", message="...")   a stage without a byte count

An exporter takes `progress: Optional[Reporter]` and calls it; None reports nothing. Knows
nothing of gRPC: api/convert.py turns ExportProgress into the proto message.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable, Optional


@dataclass(frozen=True)
class ExportRecord:
    """One thing an export wrote, as stored with its job (jobs/store.py's exports table)."""
    format: str
    target: str            # the path written, or the Hub repo URL
    quant: str = ""
    time: float = 0.0
    size_bytes: int = 0
    job_id: str = ""
    layout: str = ""


@dataclass(frozen=True)
class ExportProgress:
    stage: str
    bytes_done: int = 0
    bytes_total: int = 0
    eta_seconds: float = 0.0
    elapsed_seconds: float = 0.0
    message: str = ""
    done: bool = False
    path: str = ""
    record: Optional[ExportRecord] = None


class Reporter:
    """Calls `send` with an ExportProgress per update; the ETA is the stage's own rate so far."""

    def __init__(self, send: Callable[[ExportProgress], None]):
        self.send = send
        self.started = time.monotonic()
        self._stage, self._stage_started = "", self.started

    def __call__(self, stage: str, done: int = 0, total: int = 0, message: str = "") -> None:
        now = time.monotonic()
        if stage != self._stage:
            self._stage, self._stage_started = stage, now
        spent = now - self._stage_started
        eta = spent * (total - done) / done if total and done and spent > 0 else 0.0
        self.send(ExportProgress(stage, int(done), int(total), eta, now - self.started, message))

    def finish(self, path: str, record: ExportRecord) -> ExportProgress:
        return ExportProgress("done", record.size_bytes, record.size_bytes, 0.0,
                              time.monotonic() - self.started, f"wrote {path}", True, path, record)


def size_of(path) -> int:
    """Bytes of a file, or of every file under a folder."""
    from pathlib import Path
    p = Path(path)
    if p.is_file():
        return p.stat().st_size
    return sum(f.stat().st_size for f in p.rglob("*") if f.is_file()) if p.is_dir() else 0
